"""The mixed-adapter LoRA kernel alone: peft's per-adapter loop vs this project's stacked bmm.

    flock /tmp/bench.lock python -m benchmarks.bench_adapters_kernel [--reps 3] [--out benchmarks/results]

In-process, no server: one generate of 16 rows (8 adapters, 2 rows each, r=8 on q,v), ~64 input
tokens, exactly 32 new tokens, on FLAN-T5-base's shape with random weights (reuses the models
benchmarks.bench_adapters builds). Configurations alternate within each repetition; medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_adapters import build_models, inputs  # noqa: E402
from serving.engines.lora_kernel import stacked_mixed_forward  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="/tmp/t5serving-bench-adapters")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    command = "flock /tmp/bench.lock python -m benchmarks.bench_adapters_kernel " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict
    from peft.tuners.lora.layer import Linear as LoraLinear
    from safetensors.torch import load_file
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    base_dir, adapters = build_models(Path(args.work_dir) / "flan-t5-base", "flan-t5-base", 8)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = PeftModel(AutoModelForSeq2SeqLM.from_pretrained(str(base_dir)).eval(),
                      LoraConfig(r=1, target_modules=["q"], lora_alpha=1), adapter_name="idle")
    for i in range(1, 9):
        model.add_adapter(f"x{i}", LoraConfig.from_pretrained(str(adapters / f"a{i}")))
        set_peft_model_state_dict(model, load_file(str(adapters / f"a{i}" / "adapter_model.safetensors")),
                                  adapter_name=f"x{i}")
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]

    def use_stacked(on: bool) -> None:
        for m in layers:
            if on:
                m.__dict__["_mixed_batch_forward"] = stacked_mixed_forward.__get__(m)
            else:
                m.__dict__.pop("_mixed_batch_forward", None)

    encoded = tokenizer(inputs(base_dir, 64, 16), return_tensors="pt", padding=True)
    mixed = [f"x{i % 8 + 1}" for i in range(16)]

    def generate(names: list[str]) -> float:
        with torch.inference_mode():
            started = time.perf_counter()
            model.generate(**encoded, max_new_tokens=32, min_new_tokens=32, adapter_names=names)
            return time.perf_counter() - started

    use_stacked(True)
    generate(mixed)  # warm-up
    runs: dict[str, list[float]] = {"base_rows_only": [], "peft_loop_8_adapters": [], "stacked_8_adapters": []}
    load_before = os.getloadavg()[0]
    for _ in range(args.reps):
        use_stacked(False)
        runs["peft_loop_8_adapters"].append(generate(mixed))
        use_stacked(True)
        runs["stacked_8_adapters"].append(generate(mixed))
        runs["base_rows_only"].append(generate(["__base__"] * 16))
    median = {k: statistics.median(v) for k, v in runs.items()}
    overhead = {k: round(v / median["base_rows_only"] - 1, 4) for k, v in median.items()}
    report = {"command": command, "seconds_per_generate": {k: round(v, 3) for k, v in median.items()},
              "overhead_vs_base": overhead, "runs": runs, "loadavg_1m": [round(load_before, 2),
                                                                         round(os.getloadavg()[0], 2)],
              "workload": "16 rows, 8 adapters x 2 rows, r=8 q+v, ~64 input tokens, 32 new tokens, fp32 CPU"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapters-kernel-flan-t5-base.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Mixed-adapter LoRA kernel (FLAN-T5-base shape, random weights)", "", f"Command: `{command}`", "",
             f"Workload: {report['workload']}; {args.reps} alternating repetitions, medians; "
             f"load average {report['loadavg_1m']}.", "",
             "| path | s per generate | overhead vs base rows only |", "|---|---|---|"]
    for k in runs:
        lines.append(f"| {k} | {median[k]:.3f} | {overhead[k] * 100:+.1f}% |")
    (out / "adapters-kernel-flan-t5-base.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
