"""`play_episodes`: the one interface to the engines; the default is the turn engine, the token engine is
opt-in, a model it cannot play falls back to the turn engine, and the stats say what ran."""

import pytest
from conftest import make_tiny_lm
from transformers import Qwen2Config, Qwen2ForCausalLM

from drift_lite.env import EpisodeSettings
from drift_lite.episodes import play_episodes
from drift_lite.jobs import make_jobs
from drift_lite.sampling import Sampling
from drift_lite.tasks.base import ExactChecker, Problem

PROBLEMS = [Problem(f"p{i}", f"{i}+{i}", str(2 * i)) for i in range(3)]


def _play(model, tokenizer, **kwargs) -> tuple[dict, dict]:
    """Rows by (prompt id, trajectory) and the stats."""
    jobs = make_jobs(PROBLEMS, 2, 5, ExactChecker(), EpisodeSettings(max_turns=3))
    rows = {}

    def on_done(job) -> None:
        rows[(job.episode.problem.id, job.traj_idx)] = job.episode.to_row()

    stats = play_episodes(model, tokenizer, jobs, Sampling(max_new_tokens=6), 4, on_done, **kwargs)
    return rows, stats


def test_the_default_is_the_turn_engine_and_both_engines_write_the_same_rows():
    model, tokenizer = make_tiny_lm(seed=3)
    rows, stats = _play(model, tokenizer)
    assert stats["engine"] == {
        "engine": "turn",
        "prefix_cache": False,
        "decoder_chain": False,
        "fallback": None,
    }
    token_rows, token_stats = _play(model, tokenizer, engine="token")
    assert token_rows == rows and len(rows) == 6
    assert token_stats["engine"]["engine"] == "token" and token_stats["engine"]["fallback"] is None
    assert token_stats["generated_tokens"] == stats["generated_tokens"]


def test_a_sliding_window_model_falls_back_to_the_turn_engine_without_prefix_cache():
    model, tokenizer = make_tiny_lm(seed=3)
    config = Qwen2Config(
        **{**model.config.to_dict(), "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0}
        | {"layer_types": None}
    )
    windowed = Qwen2ForCausalLM(config).eval()
    rows, stats = _play(windowed, tokenizer, engine="token", prefix_cache=True)
    ran = stats["engine"]
    assert len(rows) == 6 and ran["engine"] == "turn" and ran["prefix_cache"] is False
    assert ran["fallback"].startswith("token engine declined") and "prefix cache off" in ran["fallback"]


def test_an_unknown_engine_is_an_error():
    model, tokenizer = make_tiny_lm()
    with pytest.raises(ValueError, match="engine must be one of"):
        _play(model, tokenizer, engine="vllm")
