"""The weighted loss: equal to a hand computation for both normalizations; zero weights give zero gradient."""

from __future__ import annotations

import pytest
import torch
from test_examples import make_rows
from test_models import make_tiny_model

from drift_lite.examples import WeightedCollator, build_examples
from drift_lite.loss import IGNORE, batch_loss, step_denominator
from drift_lite.recipe import TrainConfig
from drift_lite.toy_tokenizer import build_toy_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def _float_model(tiny: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    model.eval()  # no dropout in the Qwen2 config anyway; eval keeps the check exact
    return model


def _batch(rows: list[dict]) -> tuple[dict, list]:
    tokenizer = build_toy_tokenizer()
    examples, _ = build_examples(rows, tokenizer, TrainConfig(), "toy")
    features = [{"input_ids": e.input_ids, "labels": e.labels, "weight": e.weight} for e in examples]
    return WeightedCollator(tokenizer.pad_token_id)(features), examples


@pytest.mark.parametrize("normalize", ["mean", "weight_sum"])
def test_loss_equals_a_hand_computation(tiny, normalize):
    model = _float_model(tiny)
    batch, examples = _batch(make_rows(3, weights=[0.5, 2.0, 0.0]))
    assert len({len(e.input_ids) for e in examples}) > 1  # right padding is exercised
    per_row = []
    with torch.no_grad():
        for e in examples:  # each row alone, unpadded, the textbook way
            logp = torch.log_softmax(model(input_ids=torch.tensor([e.input_ids])).logits[0].double(), -1)
            terms = [
                -logp[t - 1, e.input_ids[t]] for t in range(1, len(e.input_ids)) if e.labels[t] != IGNORE
            ]
            per_row.append(sum(terms) / len(terms))
        weights = [e.weight for e in examples]
        weighted = sum(w * n for w, n in zip(weights, per_row))
        want = weighted / (len(weights) if normalize == "mean" else sum(weights))
        got = batch_loss(model, batch, normalize)
    assert abs(float(got) - float(want)) < 1e-5


def test_zero_weight_rows_contribute_zero_gradient(tiny):
    def grads(rows):
        model = _float_model(tiny)
        batch, _ = _batch(rows)
        batch_loss(model, batch).backward()
        return [p.grad.clone() for p in model.parameters()]

    rows = make_rows(2, weights=[1.0, 0.0])
    other = make_rows(3, weights=[1.0, 0.0, 0.0])
    other[1]["messages"] = other[2]["messages"]  # the zero-weight row says something else entirely
    a, b = grads(rows), grads(other[:2])
    assert any(g.abs().sum() > 0 for g in a)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_step_denominator_is_global_and_skips_padding_rows():
    local = [torch.tensor([0.5, 1.5]), torch.tensor([2.0, 0.0])]  # the 0.0 is a padding row
    assert float(step_denominator(local, "mean")) == 3.0
    assert float(step_denominator(local, "weight_sum")) == pytest.approx(4.0)
    other = torch.tensor([1.0, 6.0], dtype=torch.float64)  # another process: 1 row of weight 6

    def reduce(totals: torch.Tensor) -> torch.Tensor:  # a sum over this process and the other one
        return totals + other

    assert float(step_denominator(local, "mean", reduce=reduce)) == 4.0
    assert float(step_denominator(local, "weight_sum", reduce=reduce)) == pytest.approx(10.0)
    # a process whose rows are all padding still divides by the global total, never by zero
    assert float(step_denominator([torch.zeros(2)], "weight_sum", reduce=reduce)) == pytest.approx(6.0)
    assert float(step_denominator([torch.zeros(2)], "mean")) == 1.0
