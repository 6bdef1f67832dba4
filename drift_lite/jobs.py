"""The jobs an engine plays (one trajectory each, with its random stream's key) and what every engine needs
of the model and tokenizer: where a turn ends, which prompt tokens it may reuse."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from drift_lite.env import Episode, EpisodeSettings
from drift_lite.errors import UserError
from drift_lite.sampling import trajectory_key
from drift_lite.tasks.base import Problem


@dataclass
class Job:
    """One trajectory to play: its episode and the key of its random stream."""

    episode: Episode
    key: int
    traj_idx: int


def turn_key(job: Job) -> int:
    """The key of the random stream of a job's next turn: its trajectory key and the turn number."""
    return (job.key + 1_000_003 * job.episode.turn) % (1 << 63)


Shots = list[tuple[Problem, str]]  # worked examples: (problem, assistant content) pairs


def make_jobs(
    problems: list[Problem],
    n_samples: int,
    seed: int,
    checker,
    settings: EpisodeSettings,
    shots: Shots | Callable[[Problem], Shots] = (),
    feedback_for=None,
) -> list[Job]:
    """N jobs per problem, in problem order; `shots`: one list for every problem, or a function of it."""
    jobs = []
    for p in problems:
        examples = shots(p) if callable(shots) else list(shots)
        jobs += [
            Job(Episode(p, checker, settings, examples, feedback_for), trajectory_key(seed, p.id, i), i)
            for i in range(n_samples)
        ]
    return jobs


def eos_ids(model, tokenizer) -> list[int]:
    """The token ids that end a turn: the tokenizer's eos and the model's generation-config eos ids."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    extra = getattr(model.generation_config, "eos_token_id", None)
    for i in [extra] if isinstance(extra, int) else extra or []:
        if i not in ids:
            ids.append(i)
    if not ids:
        raise UserError("the tokenizer has no eos token: cannot tell where a turn ends")
    return ids


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    if b[: len(a)] == a:
        return len(a)
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def supports_prefix_cache(model) -> bool:
    """True when every layer's cache is a plain growing one (no sliding window), so prompt KV can be kept."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
