"""The greedy reference (tests/support/equivalence.py) that equivalence tests compare against: it is what the
serving path returns for a row alone, the computations it arbitrates between really differ by far
less than a near-tie, and it rejects a wrong answer."""

from __future__ import annotations

import pytest

from tests.support.equivalence import (
    NEAR_TIE,
    NOISE_LIMIT,
    GreedyOracle,
    check,
    largest_difference,
    teacher_forced_logits,
)

TEXTS = [
    "#Person1#: Hi, I'd like to book a table for two tonight at seven.\n#Person2#: Inside or on the terrace?",
    "#Person1#: Did you finish the quarterly report?",
    "#Person1#: My laptop keeps restarting.\n#Person2#: Update the graphics driver.\n"
    "#Person1#: I tried that already, twice, and it still restarts whenever I open the editor.",
    "#Person1#: How do I get to the railway station?\n#Person2#: Straight on, then left at the bank.",
    "#Person2#: The delivery was late because the truck broke down near the bridge.",
]
PARAMETER_SETS = [
    {"max_new_tokens": 24},
    {"max_new_tokens": 16, "min_new_tokens": 16},
    {"max_new_tokens": 20, "repetition_penalty": 1.3},
    {"max_new_tokens": 20, "no_repeat_ngram_size": 2},
]


@pytest.fixture(scope="module")
def oracle(tiny_adapter_dir) -> GreedyOracle:
    return GreedyOracle(str(tiny_adapter_dir))


@pytest.mark.parametrize("parameters", PARAMETER_SETS)
def test_reference_is_what_predict_fn_returns_for_a_row_alone(oracle, parameters):
    inference = oracle.inference
    for text in TEXTS:
        item = {"inputs": text, "parameters": inference.validate_parameters(parameters)}
        alone = inference.predict_fn([item], oracle.model)[0]["summary"]
        path = oracle.path(text, parameters)
        assert path.text == alone
        assert len(path.margins) == len(path.tokens) <= parameters["max_new_tokens"]


def test_padded_batch_and_alone_differ_by_far_less_than_a_near_tie(oracle):
    paths = [oracle.path(text, PARAMETER_SETS[0]) for text in TEXTS]
    network, tokenizer = oracle.model["model"], oracle.tokenizer
    batched = teacher_forced_logits(network, tokenizer, TEXTS, paths)
    alone = [teacher_forced_logits(network, tokenizer, [t], [p])[0] for t, p in zip(TEXTS, paths)]
    difference = largest_difference(batched, alone)
    assert 0 <= difference <= NOISE_LIMIT, f"alone vs batched logits differ by {difference:.2e} (limit {NOISE_LIMIT})"


def test_check_accepts_divergence_only_after_a_near_tie(oracle):
    path = oracle.path(TEXTS[0], PARAMETER_SETS[0])
    assert check(path.text, path).full
    with pytest.raises(AssertionError, match="reference"):
        check(path.text + " extra", path)
    # The same path with a near-tie planted at step 3: agreement up to it is all that is asked.
    tied = type(path)(tokens=path.tokens, margins=(1.0, 1.0, 1.0, NEAR_TIE / 2, *path.margins[4:]),
                      text=path.text, decode=path.decode)
    prefix = path.decode(path.tokens[:3])
    assert check(prefix + " anything", tied).compared == 3
    with pytest.raises(AssertionError, match="near-tie"):
        check("x" + prefix, tied)


def test_check_rejects_another_rows_answer(oracle):
    """The comparison stays strict: the answer for a different input never passes."""
    paths = [oracle.path(text, PARAMETER_SETS[0]) for text in TEXTS]
    assert len({p.text for p in paths}) == len(paths), "the model must depend on its input"
    for i, path in enumerate(paths):
        for j, other in enumerate(paths):
            if i != j:
                with pytest.raises(AssertionError):
                    check(other.text, path)
