"""Rollout throughput, three contenders side by side in one run, same model, prompts and settings:

  (a) the engine: batched multi-turn episodes with continuous refill (drift_lite.rollout.run_episodes)
  (b) a naive loop: one trajectory at a time, one `generate` per turn
  (c) single-turn batched `generate` of the same number of new tokens (the ceiling batching can reach)

Goals: a/b >= 8 and a/c >= 0.8.  Run:

    .venv/bin/python benchmarks/rollout_throughput.py                 # toy reference
    .venv/bin/python benchmarks/rollout_throughput.py --model smollm2-135m --prompts 4 --samples 4
"""

from __future__ import annotations

import argparse
import time

import torch

from drift_lite import chat
from drift_lite.models import load_model, load_tokenizer, resolve_model_path
from drift_lite.recipe import load_recipe
from drift_lite.rollout import Sampling, episode_settings, generate_turn, load_shots, make_jobs, run_episodes
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
    parser.add_argument("--naive-prompts", type=int, default=4, help="prompts for the slow naive loop")
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

    def engine(problem_list: list, batch_size: int) -> tuple[int, float]:
        jobs = make_jobs(problem_list, args.samples, 0, checker, env, shots)
        start = time.perf_counter()
        stats = run_episodes(model, tokenizer, jobs, sampling, batch_size, lambda job: None)
        return stats["generated_tokens"], time.perf_counter() - start

    engine(problems[:2], recipe.rollout.batch_size)  # warm-up
    tok_a, sec_a = engine(problems, recipe.rollout.batch_size)
    # (b) one trajectory at a time is the same engine with room for one episode
    tok_b, sec_b = engine(problems[: args.naive_prompts], 1)
    # (c) single-turn batched generate: first-turn prompts, as many new tokens in total as (a) generated
    jobs = make_jobs(problems, args.samples, 0, checker, env, shots)
    prompts = [chat.render_prompt(tokenizer, j.episode.messages) for j in jobs]
    batch = recipe.rollout.batch_size
    per_row = max(1, round(tok_a / len(prompts)))
    tok_c, start = 0, time.perf_counter()
    fixed = Sampling(temperature=1.0, max_new_tokens=per_row, seed=0)
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        keys = [j.key for j in jobs[i : i + batch]]
        _, counts = generate_turn(model, tokenizer, chunk, keys, fixed)
        tok_c += sum(counts)
    sec_c = time.perf_counter() - start
    a, b, c = tok_a / sec_a, tok_b / sec_b, tok_c / sec_c
    print(
        f"model={recipe.model.name} prompts={len(problems)} samples={args.samples} batch={batch} "
        f"max_new_tokens={recipe.rollout.max_new_tokens} threads={torch.get_num_threads()}"
    )
    print(f"(a) engine            {tok_a:8d} tokens {sec_a:8.2f} s {a:9.1f} tokens/s")
    print(f"(b) naive, 1 at once  {tok_b:8d} tokens {sec_b:8.2f} s {b:9.1f} tokens/s")
    print(f"(c) single-turn batch {tok_c:8d} tokens {sec_c:8.2f} s {c:9.1f} tokens/s")
    print(f"a/b = {a / b:.2f}  (goal >= 8)")
    print(f"a/c = {a / c:.2f}  (goal >= 0.8)")


if __name__ == "__main__":
    main()
