"""Random T5 models with a locally trained tokenizer, for tests and benchmarks.

No model hub is reachable where this project is built and tested, so it makes its own models:
``tiny`` (loads in milliseconds; for tests) and ``flan-t5-base`` (FLAN-T5-base's exact
architecture and parameter count; for benchmarks). Weights are random: generated text is
meaningless, and any output shown from these models says so.

    python -m tools.devmodel OUT_DIR --shape tiny|flan-t5-base [--adapter]
    python -m serving.devmodel ...       (the same command at its older, documented path)

``--adapter`` also writes OUT_DIR/adapter: a LoRA adapter (q, v; non-zero random A and B so it
really changes outputs) whose adapter_config.json names OUT_DIR as its base.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path

import torch

__all__ = ["FLAN_T5_BASE_PARAMETERS", "SHAPES", "build_model", "count_parameters", "file_hashes", "main",
           "make_dev_model", "train_tokenizer", "write_adapter"]

# FLAN-T5-base has an untied lm_head. transformers 5 ties it whatever the config says, so the
# count below is asserted after untying: the tied model has 222,903,552 parameters.
FLAN_T5_BASE_PARAMETERS = 247_577_856
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")   # ids 0, 1, 2 as in T5
METASPACE = "\u2581"

SHAPES: dict[str, dict] = {
    "tiny": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
                 vocab_size=None),  # None: the tokenizer's own size
    "flan-t5-base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12,
                         num_heads=12, vocab_size=32128),
}

# Text the tokenizer learns its vocabulary from: dialogue-shaped, written for this project.
_CORPUS = """\
#Person1#: Hi, I'd like to book a table for two tonight at seven.
#Person2#: Certainly. Would you prefer inside or on the terrace?
#Person1#: The terrace, please, if it isn't too cold.
#Person2#: We have heaters outside. May I have your name and phone number?
#Person1#: Did you finish the quarterly report? The manager wants it by Friday.
#Person2#: Almost. I still need the sales figures from the northern region.
#Person1#: I'll email Maria and ask her to send them this afternoon.
#Person1#: My laptop keeps restarting whenever I open the video editor.
#Person2#: Have you tried updating the graphics driver? That fixed it for me.
#Person1#: Excuse me, how do I get to the railway station from here?
#Person2#: Go straight for two blocks, turn left at the bank, and it's on your right.
#Person1#: We should plan the trip to the mountains for next weekend.
#Person2#: Good idea. I'll check the weather forecast and reserve a cabin.
#Person1#: The doctor said I need to rest for a week and drink more water.
#Person2#: Then stay home. I'll bring you soup and the homework from class.
#Person1#: Why was the delivery late again? The customer called twice this morning.
#Person2#: The truck broke down near the bridge. It should arrive by noon.
#Person1#: Could you help me move the sofa into the living room on Saturday?
#Person2#: Sure, but I can only come after lunch because of my football match.
Person1 books a table for two on the terrace tonight.
Person2 needs the northern sales figures to finish the quarterly report by Friday.
Person2 suggests updating the graphics driver to stop the laptop restarting.
Person2 explains the way to the railway station.
They plan a weekend trip to the mountains and a cabin.
The delivery was late because the truck broke down.
0 1 2 3 4 5 6 7 8 9 10 20 30 45 100 2024 a.m. p.m. $ % & @ ? ! . , ; : ' " ( ) - / #
"""


def _seed_vocabulary(vocab_size: int, max_piece: int = 8) -> list[tuple[str, float]]:
    """Unigram pieces and log-probabilities computed from _CORPUS in plain Python.

    Not tokenizers' UnigramTrainer: its EM sums floats in thread- and hash-seed-dependent order,
    so the scores (and, through ties, the token ids) differed on every run, and every test
    session tested a different model. Here every piece is a substring (up to ``max_piece``
    characters) of a Metaspace-split corpus word seen at least twice, scored by its frequency,
    ordered by (score, piece): the same bytes on every run and machine. Every printable ASCII
    character (and the word-start marker) is a piece of its own, so English never hits <unk>.
    """
    words: Counter[str] = Counter(METASPACE + word for line in _CORPUS.splitlines() for word in line.split())
    counts: Counter[str] = Counter()
    for word, n in words.items():
        for start in range(len(word)):
            for end in range(start + 1, min(len(word), start + max_piece) + 1):
                counts[word[start:end]] += n
    total = sum(counts.values())
    singles = [METASPACE, *(chr(c) for c in range(33, 127))]
    pieces = sorted(((math.log(n / total), piece) for piece, n in counts.items()
                     if n >= 2 and len(piece) > 1), key=lambda sp: (-sp[0], sp[1]))
    pieces = pieces[: max(0, vocab_size - len(SPECIAL_TOKENS) - len(singles))]
    # Characters the corpus never shows still need a (low) score to be usable.
    rare = min((score for score, _ in pieces), default=0.0) - 1.0
    chars = [(math.log(counts[c] / total) if counts[c] else rare, c) for c in singles]
    return [(token, 0.0) for token in SPECIAL_TOKENS] + [(piece, score) for score, piece in pieces + chars]


def train_tokenizer(vocab_size: int = 2000):
    """A T5-style tokenizer (Unigram, Metaspace, </s> appended), byte-identical on every run."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram(_seed_vocabulary(vocab_size), unk_id=SPECIAL_TOKENS.index("<unk>")))
    # Like T5's SentencePiece normalizer: newlines and runs of whitespace become one space.
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", SPECIAL_TOKENS.index("</s>"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=512,
    )


def build_model(shape: str, vocab_size: int, seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    spec = dict(SHAPES[shape])
    spec["vocab_size"] = spec["vocab_size"] or vocab_size
    spec.update(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                dropout_rate=0.1, relative_attention_num_buckets=32, relative_attention_max_distance=128)
    config = T5Config(**spec)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    # Untie explicitly (transformers 5 ties regardless) with its own random init, as FLAN-T5 has.
    model.config.tie_word_embeddings = False
    lm_head = torch.nn.Parameter(torch.empty_like(model.shared.weight))
    torch.nn.init.normal_(lm_head, std=model.config.d_model ** -0.5)
    model.lm_head.weight = lm_head
    if shape == "tiny":
        # Tiny random models emit EOS almost at once; a wider logit spread gives tests
        # non-trivial, input-dependent outputs.
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)
    model.eval()
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def write_adapter(model, base_dir: Path, out_dir: Path, seed: int = 1, std: float = 0.3,
                  r: int = 8, alpha: int = 16, target_modules: tuple[str, ...] = ("q", "v")) -> Path:
    """A LoRA adapter with non-zero random A and B (peft zero-inits B, which changes nothing)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules),
                        lora_dropout=0.0, task_type="SEQ_2_SEQ_LM")
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    peft_model.save_pretrained(str(out_dir))
    cfg_path = out_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    # Relative to the adapter (code/inference.py resolves it there): the same bytes wherever
    # the model is written, and the pair still loads after being moved together.
    cfg["base_model_name_or_path"] = os.path.relpath(base_dir.resolve(), out_dir.resolve())
    # peft writes target_modules from a set, in hash-seed order: sort them for stable bytes.
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2))
    peft_model.unload()  # leave the base model as it was
    return out_dir


def make_dev_model(out_dir: str | Path, shape: str = "tiny", adapter: bool = False,
                   seed: int = 0, adapter_seed: int = 1) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    model = build_model(shape, vocab_size=len(tokenizer), seed=seed)
    if shape == "flan-t5-base":
        n = count_parameters(model)
        assert n == FLAN_T5_BASE_PARAMETERS, f"expected {FLAN_T5_BASE_PARAMETERS:,} parameters, built {n:,}"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "DEV_MODEL.txt").write_text(
        f"Randomly initialised T5 ({shape}), seed {seed}, tokenizer trained locally by "
        "serving.devmodel. Outputs are meaningless text: it exists to test and benchmark serving.\n")
    if adapter:
        adapter_dir = out / "adapter"
        write_adapter(model, out, adapter_dir, seed=adapter_seed)
        tokenizer.save_pretrained(str(adapter_dir))
    return out


def file_hashes(directory: str | Path) -> dict[str, str]:
    """sha256 of every file under a dev model directory, by relative path: what "byte-identical
    on every run" is checked against (tests/data/devmodel-tiny.sha256.json)."""
    root = Path(directory)
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.devmodel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--adapter", action="store_true", help="also write OUT_DIR/adapter (LoRA on q,v)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adapter-seed", type=int, default=1)
    parser.add_argument("--hashes", action="store_true",
                        help="print the sha256 of every file written, as JSON (same on every run and machine)")
    args = parser.parse_args(argv)
    out = make_dev_model(args.out_dir, args.shape, args.adapter, args.seed, args.adapter_seed)
    if args.hashes:
        print(json.dumps(file_hashes(out), indent=2))
        return 0
    print(f"wrote {args.shape} model to {out}" + (f" and adapter to {out / 'adapter'}" if args.adapter else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
