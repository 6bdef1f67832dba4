"""The theory check on the toy world: first-turn answer distributions against π* and SBoN_N (issue 17 item 2).

Per training prompt, π_ref is estimated by sampling first turns of the reference model (the kit's
`rollout.generate_turn`, one HF generate per batch, at the rollout's temperature / top-p, on the very first-
turn prompt the rollouts used: the recipe's env, max_turns included, shots included). Each distinct
normalized answer (or "no answer") is an arm. Its return is the kit's single-turn return,
`weights.trajectory_return` of the episode stopped after turn 1: 1 correct, 0 wrong, env.format_penalty
(-0.1) without an answer. Over the observed arms, π*(a) ∝ π̂_ref(a)·exp(R(a)/β) and SBoN_N (N =
rollout.n_samples) follow; SBoN_N is computed exactly on the reward classes (arms with equal reward are
exchangeable under the soft pick, so each class's SBoN mass splits in proportion to π̂_ref). Then each model
(the reference again, on fresh draws, and each adapter) is sampled the same way, and its empirical first-
turn distribution's TV distance to π* and to SBoN_N is reported, mass on answers outside the observed arms
counting in full. Sampled, not greedy: greedy is one answer per prompt.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from drift_lite.errors import UserError
from drift_lite.files import atomic_writer, write_json_atomic
from drift_lite.theory import pi_star, sbon_exact
from drift_lite.weights import trajectory_return

NO_ANSWER = "<no answer>"
ESTIMATE_SEED, SAMPLE_SEED = 101, 202  # added to recipe.seed: π_ref's estimate and the compared draws differ


def first_turns(model, tokenizer, recipe, problems, samples: int, seed: int, show_progress: bool = True):
    """Per problem: a Counter of first-turn answers over `samples` draws, and each answer's return."""
    from drift_lite import chat
    from drift_lite.engine_turn import generate_turn
    from drift_lite.env import Episode
    from drift_lite.rollouts import episode_settings, load_shots
    from drift_lite.sampling import Sampling, trajectory_key
    from drift_lite.tasks import checker_for, feedback_for

    env, shots = episode_settings(recipe), load_shots(recipe)
    checker, feedback = checker_for(recipe.task.name, recipe.task.checker), feedback_for(recipe.task.name)
    r = recipe.rollout
    sampling = Sampling(False, r.temperature, r.top_p, r.max_new_tokens, seed)
    jobs = [(i, j, p) for i, p in enumerate(problems) for j in range(samples)]
    counts: list[Counter] = [Counter() for _ in problems]
    returns: list[dict[str, float]] = [{} for _ in problems]
    bar = tqdm(total=len(jobs), desc="first turns", unit="turn", disable=not show_progress, leave=False)
    for start in range(0, len(jobs), r.batch_size):
        batch = jobs[start : start + r.batch_size]
        episodes = [Episode(p, checker, env, shots(p), feedback) for _, _, p in batch]
        prompts = [chat.render_prompt(tokenizer, e.messages) for e in episodes]
        keys = [trajectory_key(seed, p.id, j) for _, j, p in batch]
        texts, _ = generate_turn(model, tokenizer, prompts, keys, sampling)
        for (i, _, _), episode, text in zip(batch, episodes, texts):
            episode.step(text)
            arm = episode.answer_norms[0] if episode.answer_norms else NO_ANSWER
            counts[i][arm] += 1
            returns[i][arm] = trajectory_return(episode.to_row(), recipe.weights)
        bar.update(len(batch))
    bar.close()
    return counts, returns


def sbon_by_class(pi_ref: list[float], reward: list[float], beta: float, n: int) -> list[float]:
    """SBoN_N exactly, enumerating count vectors over the distinct reward values only (then split ∝ π_ref)."""
    levels = sorted(set(reward))
    mass = [math.fsum(p for p, r in zip(pi_ref, reward) if r == level) for level in levels]
    by_level = dict(zip(levels, sbon_exact(mass, levels, beta, n)))
    total = dict(zip(levels, mass))
    return [by_level[r] * p / total[r] if total[r] > 0 else 0.0 for p, r in zip(pi_ref, reward)]


def tv_outside(sample: Counter, arms: list[str], target: list[float]) -> float:
    """TV between a sample's empirical distribution and `target` over `arms` (mass off the arms counts)."""
    total = sum(sample.values())
    inside = sum(abs(sample.get(a, 0) / total - q) for a, q in zip(arms, target))
    outside = sum(c for a, c in sample.items() if a not in set(arms)) / total
    return 0.5 * (inside + outside)


def prompt_targets(counts: Counter, returns: dict[str, float], beta: float, n: int) -> dict:
    """The arms of one prompt, π̂_ref, their rewards, π* and SBoN_N."""
    arms = sorted(counts)
    total = sum(counts.values())
    ref = [counts[a] / total for a in arms]
    reward = [returns[a] for a in arms]
    return {
        "arms": arms,
        "reward": reward,
        "pi_ref": ref,
        "pi_star": pi_star(ref, reward, beta),
        "sbon": sbon_by_class(ref, reward, beta, n),
    }


def _mean_se(values: list[float]) -> tuple[float, float]:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return statistics.fmean(values), se


def compare(targets: list[dict], samples: dict[str, list[Counter]], answers_ok) -> dict:
    """Per model: mean ± se over prompts of TV to π* and to SBoN_N, first-turn accuracy, no-answer share."""
    rows = {}
    for label, per_prompt in samples.items():
        tv_star = [tv_outside(s, t["arms"], t["pi_star"]) for s, t in zip(per_prompt, targets)]
        tv_sbon = [tv_outside(s, t["arms"], t["sbon"]) for s, t in zip(per_prompt, targets)]
        acc = [
            sum(c for a, c in s.items() if answers_ok(i, a)) / sum(s.values())
            for i, s in enumerate(per_prompt)
        ]
        none = [s.get(NO_ANSWER, 0) / sum(s.values()) for s in per_prompt]
        rows[label] = {
            "tv_star": _mean_se(tv_star),
            "tv_sbon": _mean_se(tv_sbon),
            "accuracy": _mean_se(acc),
            "no_answer": _mean_se(none),
            "tv_star_per_prompt": tv_star,
        }
    return rows


def toy_tv(
    recipe,
    adapters: dict[str, Path],
    out_dir: Path,
    *,
    prompts: int | None = 64,
    samples: int = 64,
    beta: float | None = None,
    n: int | None = None,
    show_progress: bool = True,
) -> dict:
    """TV to π* (and SBoN_N) of the reference's and each adapter's sampled first turns; writes toy-tv.*."""
    from drift_lite import models
    from drift_lite.tasks import load_problems

    beta = recipe.weights.beta if beta is None else beta
    n = recipe.rollout.n_samples if n is None else n
    for label, adapter in adapters.items():
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise UserError(f"{label}: adapter not found: {adapter} (no adapter_config.json)")
    if samples < 2:
        raise UserError(f"samples must be >= 2, got {samples}")
    problems = load_problems(
        recipe.task.name, "train", recipe.task.source, recipe.task.size, recipe.task.seed
    )
    problems = problems[:prompts] if prompts else problems
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = models.resolve_model_path(recipe.model, recipe.toy)
    tokenizer = models.load_tokenizer(path, recipe.model)
    model = models.load_model(path, recipe.model)
    est, returns = first_turns(
        model, tokenizer, recipe, problems, samples, recipe.seed + ESTIMATE_SEED, show_progress
    )
    drawn = {
        "reference": first_turns(
            model, tokenizer, recipe, problems, samples, recipe.seed + SAMPLE_SEED, show_progress
        )
    }
    del model
    for label, adapter in adapters.items():
        model = models.load_model(path, recipe.model, adapter=str(adapter))
        drawn[label] = first_turns(
            model, tokenizer, recipe, problems, samples, recipe.seed + SAMPLE_SEED, show_progress
        )
        del model
    correct = [{a for a, r in ret.items() if r > 0} for ret in returns]
    for _, (_, more) in drawn.items():  # answers first seen in a model's draws: their returns too
        for i, ret in enumerate(more):
            correct[i] |= {a for a, r in ret.items() if r > 0}
    targets = [prompt_targets(c, r, beta, n) for c, r in zip(est, returns)]
    rows = compare(targets, {k: v[0] for k, v in drawn.items()}, lambda i, a: a in correct[i])
    rows["reference (estimate itself)"] = compare(targets, {"x": est}, lambda i, a: a in correct[i])["x"]
    limits = {
        "pi_star": [sum(p for p, r in zip(t["pi_star"], t["reward"]) if r > 0) for t in targets],
        "sbon": [sum(p for p, r in zip(t["sbon"], t["reward"]) if r > 0) for t in targets],
    }
    result = {
        "settings": {
            "beta": beta,
            "n": n,
            "prompts": len(problems),
            "samples": samples,
            "task": recipe.task.name,
        },
        "models": rows,
        "accuracy_pi_star": _mean_se(limits["pi_star"]),
        "accuracy_sbon": _mean_se(limits["sbon"]),
        "prompts": [{"prompt_id": p.id, **t} for p, t in zip(problems, targets)],
    }
    write_json_atomic(out_dir / "toy-tv.json", result)
    with atomic_writer(out_dir / "toy-tv.md") as handle:
        handle.write(toy_tv_markdown(result).encode("utf-8"))
    return result


def toy_tv_markdown(result: dict) -> str:
    """The table: TV to π* and SBoN_N, first-turn accuracy and no-answer share per model (mean ± se)."""
    s = result["settings"]
    lines = [
        "# First-turn distributions against π* on the toy world",
        "",
        f"{s['prompts']} training prompts of `{s['task']}`, {s['samples']} sampled first turns per prompt "
        f"and model; π_ref estimated from {s['samples']} other reference draws per prompt; β = {s['beta']}, "
        f"N = {s['n']}. Return of a first turn: 1 correct, 0 wrong, the format penalty without an answer. "
        "Mean ± standard error over prompts. A finite sample's TV is biased upward (about the same for every "
        "model at equal sample sizes); compare the rows, not the numbers with 0.",
        "",
        "| model | TV to π* | TV to SBoN_N | first-turn accuracy | no answer |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, row in result["models"].items():
        cells = [
            f"{m:.3f} ± {e:.3f}" for m, e in (row[k] for k in ("tv_star", "tv_sbon", "accuracy", "no_answer"))
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for name, key in (("π*", "accuracy_pi_star"), ("SBoN_N", "accuracy_sbon")):
        m, e = result[key]
        lines.append(f"| {name} (target) | 0 | | {m:.3f} ± {e:.3f} | |")
    return "\n".join(lines + [""])
