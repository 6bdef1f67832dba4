"""Rollout throughput, three contenders side by side in one run, same model, prompts and settings:

  (a) the opt-in token engine (`rollout.engine: token`, drift_lite.engine_token; validated on CPU only):
      batched multi-turn episodes, each slot refilled between tokens as soon as its episode ends
  (a') the default turn engine (`rollout.engine: turn`, drift_lite.engine_turn): one `generate` per turn
      over the batch, refilled between turns, with its opt-in prompt-prefix KV cache (and once with it off)
  (b) a naive loop: one trajectory at a time, one `generate` per turn (no prefix cache)
  (c) single-turn batched `generate` of the same number of new tokens (the ceiling batching can reach)

Goals: a/b >= 8 and a/c >= 0.8. This box's speed drifts by 10-50% over minutes, so (a) and (c) are timed
`--repeats` times, one right after the other, taking turns to go first; the table shows each one's median
round, and a/c is also printed round by round (a round's (a) against the same round's (c)) with its median.
Run:

    .venv/bin/python benchmarks/rollout_throughput.py                 # toy reference, 32 prompts x 8
    .venv/bin/python benchmarks/rollout_throughput.py --prompts 256 --naive-prompts 32   # the recipe's scale
    .venv/bin/python benchmarks/rollout_throughput.py --model smollm2-135m --prompts 4 --samples 4
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GenerationConfig

from drift_lite import chat
from drift_lite.engine_turn import plain_generation_config
from drift_lite.episodes import play_episodes
from drift_lite.jobs import make_jobs
from drift_lite.models import load_model, load_tokenizer, resolve_model_path
from drift_lite.recipe import load_recipe
from drift_lite.rollouts import episode_settings, load_shots
from drift_lite.sampling import PerRowGumbelSampler, Sampling
from drift_lite.tasks import checker_for, load_problems


def main() -> None:
    """Measure and print tokens/s of (a), (b), (c) and the ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="recipes/toy/drift.yaml")
    parser.add_argument("--model", default=None, help="override model.name (e.g. smollm2-135m)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument(
        "--naive-prompts", type=int, default=None, help="prompts for the slow naive loop (default: all)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of (a) and (c), in turn first")
    args = parser.parse_args()
    overrides = [f"model.name={args.model}", "env.shots=1"] if args.model else []
    recipe = load_recipe(args.recipe, overrides)
    torch.manual_seed(0)
    path = resolve_model_path(recipe.model, recipe.toy)
    tokenizer = load_tokenizer(path, recipe.model)
    model = load_model(path, recipe.model)
    problems = load_problems(recipe.task.name, "train", recipe.task.source, args.prompts, recipe.task.seed)
    checker = checker_for(recipe.task.name, recipe.task.checker)
    env, shots = episode_settings(recipe), load_shots(recipe)
    sampling = Sampling(
        temperature=recipe.rollout.temperature,
        top_p=recipe.rollout.top_p,
        max_new_tokens=recipe.rollout.max_new_tokens,
        seed=0,
    )

    def engine(problem_list: list, batch_size: int, kind: str, cache: bool = True) -> tuple[int, dict]:
        jobs = make_jobs(problem_list, args.samples, 0, checker, env, shots)
        rows = {}

        def on_done(job) -> None:
            rows[(job.episode.problem.id, job.traj_idx)] = job.episode.to_row()

        stats = play_episodes(
            model, tokenizer, jobs, sampling, batch_size, on_done, engine=kind, prefix_cache=cache
        )
        return stats["generated_tokens"], {**stats, "rows": rows}

    def single_turn() -> tuple[int, None]:
        """(c): first-turn prompts, as many new tokens per row as (a) generated on average (no early stop)."""
        jobs = make_jobs(problems, args.samples, 0, checker, env, shots)
        prompts = [chat.render_prompt(tokenizer, j.episode.messages) for j in jobs]
        per_row = max(1, round(tok_a / len(prompts)))
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=per_row,
            min_new_tokens=per_row,
            pad_token_id=tokenizer.pad_token_id,
        )
        tokens = 0
        for i in range(0, len(prompts), batch):
            inputs = tokenizer(
                prompts[i : i + batch],
                return_tensors="pt",
                padding=True,
                padding_side="left",
                add_special_tokens=False,
            ).to(model.device)
            keys = [j.key for j in jobs[i : i + batch]]
            sampler = PerRowGumbelSampler(keys, 1.0, 1.0, model.device, max_new_tokens=per_row)
            with torch.inference_mode(), plain_generation_config(model):  # as the engines decode
                out = model.generate(**inputs, generation_config=config, logits_processor=[sampler])
            tokens += out[:, inputs["input_ids"].shape[1] :].numel()
        return tokens, None

    # Forward passes of the model per contender: on a small model each costs about the same, so their count
    # explains most of the tokens/s differences. Counted at the output head, which every pass runs once
    # whether it goes through `model(...)` or the token engine's direct chain of the decoder's parts (whose
    # first step runs both, to check them against each other: one pass more)
    forwards = [0]
    model.get_output_embeddings().register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))

    def timed(fn):
        """fn(), its wall-clock seconds, this process's CPU seconds and the model's forward passes."""
        wall, cpu, forwards[0] = time.perf_counter(), time.process_time(), 0
        result = fn()
        return result, time.perf_counter() - wall, time.process_time() - cpu, forwards[0]

    batch = recipe.rollout.batch_size
    engine(problems[:2], batch, "token")  # warm-up
    engine(problems[:2], batch, "turn")
    runs: dict[str, list[tuple]] = {"a": [], "c": []}  # (result, times) of each round
    tok_a = None  # (c) generates as many tokens as (a): known after (a)'s first round
    contenders = [("a", lambda: engine(problems, batch, "token")), ("c", single_turn)]
    for round_ in range(args.repeats):  # (a) then (c), then (c) then (a), ...: neither always goes first
        for key, fn in contenders if round_ % 2 == 0 else contenders[::-1]:
            result, *times = timed(fn)
            if key == "a":
                tok_a = result[0]
            runs[key].append((result, times))
    # tokens/s of (a) over that of (c), round by round: (result, (wall, cpu, passes)), result[0] = tokens
    paired = sorted((a[0][0] / a[1][0]) / (c[0][0] / c[1][0]) for a, c in zip(runs["a"], runs["c"]))
    (_, stats_a), sec_a = sorted(runs["a"], key=lambda r: r[1][0])[len(runs["a"]) // 2]  # the median round
    (tok_c, _), sec_c = sorted(runs["c"], key=lambda r: r[1][0])[len(runs["c"]) // 2]
    (tok_t, stats_t), *sec_t = timed(lambda: engine(problems, batch, "turn"))
    (tok_off, stats_off), *sec_off = timed(lambda: engine(problems, batch, "turn", cache=False))
    # (b) one trajectory at a time is the turn engine with room for one episode and no prefix cache
    (tok_b, _), *sec_b = timed(
        lambda: engine(problems[: args.naive_prompts or len(problems)], 1, "turn", False)
    )
    print(
        f"model={recipe.model.name} prompts={len(problems)} samples={args.samples} batch={batch} "
        f"max_new_tokens={recipe.rollout.max_new_tokens} threads={torch.get_num_threads()} "
        f"repeats={args.repeats}"
    )
    print("                           tokens   wall s  tokens/s    cpu s  tokens/cpu-s  forwards")
    rates = {}
    for key, name, tokens, (wall, cpu, passes) in [
        ("a", "(a) engine (token-level)", tok_a, sec_a),
        ("turn", "(a') turn-level engine", tok_t, sec_t),
        ("off", "     same, cache off", tok_off, sec_off),
        ("b", "(b) naive, 1 at once", tok_b, sec_b),
        ("c", "(c) single-turn batch", tok_c, sec_c),
    ]:
        rates[key] = (tokens / wall, tokens / cpu)
        print(
            f"{name:24s} {tokens:8d} {wall:8.2f} {tokens / wall:9.1f} {cpu:8.2f} {tokens / cpu:13.1f}"
            f" {passes:9d}"
        )
    a, turn, off = rates["a"], rates["turn"], rates["off"]
    print("ratios of tokens/s (wall clock; CPU time in brackets: the machine may be shared)")
    for x, goal in (("b", 8), ("c", 0.8)):
        r = rates[x]
        print(
            f"a/{x} = {a[0] / r[0]:.2f} [{a[1] / r[1]:.2f}]  "
            f"a'/{x} = {turn[0] / r[0]:.2f} [{turn[1] / r[1]:.2f}]  (goal >= {goal})"
        )
    print(
        f"a/c within each round ((a) and (c) seconds apart, in turn first: a slower box slows both): "
        f"{', '.join(f'{r:.2f}' for r in paired)}; median {paired[len(paired) // 2]:.2f}"
    )
    print(
        f"same rows, token- and turn-level engines: {stats_a['rows'] == stats_t['rows']}  "
        f"({stats_a['cached_prompt_tokens']} prompt tokens already in the token engine's slots)"
    )
    print(
        f"turn engine's prefix cache on/off = {turn[0] / off[0]:.2f} [{turn[1] / off[1]:.2f}]  "
        f"({stats_t['cached_prompt_tokens']} prompt tokens read from the cache; "
        f"same rows: {stats_t['rows'] == stats_off['rows']})"
    )


if __name__ == "__main__":
    main()
