"""Playing episodes: the one interface the rollout step and evaluation call, dispatching to an engine.

`turn` (default, `engine_turn`): one HF `generate` per turn. `token` (opt-in, `engine_token`): slots refilled
between tokens, validated on CPU only. Both write the same rows (per-trajectory seeds); the returned stats say
which engine and which optional paths ran (`stats["engine"]`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from drift_lite import engine_token, engine_turn
from drift_lite.jobs import Job
from drift_lite.sampling import Sampling

ENGINES = ("turn", "token")


def play_episodes(
    model,
    tokenizer,
    jobs: Iterable[Job],
    sampling: Sampling,
    batch_size: int,
    on_done: Callable[[Job], None],
    on_turn: Callable[[int, int], None] | None = None,
    engine: str = "turn",
    prefix_cache: bool = False,
) -> dict:
    """Play every job to its end with `engine`; `on_done(job)` as each episode ends, `on_turn(turns, tokens)`
    as turns end. Returns `generated_tokens`, `turns`, `cached_prompt_tokens` and `engine`: `{"engine":
    "turn" | "token", "prefix_cache": bool, "decoder_chain": bool, "fallback": why a request was not met or
    None}`.

    Example: `play_episodes(model, tok, make_jobs(problems, 4, 0, checker, EpisodeSettings()), Sampling(),
    8, rows.append)["engine"]["engine"] == "turn"`.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    fallback = None
    if engine == "token":
        fallback = engine_token.decline_reason(model)
        if fallback is None:
            return engine_token.run_episodes_streaming(
                model, tokenizer, jobs, sampling, batch_size, on_done, on_turn
            )
        fallback = f"token engine declined ({fallback}): played with the turn engine"
    stats = engine_turn.run_episodes(
        model, tokenizer, jobs, sampling, batch_size, on_done, on_turn, prefix_cache=prefix_cache
    )
    if fallback is not None:
        turn_fallback = stats["engine"]["fallback"]
        stats["engine"]["fallback"] = fallback if turn_fallback is None else f"{fallback}; {turn_fallback}"
    return stats
