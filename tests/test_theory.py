"""The theory check: exact π* and SBoN_N, the kit's weights and loss on bandits, the tiny run's files."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from drift_lite import theory
from drift_lite.errors import UserError
from drift_lite.theory import (
    BANDITS,
    BETAS,
    TINY_NS,
    BanditPolicy,
    Schedule,
    count_vectors,
    kit_loss,
    kl,
    pi_star,
    sbon_exact,
    sbon_via_kit_weights,
    train_fixed,
    train_fresh,
    tv,
    weighted_empirical,
)
from drift_lite.theory_report import run_theory
from drift_lite.weights import group_weights

KEYS = {
    "prompt",
    "n",
    "beta",
    "regime",
    "reward",
    "pi_ref",
    "pi_star",
    "sbon",
    "pi_trained",
    "kl_trained_sbon",
    "kl_trained_star",
    "kl_sbon_star",
    "tv_trained_star",
}


# ---------------------------------------------------------------------------------------------------------
# Exact distributions


def test_count_vectors_are_all_compositions():
    counts = count_vectors(5, 3)
    assert len(counts) == math.comb(5 + 2, 2)
    assert len({tuple(c) for c in counts.tolist()}) == len(counts)
    assert (counts.sum(axis=1) == 5).all() and (counts >= 0).all()
    assert count_vectors(4, 1).tolist() == [[4]]


def test_sbon_exact_against_monte_carlo_with_the_kits_weights():
    pi_ref, reward, beta, n = [0.6, 0.3, 0.1], [0.0, 0.5, 1.0], 0.4, 3
    exact = sbon_exact(pi_ref, reward, beta, n)
    rng = random.Random(0)
    draws = 40000
    sums, squares = [0.0] * 3, [0.0] * 3
    for _ in range(draws):
        group = rng.choices(range(3), weights=pi_ref, k=n)
        mass = [0.0] * 3
        for a, w in zip(group, group_weights([reward[a] for a in group], beta)):
            mass[a] += w / n
        for a in range(3):
            sums[a] += mass[a]
            squares[a] += mass[a] ** 2
    for a in range(3):
        mean = sums[a] / draws
        stderr = math.sqrt((squares[a] / draws - mean**2) / draws)
        assert abs(mean - exact[a]) < 4 * stderr + 1e-9, (a, mean, exact[a], stderr)
    # the same expectation enumerated exactly with the kit's weights
    assert sbon_via_kit_weights(pi_ref, reward, beta, n) == pytest.approx(exact, abs=1e-10)


def test_sbon_exact_by_hand_and_limits():
    p0, p1, e = 0.3, 0.7, math.exp(1 / 0.5)
    # N=2, K=2, R=(1, 0): both draws the best, or one of each and the soft pick takes the best
    got = sbon_exact([p0, p1], [1.0, 0.0], 0.5, 2)
    assert got[0] == pytest.approx(p0 * p0 + 2 * p0 * p1 * e / (e + 1), abs=1e-12)
    assert sum(got) == pytest.approx(1.0, abs=1e-12)
    ref = [0.2, 0.5, 0.3]
    assert sbon_exact(ref, [1.0, 0.0, 2.0], 0.3, 1) == pytest.approx(ref, abs=1e-12)  # N=1: π_ref
    assert sbon_exact(ref, [0.7] * 3, 0.1, 6) == pytest.approx(ref, abs=1e-12)  # equal rewards: π_ref
    # tiny β: hard best-of-N, P(best) = 1 - (1 - p_best)^N, with no 0/0 from underflowing exp(R/β)
    hard = sbon_exact(ref, [1.0, 0.0, 2.0], 1e-4, 3)
    assert hard[2] == pytest.approx(1 - 0.7**3, abs=1e-12) and hard[1] == pytest.approx(0.5**3, abs=1e-12)
    star = pi_star(ref, [1.0, 0.0, 2.0], 0.3)
    gaps = [kl(sbon_exact(ref, [1.0, 0.0, 2.0], 0.3, n), star) for n in (1, 2, 4, 8, 16)]
    assert all(b < a for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 0.01


def test_pi_star_properties():
    ref, reward, beta = [0.1, 0.6, 0.3, 0.0], [1.0, 0.0, 0.5, 5.0], 0.3
    star = pi_star(ref, reward, beta)
    assert sum(star) == pytest.approx(1.0, abs=1e-12)
    assert star[3] == 0.0  # no mass where π_ref has none, whatever the reward
    for a in range(3):  # π*(a)/π_ref(a) ∝ exp(R(a)/β)
        ratio = (star[a] / ref[a]) / (star[1] / ref[1])
        assert ratio == pytest.approx(math.exp((reward[a] - reward[1]) / beta), rel=1e-12)
    assert pi_star(ref, [r + 7.0 for r in reward], beta) == pytest.approx(star, abs=1e-15)
    assert pi_star(ref, reward, 1e6) == pytest.approx(ref, abs=1e-5)  # large β: π_ref
    sharp = pi_star(ref, reward, 1e-3)  # small β: all mass on the best answer π_ref can say (answer 0)
    assert sharp[0] == pytest.approx(1.0) and sharp[1] < 1e-100 and sharp[3] == 0.0
    with pytest.raises(UserError):
        pi_star([0.5, 0.6], [0.0, 1.0], 0.1)
    with pytest.raises(UserError):
        pi_star([0.5, 0.5], [0.0, 1.0], 0.0)


def test_kl_and_tv():
    p, q = [0.5, 0.5, 0.0], [0.25, 0.25, 0.5]
    assert kl(p, q) == pytest.approx(math.log(2))
    assert kl(p, p) == 0.0 and kl(q, p) == math.inf
    assert tv(p, q) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------
# The policy, the kit's loss, the two regimes


def test_kit_loss_is_weighted_mean_nll():
    policy = BanditPolicy(torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]]))
    prompts, answers = torch.tensor([0, 0, 1]), torch.tensor([1, 2, 0])
    weights = torch.tensor([2.0, 0.5, 0.5], dtype=torch.float64)
    logp = torch.log_softmax(policy.logits.detach(), dim=-1)
    expected = -(2.0 * logp[0, 1] + 0.5 * logp[0, 2] + 0.5 * logp[1, 0]) / 3
    # the kit's sequence_nll scores in float32 (logits.float()), hence the tolerance
    assert kit_loss(policy, prompts, answers, weights).item() == pytest.approx(expected.item(), rel=1e-6)


def test_fixed_regime_converges_to_the_groups_weighted_empirical_distribution():
    bandits = BANDITS[:2]
    groups = [[0, 1, 1, 3], [2, 2, 2, 2]]  # the second group has all-equal returns: weight 1 each
    trained = train_fixed(bandits, 0.3, groups, Schedule(fixed_steps=400))
    for bandit, group, probs in zip(bandits, groups, trained):
        target = weighted_empirical(list(bandit.reward), 0.3, group)
        assert tv(probs, target) < 0.01
    assert trained[1][2] > 0.99


def test_fresh_training_is_seeded():
    schedule = Schedule(fresh_steps=20, fresh_groups=4)
    first = train_fresh(BANDITS, 0.3, 4, schedule, seed=3)
    assert train_fresh(BANDITS, 0.3, 4, schedule, seed=3) == first
    assert train_fresh(BANDITS, 0.3, 4, schedule, seed=4) != first


# ---------------------------------------------------------------------------------------------------------
# The tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("theory")
    summary = run_theory(out, tiny=True, show_progress=False)
    return out, summary, json.loads((out / "theory.json").read_text())


def test_tiny_run_writes_the_files_with_the_specified_entries(tiny_run):
    out, summary, entries = tiny_run
    assert (out / "theory-kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "theory.md").read_text()
    assert "SBoN" in md and "fixed" in md
    assert summary["entries"] == len(entries) == len(BANDITS) * len(TINY_NS) * len(BETAS) * 2
    assert all(set(e) == KEYS for e in entries)
    assert {(e["prompt"], e["n"], e["beta"], e["regime"]) for e in entries} == {
        (b.name, n, beta, regime)
        for b in BANDITS
        for n in TINY_NS
        for beta in BETAS
        for regime in ("fresh", "fixed")
    }


def test_tiny_run_pi_star_and_sbon_recompute_from_the_entries(tiny_run):
    for e in tiny_run[2]:
        assert pi_star(e["pi_ref"], e["reward"], e["beta"]) == pytest.approx(e["pi_star"], abs=1e-12)
        assert sbon_exact(e["pi_ref"], e["reward"], e["beta"], e["n"]) == pytest.approx(e["sbon"], abs=1e-12)
        assert e["kl_sbon_star"] == pytest.approx(kl(e["sbon"], e["pi_star"]), abs=1e-12)
        assert e["kl_trained_sbon"] == pytest.approx(kl(e["pi_trained"], e["sbon"]), abs=1e-12)
        assert sum(e["pi_trained"]) == pytest.approx(1.0, abs=1e-9)


def test_tiny_run_fresh_training_lands_on_sbon_not_pi_star(tiny_run):
    fresh = [e for e in tiny_run[2] if e["regime"] == "fresh"]
    assert max(e["kl_trained_sbon"] for e in fresh) < 0.01
    far = [e for e in fresh if e["kl_sbon_star"] > 0.05]
    assert far  # cells where SBoN_N and π* differ clearly: the policy sits at SBoN_N
    assert all(e["kl_trained_sbon"] < e["kl_sbon_star"] / 10 for e in far)


def test_tiny_run_kl_sbon_star_falls_with_n(tiny_run):
    entries = tiny_run[2]
    for bandit in BANDITS:
        for beta in BETAS:
            gaps = [
                next(
                    e["kl_sbon_star"]
                    for e in entries
                    if (e["prompt"], e["beta"], e["n"], e["regime"]) == (bandit.name, beta, n, "fresh")
                )
                for n in TINY_NS
            ]
            assert all(b < a for a, b in zip(gaps, gaps[1:])), (bandit.name, beta, gaps)


def test_run_theory_refuses_a_file_as_out_dir(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError):
        run_theory(target, tiny=True, show_progress=False)
    assert theory.NS == (2, 4, 8, 16, 64)


# ---------------------------------------------------------------------------------------------------------
# The toy world's first turns (drift_lite/theory_toy.py)


def test_sbon_by_reward_class_equals_the_full_enumeration():
    from drift_lite.theory_toy import sbon_by_class

    ref, reward = [0.1, 0.25, 0.05, 0.3, 0.2, 0.1], [1.0, 0.0, -0.1, 0.0, 1.0, 0.0]
    for beta, n in ((0.1, 4), (0.5, 8)):
        assert sbon_by_class(ref, reward, beta, n) == pytest.approx(
            sbon_exact(ref, reward, beta, n), abs=1e-12
        )


def test_tv_counts_mass_outside_the_arms():
    from collections import Counter

    from drift_lite.theory_toy import tv_outside

    sample = Counter({"a": 2, "b": 1, "z": 1})  # "z" is no arm of the target
    assert tv_outside(sample, ["a", "b"], [0.5, 0.5]) == pytest.approx(0.5 * (0.0 + 0.25 + 0.25))
    assert tv_outside(Counter({"a": 3, "b": 3}), ["a", "b"], [0.5, 0.5]) == 0.0


def test_toy_tv_end_to_end_with_an_identity_adapter(tmp_path, tiny_lm):
    from peft import LoraConfig, get_peft_model

    from drift_lite.recipe import load_recipe
    from drift_lite.theory_toy import toy_tv

    model, tokenizer = tiny_lm
    ref = tmp_path / "ref"
    model.save_pretrained(ref)
    tokenizer.save_pretrained(ref)
    torch.manual_seed(0)
    base = type(model).from_pretrained(ref)
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))  # B = 0: the identity
    lora.save_pretrained(tmp_path / "identity")
    recipe = load_recipe(
        None,
        [f"model.name={ref}", "task.name=toy", "task.size=4", "rollout.max_new_tokens=6", "model.device=cpu"],
    )
    result = toy_tv(recipe, {"identity": tmp_path / "identity"}, tmp_path / "out", prompts=3, samples=6)
    assert (tmp_path / "out" / "toy-tv.md").read_text().count("|") > 10
    saved = json.loads((tmp_path / "out" / "toy-tv.json").read_text())
    assert saved["settings"]["prompts"] == 3 and len(saved["prompts"]) == 3
    # the same draws (same seeds) from the same function: the identity adapter matches the reference exactly
    assert result["models"]["identity"]["tv_star"] == result["models"]["reference"]["tv_star"]
    for p in saved["prompts"]:
        assert sum(p["pi_ref"]) == pytest.approx(1.0)
        assert pi_star(p["pi_ref"], p["reward"], 0.1) == pytest.approx(p["pi_star"], abs=1e-12)
        assert all(r in (1.0, 0.0, -0.1) for r in p["reward"])
    with pytest.raises(UserError):
        toy_tv(recipe, {"missing": tmp_path / "nowhere"}, tmp_path / "out")
