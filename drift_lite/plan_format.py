"""What `drift-lite check` prints: the plan of a recipe (sizes, tokens, memory and time with their formulas),
made by plan.make_plan, written out line by line."""

from __future__ import annotations

from drift_lite.costs import (
    BATCH_STEPS,
    GPU_FLOPS,
    PROMPT_TOKENS,
    SHOT_TOKENS,
    TURN_FILL,
    TURNS,
    curve_points,
    formula,
    gpu_class,
    kept_episodes,
    policy_model,
    precision_label,
    size,
    step_seconds,
)
from drift_lite.plan import Plan, Resolved, make_plan


def count(n: float) -> str:
    """A parameter or token count with a unit: 3.09 B, 134.5 M, 0.50 M."""
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e6:.2f} M"


def _range(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.1f}-{pair[1]:.1f} h"


def _note(found: Resolved) -> str:
    return f" ({found.note})" if found.note else ""


def _prompt_line(recipe, p: Plan) -> str:
    """Where the first-prompt lengths come from: measured, or the budget and why."""
    m = p.measured
    if m is None:
        shots = f" + {SHOT_TOKENS} per worked example" if recipe.env.shots else ""
        return f"first prompts: assumed {PROMPT_TOKENS} tokens{shots} ({p.tokenizer})"
    return (
        f"first prompts, measured with {m.tokenizer}: train mean {m.train_mean:,}, longest "
        f"{m.train_longest:,} tokens ({len(m.train)} rendered); eval mean {m.eval_mean:,}, longest "
        f"{m.eval_longest:,} ({len(m.eval)} rendered)"
    )


def format_plan(recipe, p: Plan) -> str:
    """The plan as `drift-lite check` prints it."""
    m, t, r, tr, ev, a = recipe.model, recipe.task, recipe.rollout, recipe.train, recipe.eval, p.arch
    here = (" (cuda here)" if p.gpu else " (cpu here)") if m.device == "auto" else ""
    lines = [
        f"recipe '{recipe.name}': valid",
        f"model {m.name}: {count(a.total_params())} parameters ({a.layers} layers, hidden {a.hidden}, "
        f"MLP {a.intermediate}, {a.heads} heads / {a.kv_heads} kv, vocab {a.vocab}"
        f"{', tied' if a.tied else ''}); sampling in {m.dtype}, quantization {m.quantization}; "
        f"training {tr.finetune}; device {m.device}{here}",
        f"train prompts: {p.train_set.planned} of {t.name} from {p.train_set.where}{_note(p.train_set)}",
    ]
    lines += [
        f"eval set {name}: {found.planned} problems from {found.where}{_note(found)}"
        for name, found in p.eval_sets
    ]
    lines.append(_prompt_line(recipe, p))
    cut = ", longer prompts cut from the left" if tr.max_length < p.rollout_lengths.context else ""
    lines += _online_lines(recipe, p) if recipe.algorithm == "online_rl" else _sft_lines(recipe, p, cut)
    where = "GPU memory" if p.gpu else "memory (host RAM: a CPU run, no checkpointing)"
    lines.append(f"peak {where}, estimated (formulas in drift_lite/costs.py):")
    checkpointed = ", checkpointed" if p.gpu else ""
    checkpointed = f", {precision_label(tr.finetune, m.dtype, p.bf16)}{checkpointed}"
    batches = {
        "training": f"micro-batch {tr.batch_size} x {p.train_seq} tokens{checkpointed}",
        "rollout": f"batch {r.batch_size} x {p.rollout_lengths.context} tokens",
        "evaluation": f"batch {ev.batch_size} x {p.eval_lengths.context} tokens",
    }
    if recipe.algorithm == "online_rl":
        kv = f"{policy_model(m, tr).dtype} KV, AdamW state kept"
        batches["curve evaluation"] = f"the policy, {batches['evaluation']}, {kv}"
        batches["rollout"] = f"the policy plays, {batches['rollout']}, {kv}"
        batches["training"] = (
            f"online update, micro-batch {recipe.online.micro_batch} x {p.train_seq} tokens, all turns scored"
            f"{checkpointed}"
        )
    for phase, parts in p.memory.items():
        fits = f", fits on a GPU with {gpu_class(p.peak(phase))}" if p.gpu else ""
        lines.append(f"  {phase} ({batches[phase]}): {size(p.peak(phase))}{fits}")
        lines.append(f"    = {formula(parts, p.gpu)}")
    if not p.gpu:
        lines.append("time: not estimated for a CPU run")
        return "\n".join(lines)
    total = tuple(sum(h[k] for h in p.hours.values()) for k in range(2))
    lines.append(
        "time, rough: "
        + ", ".join(f"{k} {_range(v)}" for k, v in p.hours.items())
        + f" (reference and trained); total {_range(total)}"
    )
    if recipe.algorithm == "online_rl":
        o = recipe.online
        per = [
            (p.hours["online rollouts"][k] + p.hours["online updates"][k]) / o.iterations for k in range(2)
        ]
        lines.append(
            f"  per iteration {per[0] * 60:.1f}-{per[1] * 60:.1f} min (playing and update); "
            f"{curve_points(o)} curve evaluations of {min(o.eval_size, p.eval_sets[0][1].planned)} problems"
        )
        m = policy_model(m, tr)  # the policy generates as training holds it
    mean_context = p.rollout_lengths.mean_prompt + r.max_new_tokens / 2
    step = step_seconds(a, m, r.batch_size, mean_context, True)  # as generation_hours takes it
    lines.append(
        f"  assuming an RTX 3090/4090-class GPU: rollout decoding steps of {step[0] * 1e3:.0f}-"
        f"{step[1] * 1e3:.0f} ms at batch {r.batch_size} (with per-row CPU Gumbel noise), a batched turn "
        f"running {BATCH_STEPS[0]:.0%}-{BATCH_STEPS[1]:.0%} of max_new_tokens, {TURNS[0]:g}-{TURNS[1]:g} "
        f"turns per trajectory, {TURN_FILL[0]:.0%}-{TURN_FILL[1]:.0%} of max_new_tokens per turn, "
        f"training at {GPU_FLOPS[1] / 1e12:.0f}-{GPU_FLOPS[0] / 1e12:.0f} TFLOP/s"
    )
    return "\n".join(lines)


def _sft_lines(recipe, p: Plan, cut: str) -> list[str]:
    """The rollout and training lines of a weighted-SFT recipe."""
    r, tr = recipe.rollout, recipe.train
    low, high, most = p.generated
    return [
        f"rollouts: {p.train_set.planned} prompts x N={r.n_samples} = {p.trajectories:,} trajectories of up "
        f"to {recipe.env.max_turns} turns x {r.max_new_tokens} tokens: generated tokens at most "
        f"{most / 1e6:.1f} M, expected {low / 1e6:.1f}-{high / 1e6:.1f} M",
        f"training: {p.trajectories:,} rows x {tr.epochs:g} epoch, micro-batch {tr.batch_size} x GA "
        f"{tr.grad_accum} = {tr.batch_size * tr.grad_accum}, {p.optimizer_steps} optimizer steps, rows up to "
        f"{p.train_seq} tokens (train.max_length {tr.max_length}{cut})",
    ]


def _online_lines(recipe, p: Plan) -> list[str]:
    """What an online RL run plays and trains, per iteration and in all."""
    o, r, n = recipe.online, recipe.rollout, recipe.online.iterations
    low, high, most = p.generated
    episodes = o.prompts * o.samples
    kept = kept_episodes(o)
    return [
        f"online RL: {n} iterations; each plays {o.prompts} prompts x {o.samples} samples = {episodes} "
        f"episodes of up to {recipe.env.max_turns} turns x {r.max_new_tokens} tokens with the policy "
        f"(reference + LoRA): generated tokens per iteration at most {most / n / 1e6:.2f} M, expected "
        f"{low / n / 1e6:.2f}-{high / n / 1e6:.2f} M",
        f"  in all {p.trajectories:,} episodes, generated tokens at most {most / 1e6:.1f} M, expected "
        f"{low / 1e6:.1f}-{high / 1e6:.1f} M (a weighted-SFT rollout of {p.train_set.planned} prompts x "
        f"N={r.n_samples} plays {p.train_set.planned * r.n_samples:,} episodes once)",
        f"training: {p.optimizer_steps} optimizer steps, one per iteration on the kept groups' {kept} "
        f"episodes "
        f"(keep_groups {o.keep_groups:g}), micro-batch {o.micro_batch}, every assistant token of every turn, "
        f"KL {o.kl_coef:g} to the reference (adapter disabled), lr {o.lr:g}; rows up to {p.train_seq} tokens "
        f"(train.max_length {recipe.train.max_length}: longer episodes are left out)",
    ]


def check(recipe) -> str:
    """Validate the recipe, resolve every data source, and return the printed plan."""
    return format_plan(recipe, make_plan(recipe))
