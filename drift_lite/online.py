"""Online multi-turn RL baseline, UFO-style: the current policy plays, a group-baseline policy gradient
updates it.

Why not TRL's GRPOTrainer with `rollout_func`: TRL is not a dependency of the kit, and its trainer calls
`rollout_func` only on its vLLM generation path (`use_vllm=True`, server or colocate); without vLLM it
generates single-turn completions itself (projects that want a custom rollout on transformers override the
private `_generate_single_turn`). vLLM does not run on these CPUs, and the environment here is multi-turn with
feedback tokens in the middle of the sequence that must be masked out of the loss. So this is a compact loop
on HF/PEFT pieces: the kit's own episode engine (`rollout.play_episodes`, per-trajectory seeds), the same
nf4 QLoRA model and LoRA settings as DRIFT (`models.load_model` + `models.prepare_for_training` with
`recipe.train`), train.py's prefix masking (`example_spans`), and a plain AdamW step.

What UFO does (arXiv 2507.14295, from the summary in issue 16): PPO on Qwen2.5-3B-Instruct, 200 steps,
8 prompt groups x 16 rollouts per step, keeping the top 25% of groups by reward spread, actor lr 1e-6, KL
coefficient 0.001, reward 0.5^(t−1) at the first correct turn plus a repetition penalty at the episode's
end, 5 turns, temperature 1.0. The summary does not give the penalty's form; we use the environment's
(`weights.repeat_coef`·(1 − unique/answers), the release's). Differences, on purpose: no critic; the
advantage is RLOO's leave-one-out group baseline A_i = R_i − mean_{j≠i} R_j (unbiased, as the baseline
does not depend on sample i, and no division by the group's std, which would up-weight near-uniform groups
as GRPO does); one on-policy optimizer step per iteration (no ratio clipping is needed when the data is
never reused). Per iteration: `online.prompts` problems drawn from the training set (seeded by seed and
iteration), `online.samples` episodes each, rewards, the group filter, then one step over all assistant
tokens of all turns (see online_loss.py) in micro-batches of `online.micro_batch` sequences.

A trained sequence is the stored conversation re-rendered by the chat template (as DRIFT trains it): an
assistant turn is stored re-formatted (`chat.parse_turn`), so it can differ from the sampled tokens in
spacing; the gradient is then that of the re-formatted text.

Layout of out_dir: `adapter/` (PeftModel.from_pretrained-loadable, `done.json` as train.py writes it),
`online/curve.jsonl` (one row per evaluation point, iteration 0 = the reference), `online/episodes.jsonl`
(training trajectories, release schema + iteration, reward, advantage, kept), `online/eval/it-<k>.jsonl`
(the greedy evaluation trajectories of each point), `online/state/` (checkpoint of the last complete
iteration: adapter, optimizer, RNG, counters, file sizes; replaced atomically), `online/settings.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import torch

from drift_lite.errors import UserError
from drift_lite.examples import WeightedCollator
from drift_lite.files import read_json, settings_hash, write_json_atomic
from drift_lite.loss import IGNORE
from drift_lite.online_loss import (
    episode_example,
    keep_top_spread,
    micro_batch_loss,
    rloo_advantages,
    ufo_reward,
)
from drift_lite.recipe import check_recipe

STATE, STATE_OLD, STATE_TMP = "state", "state.old", ".state.tmp"
DONE_FILE = "done.json"


def online_settings(recipe) -> dict:
    """What an online run's outputs depend on (compared on resume)."""
    from drift_lite.models import model_identity
    from drift_lite.rollouts import env_identity

    data = recipe.to_dict()
    picked = {k: data[k] for k in ("seed", "task", "online", "train", "weights")}
    picked["rollout"] = {k: data["rollout"][k] for k in ("max_new_tokens", "temperature", "top_p")}
    picked["eval"] = data["eval"]
    picked["model"] = model_identity(recipe.model, recipe.toy)
    picked["env"] = env_identity(recipe)
    return json.loads(json.dumps(picked))


def is_complete(out_dir: str | os.PathLike, recipe=None) -> bool:
    """Whether out_dir holds a finished online run (adapter's done.json intact; same settings if given)."""
    from drift_lite.training import is_complete as adapter_complete

    out = Path(out_dir)
    if not adapter_complete(out / "adapter"):
        return False
    if recipe is None:
        return True
    done = read_json(out / "adapter" / DONE_FILE) or {}
    return done.get("settings_hash") == settings_hash(online_settings(recipe))


def episode_reward(row: dict, recipe) -> float:
    """The training reward of one episode row: `ufo` or `drift` (the kit's return), per online.reward."""
    if recipe.online.reward == "ufo":
        return ufo_reward(row, recipe.weights.repeat_coef)
    from drift_lite.weights import trajectory_return

    return trajectory_return(row, recipe.weights.gamma, recipe.weights.repeat_coef)


def iteration_seed(seed: int, iteration: int) -> int:
    """The trajectory-key seed of one iteration's episodes (and its problem draw)."""
    digest = hashlib.blake2b(f"online\x1f{seed}\x1f{iteration}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "little")


def draw_problems(problems: list, n: int, seed: int, iteration: int) -> list:
    """`n` distinct training problems for one iteration (all of them when n >= their number)."""
    rng = random.Random(iteration_seed(seed, iteration))
    return rng.sample(problems, min(n, len(problems)))


class _World:
    """Problems, checkers and episode settings of a run (built once)."""

    def __init__(self, recipe) -> None:
        from drift_lite.rollouts import episode_settings, load_shots
        from drift_lite.tasks import checker_for, feedback_for, load_problems

        self.train = load_problems(
            recipe.task.name, "train", recipe.task.source, recipe.task.size, recipe.task.seed
        )
        self.checker = checker_for(recipe.task.name, recipe.task.checker)
        self.feedback = feedback_for(recipe.task.name)
        self.env = episode_settings(recipe)
        self.shots = load_shots(recipe)
        s = recipe.eval.sets[0]
        self.eval_set = s
        self.eval_problems = load_problems(s.task, "eval", s.source, s.size, recipe.task.seed)[
            : recipe.online.eval_size
        ]
        self.eval_checker = checker_for(s.task, s.checker)
        self.eval_feedback = feedback_for(s.task)


def _play(model, tokenizer, jobs, sampling, recipe, batch_size: int) -> tuple[list, int]:
    """Play jobs to the end; (finished jobs in job order, generated tokens)."""
    from drift_lite.episodes import play_episodes

    done: dict[int, object] = {}
    stats = play_episodes(
        model,
        tokenizer,
        jobs,
        sampling,
        batch_size,
        lambda job: done.__setitem__(id(job), job),
        engine=recipe.rollout.engine,
        prefix_cache=recipe.rollout.prefix_cache,
    )
    return [done[id(j)] for j in jobs], stats["generated_tokens"]


def evaluate_point(model, tokenizer, world: _World, recipe, path: Path) -> dict:
    """Greedy evaluation on the first `online.eval_size` eval problems; trajectories written to `path`."""
    from drift_lite.jobs import make_jobs
    from drift_lite.metrics import compute_metrics
    from drift_lite.records import write_rows_atomic
    from drift_lite.sampling import Sampling

    sampling = Sampling(greedy=True, max_new_tokens=recipe.eval.max_new_tokens, seed=recipe.seed)
    jobs = make_jobs(
        world.eval_problems,
        1,
        recipe.seed + 1,
        world.eval_checker,
        world.env,
        world.shots,
        world.eval_feedback,
    )
    finished, _ = _play(model, tokenizer, jobs, sampling, recipe, recipe.eval.batch_size)
    rows = [
        j.episode.to_row(task=world.eval_set.task, seed=recipe.seed, traj_idx=j.traj_idx) for j in finished
    ]
    write_rows_atomic(path, rows)
    return compute_metrics(rows, recipe.env.max_turns)


def _curve_row(iteration: int, counters: dict, metrics: dict, mean_reward: float | None, turns: int) -> dict:
    row = {
        "iteration": iteration,
        **{k: counters[k] for k in ("generated_tokens", "trained_tokens", "wall_s")},
    }
    row.update({f"multi@{k}": metrics[f"multi@{k}"] for k in range(1, turns + 1)})
    row["mean_reward"] = mean_reward
    return row


def _append_line(path: Path, data: dict) -> None:
    with open(path, "ab") as handle:
        handle.write((json.dumps(data, sort_keys=True) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


def _save_state(online_dir: Path, model, optimizer, counters: dict) -> None:
    """Checkpoint the last complete iteration: written into a temp folder, then renamed over the old one."""
    tmp, state, old = online_dir / STATE_TMP, online_dir / STATE, online_dir / STATE_OLD
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "adapter")
    torch.save(
        {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt"
    )
    write_json_atomic(tmp / "state.json", counters)
    shutil.rmtree(old, ignore_errors=True)
    if state.exists():
        os.replace(state, old)
    os.replace(tmp, state)
    shutil.rmtree(old, ignore_errors=True)


def _load_state(online_dir: Path, model, optimizer) -> dict | None:
    """Restore the last checkpoint (adapter weights, optimizer, RNG); its counters, or None."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    state = online_dir / STATE
    if not (state / "state.json").exists() and (online_dir / STATE_OLD / "state.json").exists():
        state = online_dir / STATE_OLD  # killed between the two renames
    counters = read_json(state / "state.json")
    if not isinstance(counters, dict):
        return None
    set_peft_model_state_dict(model, load_peft_weights(str(state / "adapter"), device="cpu"))
    saved = torch.load(state / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    return counters


def _truncate(path: Path, size: int) -> None:
    """Cut a JSONL file back to `size` bytes (lines of an iteration that did not complete)."""
    if path.exists() and path.stat().st_size > size:
        os.truncate(path, size)


def _update(model, optimizer, examples, recipe, pad_id: int) -> dict:
    """One optimizer step over `examples` in micro-batches (gradient accumulation over the whole step)."""
    cfg = recipe.online
    collate = WeightedCollator(pad_id)  # `weight` carries each sequence's advantage
    denominator = max(1, sum(sum(1 for t in e.labels if t != IGNORE) for e in examples))
    device = next(p for p in model.parameters()).device
    model.train()
    optimizer.zero_grad(set_to_none=True)
    sums = {"pg": 0.0, "kl": 0.0, "tokens": 0, "input_tokens": 0}
    for start in range(0, len(examples), cfg.micro_batch):
        chunk = examples[start : start + cfg.micro_batch]
        batch = {
            k: v.to(device)
            for k, v in collate(
                [{"input_ids": e.input_ids, "labels": e.labels, "weight": e.weight} for e in chunk]
            ).items()
        }
        loss, parts = micro_batch_loss(model, batch, denominator, cfg.kl_coef)
        loss.backward()
        for k in ("pg", "kl", "tokens"):
            sums[k] += parts[k]
        sums["input_tokens"] += int(batch["attention_mask"].sum())
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, recipe.train.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {**sums, "grad_norm": float(grad_norm), "kl_per_token": sums["kl"] / denominator}


def train_online(recipe, out_dir: str | os.PathLike, *, show_progress: bool = True) -> dict:
    """Run the online RL baseline into out_dir (resumable after a kill; see the module doc for the layout)."""
    from transformers import set_seed

    from drift_lite.jobs import make_jobs
    from drift_lite.models import load_model, load_tokenizer, prepare_for_training, resolve_model_path
    from drift_lite.records import RowAppender
    from drift_lite.sampling import Sampling

    check_recipe(recipe)
    check_recipe(recipe)  # the one place recipe values are checked (online.* included)
    cfg = recipe.online
    out = Path(out_dir)
    online_dir = out / "online"
    settings = online_settings(recipe)
    fingerprint = settings_hash(settings)
    if is_complete(out, recipe):
        _say(show_progress, f"{out}: online run already complete with these settings; nothing to do")
        return {**(read_json(out / "adapter" / DONE_FILE) or {}).get("summary", {}), "skipped": True}
    stored = read_json(online_dir / "settings.json")
    if stored is not None and stored.get("hash") != fingerprint:
        raise UserError(f"{out}: holds an online run with other settings; use another --out or delete it")
    world = _World(recipe)
    base = resolve_model_path(recipe.model, recipe.toy)
    tokenizer = load_tokenizer(base, recipe.model)
    set_seed(recipe.train.seed)  # LoRA's initialization draws from the global RNG
    model = prepare_for_training(
        load_model(base, recipe.model, train=recipe.train), recipe.train, recipe.model
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=recipe.train.weight_decay
    )

    online_dir.mkdir(parents=True, exist_ok=True)
    (online_dir / "eval").mkdir(exist_ok=True)
    write_json_atomic(online_dir / "settings.json", {"hash": fingerprint, "settings": settings})
    curve_path, episodes_path = online_dir / "curve.jsonl", online_dir / "episodes.jsonl"
    counters = _load_state(online_dir, model, optimizer)
    resumed_from = None
    if counters is None:
        curve_path.unlink(missing_ok=True)
        episodes_path.unlink(missing_ok=True)
        counters = {"iteration": 0, "generated_tokens": 0, "trained_tokens": 0, "wall_s": 0.0, "steps": 0}
        metrics = evaluate_point(model, tokenizer, world, recipe, online_dir / "eval" / "it-0.jsonl")
        _append_line(curve_path, _curve_row(0, counters, metrics, None, recipe.env.max_turns))
        counters["sizes"] = {"curve": curve_path.stat().st_size, "episodes": 0}
        _save_state(online_dir, model, optimizer, counters)
    else:
        resumed_from = counters["iteration"]
        _truncate(curve_path, counters["sizes"]["curve"])
        _truncate(episodes_path, counters["sizes"]["episodes"])
        _say(show_progress, f"resuming after iteration {resumed_from}")
    sampling = Sampling(
        temperature=recipe.rollout.temperature,
        top_p=recipe.rollout.top_p,
        max_new_tokens=recipe.rollout.max_new_tokens,
        seed=recipe.seed,
    )
    last = counters["iteration"]
    for iteration in range(counters["iteration"] + 1, cfg.iterations + 1):
        start = time.perf_counter()
        problems = draw_problems(world.train, cfg.prompts, recipe.seed, iteration)
        jobs = make_jobs(
            problems,
            cfg.samples,
            iteration_seed(recipe.seed, iteration),
            world.checker,
            world.env,
            world.shots,
            world.feedback,
        )
        finished, generated = _play(model, tokenizer, jobs, sampling, recipe, recipe.rollout.batch_size)
        extra = {"task": recipe.task.name, "ref_model": recipe.model.name, "seed": recipe.seed}
        rows = [j.episode.to_row(**extra, traj_idx=j.traj_idx, iteration=iteration) for j in finished]
        rewards = [episode_reward(r, recipe) for r in rows]
        groups = [rewards[g * cfg.samples : (g + 1) * cfg.samples] for g in range(len(problems))]
        kept = set(keep_top_spread(groups, cfg.keep_groups))
        examples = []
        for g, group in enumerate(groups):
            for i, adv in enumerate(rloo_advantages(group)):
                k = g * cfg.samples + i
                rows[k].update(reward=rewards[k], advantage=adv if g in kept else 0.0, kept=g in kept)
                if g in kept:
                    shots = len(finished[k].episode.shots)
                    ex = episode_example(tokenizer, rows[k]["messages"], adv, recipe.model.name, k, shots)
                    if len(ex.input_ids) <= recipe.train.max_length:
                        examples.append(ex)
        stats = (
            _update(model, optimizer, examples, recipe, tokenizer.pad_token_id)
            if examples
            else {"input_tokens": 0}
        )
        counters["wall_s"] = round(counters["wall_s"] + time.perf_counter() - start, 3)
        counters["generated_tokens"] += generated
        counters["trained_tokens"] += stats["input_tokens"]
        counters["steps"] += 1 if examples else 0
        counters["iteration"] = iteration
        with RowAppender(episodes_path) as appender:
            appender.append_group(rows)
        mean_reward = sum(rewards) / len(rewards)
        _say(
            show_progress,
            f"iteration {iteration}/{cfg.iterations}: mean reward {mean_reward:.3f}, "
            f"kept {len(kept)}/{len(groups)} groups, {generated} generated tokens, "
            f"kl/token {stats.get('kl_per_token', 0.0):.4g}, grad norm {stats.get('grad_norm', 0.0):.3g}",
        )
        if iteration == cfg.iterations or (cfg.eval_every and iteration % cfg.eval_every == 0):
            metrics = evaluate_point(
                model, tokenizer, world, recipe, online_dir / "eval" / f"it-{iteration}.jsonl"
            )
            _append_line(
                curve_path, _curve_row(iteration, counters, metrics, mean_reward, recipe.env.max_turns)
            )
            _say(
                show_progress,
                "  eval: "
                + ", ".join(f"multi@{k} {metrics[f'multi@{k}']:.3f}" for k in (1, recipe.env.max_turns)),
            )
        counters["sizes"] = {"curve": curve_path.stat().st_size, "episodes": episodes_path.stat().st_size}
        _save_state(online_dir, model, optimizer, counters)
        last = iteration
    summary = {k: counters[k] for k in ("generated_tokens", "trained_tokens", "steps", "wall_s")}
    summary.update(iterations=last, resumed_from=resumed_from)
    _save_adapter(model, tokenizer, recipe, out / "adapter", summary, fingerprint)
    return summary


def _save_adapter(model, tokenizer, recipe, adapter_dir: Path, summary: dict, fingerprint: str) -> None:
    """The final adapter, with done.json (train.is_complete's format) written last."""
    from drift_lite.recipe import dump_recipe

    tmp = adapter_dir.with_name(adapter_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    dump_recipe(recipe, tmp / "recipe.yaml")
    write_json_atomic(tmp / "summary.json", summary)
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    write_json_atomic(tmp / DONE_FILE, {"files": files, "summary": summary, "settings_hash": fingerprint})
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.replace(tmp, adapter_dir)


def _say(show: bool, message: str) -> None:
    if show:
        print(message, flush=True)
