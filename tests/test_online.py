"""Online RL baseline: update gradient by hand on a bandit, rewards, filter, masks, resume, outputs."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_models import make_tiny_model

from drift_lite import online
from drift_lite.chat import SYSTEM_PROMPT
from drift_lite.loss import IGNORE
from drift_lite.metrics import compute_metrics
from drift_lite.online_loss import (
    episode_example,
    keep_top_spread,
    micro_batch_loss,
    rloo_advantages,
    ufo_reward,
)
from drift_lite.recipe import load_recipe
from drift_lite.records import iter_rows
from drift_lite.toy_tokenizer import build_toy_tokenizer

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "toy" / "online-rl.yaml"


class Bandit(torch.nn.Module):
    """A single-turn two-answer bandit as a 'language model': the logits are θ at every position; the
    reference (adapter disabled) has logits θ_ref."""

    def __init__(self, theta: list[float], theta_ref: list[float]) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(theta))
        self.theta_ref = torch.tensor(theta_ref)
        self.reference = False

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        logits = self.theta_ref if self.reference else self.theta
        return SimpleNamespace(logits=logits.expand(*input_ids.shape, logits.numel()))

    @contextlib.contextmanager
    def disable_adapter(self):
        self.reference = True
        try:
            yield
        finally:
            self.reference = False


def bandit_batch(answers: list[int], advantages: list[float]) -> dict:
    """Sequences [prompt token, answer]; only the answer is labeled."""
    ids = torch.tensor([[0, a] for a in answers])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.tensor([[IGNORE, a] for a in answers]),
        "weight": torch.tensor(advantages),
    }


def test_the_update_gradient_is_the_group_baseline_policy_gradient_plus_the_kl_gradient():
    theta, theta_ref, kl_coef = [0.3, -0.2], [-0.4, 0.5], 0.7
    answers, rewards = [1, 0, 1, 1], [1.0, 0.0, 1.0, 0.5]
    advantages = rloo_advantages(rewards)
    model = Bandit(theta, theta_ref)
    # two micro-batches of one step, as the loop runs them (the denominator is the step's token count: 4)
    for part in ([0, 1], [2, 3]):
        loss, _ = micro_batch_loss(
            model, bandit_batch([answers[i] for i in part], [advantages[i] for i in part]), 4, kl_coef
        )
        loss.backward()

    # By hand: π = softmax(θ), ρ = softmax(θ_ref); ∇_θ log π(a) = e_a − π;
    # ∇_θ KL(π‖ρ) = π ⊙ (log π − log ρ − KL); A_i = R_i − mean_{j≠i} R_j; gradient of the loss
    #   g = (1/4) Σ_i [ −A_i (e_{a_i} − π) + kl_coef · ∇KL ]
    pi = torch.softmax(torch.tensor(theta), 0)
    rho = torch.softmax(torch.tensor(theta_ref), 0)
    kl = float((pi * (pi.log() - rho.log())).sum())
    grad_kl = pi * (pi.log() - rho.log() - kl)
    hand_adv = [1.0 - 1.5 / 3, 0.0 - 2.5 / 3, 1.0 - 1.5 / 3, 0.5 - 2.0 / 3]
    assert advantages == pytest.approx(hand_adv)
    expected = torch.zeros(2)
    for a, adv in zip(answers, hand_adv):
        expected += -adv * (torch.eye(2)[a] - pi) + kl_coef * grad_kl
    expected /= 4
    assert torch.allclose(model.theta.grad, expected, atol=1e-6)
    assert expected.abs().min() > 1e-3  # both terms move θ: the check is not a comparison of zeros


def test_kl_term_is_zero_and_flat_when_policy_equals_reference():
    model = Bandit([0.1, 0.9], [0.1, 0.9])
    loss, parts = micro_batch_loss(model, bandit_batch([0, 1], [0.0, 0.0]), 2, 1.0)
    loss.backward()
    assert parts["kl"] == pytest.approx(0.0, abs=1e-7)
    assert torch.allclose(model.theta.grad, torch.zeros(2), atol=1e-7)


def test_ufo_reward_halves_per_turn_and_pays_the_repetition_penalty():
    assert ufo_reward({"t_star": 1, "answer_norms": ["5"]}, 0.5) == 1.0
    assert ufo_reward({"t_star": 3, "answer_norms": ["1", "2", "5"]}, 0.5) == 0.25
    # never solved, 5 answers of which 2 distinct: 0 − 0.5 · (1 − 2/5)
    assert ufo_reward({"t_star": None, "answer_norms": ["1", "1", "1", "2", "2"]}, 0.5) == pytest.approx(-0.3)
    assert ufo_reward({"t_star": None, "answer_norms": []}, 0.5) == 0.0


def test_group_filter_keeps_the_largest_spreads_in_group_order():
    groups = [[0, 0], [0, 1], [0.5, 0.25], [1, -1], [1, 1]]
    assert keep_top_spread(groups, 0.4) == [1, 3]
    assert keep_top_spread(groups, 0.2) == [3]  # ceil(0.2 · 5) = 1
    assert keep_top_spread(groups, 0.01) == [3]  # at least one group
    assert keep_top_spread(groups, 1.0) == [0, 1, 2, 3, 4]
    assert rloo_advantages([1.0]) == [0.0]


def test_episode_example_labels_every_policy_turn_and_masks_feedback_and_shots():
    tokenizer = build_toy_tokenizer()
    shot = "<think>1+1=2</think><answer>2</answer>"
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "1+1"},
        {"role": "assistant", "content": shot},
        {"role": "user", "content": "2+3"},
        {"role": "assistant", "content": "<think>2+3=6</think><answer>6</answer>"},
        {"role": "user", "content": "Incorrect. Please think again."},
        {"role": "assistant", "content": "<think>2+3=5</think><answer>5</answer>"},
    ]
    ex = episode_example(tokenizer, messages, 0.5, "toy", 1, shots=1)
    labeled = [t for t in ex.labels if t != IGNORE]
    text = tokenizer.decode(labeled)
    assert text.count("<answer>") == 2 and "6</answer>" in text and "5</answer>" in text
    assert "2</answer>" not in text.replace("2+3", "")  # the worked example stays in the prompt
    assert "Incorrect" not in text and "2+3<" not in text
    assert ex.weight == 0.5 and ex.labels[-1] == tokenizer.eos_token_id


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def small_recipe(model: str, *extra: str):
    return load_recipe(
        RECIPE,
        [
            f"model.name={model}",
            "train.finetune=lora",
            "task.size=16",
            "online.iterations=3",
            "online.prompts=2",
            "online.samples=3",
            "online.micro_batch=4",
            "online.eval_every=1",
            "online.eval_size=3",
            "online.lr=0.05",
            "online.kl_coef=0.1",
            "rollout.max_new_tokens=8",
            "eval.max_new_tokens=8",
            "env.max_turns=2",
            *extra,
        ],
    )


def text_reward(row: dict, recipe) -> float:
    """A reward a random tiny model earns: the first answer's length (so advantages are not all zero)."""
    return len(row["messages"][-1]["content"]) % 5 / 5


def adapter_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "adapter" / "adapter_model.safetensors")


def test_an_interrupted_run_resumes_to_the_same_adapter(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(online, "episode_reward", text_reward)
    recipe = small_recipe(tiny)
    whole = online.train_online(recipe, tmp_path / "whole", show_progress=False)
    assert whole["steps"] == 3 and whole["resumed_from"] is None

    real_eval = online.evaluate_point
    calls = {"n": 0}

    def crash_at_iteration_2(model, tokenizer, world, recipe, path):
        calls["n"] += 1
        if calls["n"] == 3:  # evaluations: iteration 0, 1, then 2: its episodes are written, its state is not
            raise RuntimeError("killed")
        return real_eval(model, tokenizer, world, recipe, path)

    monkeypatch.setattr(online, "evaluate_point", crash_at_iteration_2)
    with pytest.raises(RuntimeError, match="killed"):
        online.train_online(recipe, tmp_path / "cut", show_progress=False)
    assert not online.is_complete(tmp_path / "cut", recipe)
    monkeypatch.setattr(online, "evaluate_point", real_eval)
    resumed = online.train_online(recipe, tmp_path / "cut", show_progress=False)
    assert resumed["resumed_from"] == 1 and resumed["steps"] == 3
    assert online.is_complete(tmp_path / "cut", recipe)

    a, b = adapter_tensors(tmp_path / "whole"), adapter_tensors(tmp_path / "cut")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    init = online.train_online(
        small_recipe(tiny, "online.iterations=1"), tmp_path / "one", show_progress=False
    )
    assert init["steps"] == 1
    moved = adapter_tensors(tmp_path / "one")
    assert any(not torch.allclose(moved[k], a[k]) for k in a)  # the later iterations changed the adapter
    episodes = "online/episodes.jsonl"
    assert (tmp_path / "whole" / episodes).read_bytes() == (tmp_path / "cut" / episodes).read_bytes()

    def curve(run: str) -> list[dict]:  # wall time aside, the same points
        rows = [
            json.loads(line) for line in (tmp_path / run / "online" / "curve.jsonl").read_text().splitlines()
        ]
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]

    assert curve("whole") == curve("cut") and len(curve("cut")) == 4
    for key in ("generated_tokens", "trained_tokens"):
        assert resumed[key] == whole[key]


def test_train_online_writes_the_layout_and_curve_metrics_recompute(tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from drift_lite.training import is_complete as adapter_complete

    recipe = small_recipe(tiny, "online.eval_every=2")
    out = tmp_path / "run"
    stats = online.train_online(recipe, out, show_progress=False)
    assert set(stats) >= {"generated_tokens", "trained_tokens", "steps", "iterations", "resumed_from"}
    assert stats["iterations"] == 3 and stats["generated_tokens"] > 0
    assert adapter_complete(out / "adapter") and online.is_complete(out, recipe)
    assert not online.is_complete(out, small_recipe(tiny, "online.lr=0.01"))
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), out / "adapter")

    curve = [json.loads(line) for line in (out / "online" / "curve.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in curve] == [0, 2, 3]  # the reference, every 2nd iteration, the last
    assert curve[0]["generated_tokens"] == 0 and curve[0]["mean_reward"] is None
    assert curve[-1]["generated_tokens"] == stats["generated_tokens"]
    assert curve[-1]["trained_tokens"] == stats["trained_tokens"]
    episodes = list(iter_rows(out / "online" / "episodes.jsonl"))
    assert len(episodes) == 3 * 2 * 3
    for row in curve:
        rows = list(iter_rows(out / "online" / "eval" / f"it-{row['iteration']}.jsonl"))
        assert len(rows) == 3
        metrics = compute_metrics(rows, recipe.env.max_turns)
        assert all(row[f"multi@{k}"] == metrics[f"multi@{k}"] for k in (1, 2))
        if row["iteration"]:
            mine = [e for e in episodes if e["iteration"] == row["iteration"]]
            assert all(e["reward"] == online.episode_reward(e, recipe) for e in mine)
            assert row["mean_reward"] == sum(e["reward"] for e in mine) / len(mine)
    again = online.train_online(recipe, out, show_progress=False)
    assert again.get("skipped") is True


def test_generate_then_update_on_nf4_gives_the_gradients_of_a_never_evaluated_copy(tiny):
    """The loop alternates sampling and updates: on a CPU with AVX512-BF16, bitsandbytes' repacking after a
    generate would corrupt later LoRA gradients unless models.py turns it off."""
    from drift_lite.examples import WeightedCollator
    from drift_lite.jobs import make_jobs
    from drift_lite.models import load_model, load_tokenizer, prepare_for_training
    from drift_lite.sampling import Sampling

    recipe = small_recipe(tiny, "train.finetune=qlora", "train.lora_dropout=0.0")
    tokenizer = load_tokenizer(tiny, recipe.model)
    world = online._World(recipe)

    def fresh():
        torch.manual_seed(0)
        model = load_model(tiny, recipe.model, train=recipe.train)
        model = prepare_for_training(model, recipe.train, recipe.model)
        for p in model.parameters():  # move the adapter off its zero init, so the KL term is not flat
            if p.requires_grad:
                p.data.add_(0.05)
        return model

    played = fresh()
    jobs = make_jobs(world.train[:2], 2, 0, world.checker, world.env, world.shots, world.feedback)
    finished, generated = online._play(played, tokenizer, jobs, Sampling(max_new_tokens=8), recipe, 4)
    assert generated > 0
    examples = [
        episode_example(tokenizer, j.episode.to_row()["messages"], a, "tiny", i)
        for i, (j, a) in enumerate(zip(finished, [1.0, -0.5, 0.25, -0.75]))
    ]
    batch = WeightedCollator(tokenizer.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels, "weight": e.weight} for e in examples]
    )
    never = fresh()
    grads = []
    for model in (played, never):
        model.train()
        loss, _ = micro_batch_loss(model, batch, 10, 0.5)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name
    assert any(g.abs().sum() > 0 for g in grads[0].values())


def test_kill_9_during_an_online_run_then_a_rerun_resumes_and_its_metrics_recompute(tiny, tmp_path):
    """A real process killed with SIGKILL after its first saved iteration; the rerun resumes from there, ends
    in the adapter of an uninterrupted run, and its curve recomputes from its evaluation trajectories."""
    import os
    import signal
    import subprocess
    import sys
    import time

    extra = ["online.iterations=8", "online.eval_every=1"]
    out = tmp_path / "killed"
    script = (
        "import sys, torch\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "torch.set_num_threads(1)\n"
        "from test_online import small_recipe\n"
        "from drift_lite import online\n"
        "online.train_online(small_recipe(sys.argv[2], *sys.argv[4:]), sys.argv[3], show_progress=False)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(Path(__file__).parent), tiny, str(out), *extra],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 240
        curve_file = out / "online" / "curve.jsonl"

        def points() -> int:
            return len(curve_file.read_text().splitlines()) if curve_file.is_file() else 0

        while points() < 3 and proc.poll() is None and time.monotonic() < deadline:  # iterations 0, 1, 2
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    recipe = small_recipe(tiny, *extra)
    assert not online.is_complete(out, recipe)
    resumed = online.train_online(recipe, out, show_progress=False)
    assert resumed["resumed_from"] is not None and resumed["resumed_from"] >= 1 and resumed["steps"] == 8
    online.train_online(recipe, tmp_path / "whole", show_progress=False)
    a, b = adapter_tensors(tmp_path / "whole"), adapter_tensors(out)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    curve = [json.loads(line) for line in (out / "online" / "curve.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in curve] == list(range(9))
    for row in curve:
        rows = list(iter_rows(out / "online" / "eval" / f"it-{row['iteration']}.jsonl"))
        metrics = compute_metrics(rows, recipe.env.max_turns)
        assert all(row[f"multi@{k}"] == metrics[f"multi@{k}"] for k in (1, 2))
