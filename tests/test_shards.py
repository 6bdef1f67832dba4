"""Sharded rollouts (drift_lite.shards): which prompts a shard plays, the launcher's shard, merged parts equal
to a one-process run (lines and bytes), a killed shard resuming alone, and every refusal of `merge`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from drift_lite.errors import UserError
from drift_lite.files import exclusive_lock
from drift_lite.recipe import load_recipe
from drift_lite.records import fingerprint_path
from drift_lite.rollouts import is_complete, rollout
from drift_lite.shards import (
    check_shard,
    env_shard,
    iter_groups,
    merge,
    parse_shard,
    shard_path,
    shard_slice,
)

N = 3  # samples per prompt
SIZE = 40  # prompts: enough that a kill after the first group of a shard lands well before its end


# ---------------------------------------------------------------------------------------------------------
# Which prompts a shard plays


def test_parse_shard_takes_i_over_n_and_refuses_anything_else_in_one_line():
    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4)
    assert check_shard((0, 1)) is None and check_shard(None) is None  # one shard is the whole run
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0", "1/2/3", ""):
        with pytest.raises(UserError) as err:
            parse_shard(bad)
        assert "\n" not in str(err.value) and str(err.value).startswith(f"--shard {bad}: expected I/N")
    for bad in ((1, 1), (0, 0), (True, 2), (0.0, 2), "0/2", (0, 2, 1)):
        with pytest.raises(UserError):
            check_shard(bad)


def test_shards_are_interleaved_positions_that_cover_every_item_once():
    items = list(range(10))
    parts = [shard_slice(items, (i, 3)) for i in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(x for part in parts for x in part) == items
    assert shard_slice(items, None) == items
    with pytest.raises(UserError, match="only 10 prompts"):
        shard_slice(items, (0, 11))
    assert shard_path("runs/x/rollouts.jsonl", (1, 4)) == Path("runs/x/rollouts.shard-1-of-4.jsonl")


def test_the_launchers_rank_and_world_size_give_the_shard(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert env_shard() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert env_shard() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert env_shard() == (2, 4)
    for rank, world in (("4", "4"), ("x", "4")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", world)
        with pytest.raises(UserError, match="RANK"):
            env_shard()


# ---------------------------------------------------------------------------------------------------------
# Rollouts on a tiny random Qwen2 saved to a folder


@pytest.fixture(scope="module")
def recipe_path(tiny_lm, tmp_path_factory) -> Path:
    """A recipe naming a tiny random Qwen2 folder, the toy task and small settings."""
    folder = tmp_path_factory.mktemp("shards")
    model, tokenizer = tiny_lm
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    recipe = {
        "seed": 5,
        "model": {"name": str(folder / "model")},
        "task": {"name": "toy", "size": SIZE, "seed": 2},
        "env": {"max_turns": 3},
        "rollout": {"n_samples": N, "max_new_tokens": 12, "temperature": 1.0, "batch_size": 8},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _run(recipe_path: Path, out: Path, shard=None, *overrides: str) -> dict:
    return rollout(load_recipe(recipe_path, list(overrides)), out, shard=shard, show_progress=False)


@pytest.fixture(scope="module")
def reference(recipe_path) -> Path:
    """An uninterrupted one-process rollout."""
    out = recipe_path.parent / "reference.jsonl"
    _run(recipe_path, out)
    return out


@pytest.fixture(scope="module")
def parts(recipe_path) -> list[Path]:
    """Shards 0/2 and 1/2 of the same recipe, each run on its own (batch sizes differ on purpose)."""
    paths = [recipe_path.parent / "part-a.jsonl", recipe_path.parent / "part-b.jsonl"]
    _run(recipe_path, paths[0], (0, 2), "rollout.batch_size=5")
    _run(recipe_path, paths[1], (1, 2))
    return paths


def _copy(part: Path, to: Path) -> Path:
    shutil.copy(part, to)
    shutil.copy(fingerprint_path(part), fingerprint_path(to))
    return to


def test_two_merged_shards_equal_a_one_process_run_as_lines_and_bytes(
    recipe_path, reference, parts, tmp_path
):
    recipe = load_recipe(recipe_path)
    for i, part in enumerate(parts):
        meta = json.loads(fingerprint_path(part).read_text())
        assert meta["shard"] == {"index": i, "count": 2} and meta["complete"]
        assert meta["settings"] == json.loads(fingerprint_path(reference).read_text())["settings"]
        assert meta["prompts"]["count"] == SIZE // 2 and meta["prompts"]["total"] == SIZE
        assert is_complete(part, recipe, shard=(i, 2)) and not is_complete(part, recipe)
    ids = [g.prompt_id for g in iter_groups(reference, N)]
    assert [g.prompt_id for g in iter_groups(parts[1], N)] == ids[1::2]  # positions 1, 3, 5, ...
    out = tmp_path / "merged.jsonl"
    stats = merge(list(reversed(parts)), out)  # the order parts are given in does not matter
    assert (stats["prompts"], stats["trajectories"], stats["parts"]) == (SIZE, SIZE * N, 2)
    merged, one = out.read_bytes(), reference.read_bytes()
    assert sorted(merged.splitlines()) == sorted(one.splitlines())  # the same rows ...
    assert merged == one  # ... in the same order, byte for byte
    assert is_complete(out, recipe)  # the pipeline takes it as a finished rollout
    assert _run(recipe_path, out)["resumed_prompts"] == SIZE and out.read_bytes() == one  # nothing left to do


def test_under_a_launcher_each_rank_writes_its_part_and_rank_0_merges(
    recipe_path, reference, monkeypatch, tmp_path
):
    out = tmp_path / "rollouts.jsonl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    stats = _run(recipe_path, out)  # rank 1 first: it returns after its part
    assert stats["shard"] == "1/2" and "merged" not in stats and not out.exists()
    assert shard_path(out, (1, 2)).exists()
    monkeypatch.setenv("RANK", "0")
    stats = _run(recipe_path, out)
    assert stats["shard"] == "0/2" and stats["merged"]["prompts"] == SIZE
    assert out.read_bytes() == reference.read_bytes()
    assert is_complete(out, load_recipe(recipe_path))


def test_a_killed_shard_resumes_alone_and_merges_to_the_one_process_run(
    recipe_path, reference, parts, tmp_path
):
    """Shard 1/2 runs as rank 1 of a launcher (a real `drift-lite rollout` process), is killed after its first
    group, and is resumed on its own; shard 0/2 is never touched."""
    out = tmp_path / "rollouts.jsonl"
    part = shard_path(out, (1, 2))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    cmd = [sys.executable, "-m", "drift_lite.cli", "rollout", str(recipe_path), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if part.exists() and part.read_bytes().count(b"\n") >= N:  # one complete group on disk
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the shard ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    killed = part.read_bytes()
    assert killed.count(b"\n") >= N and not json.loads(fingerprint_path(part).read_text())["complete"]
    assert parts[1].read_bytes().startswith(killed)  # what it wrote is what an uninterrupted shard writes
    with pytest.raises(UserError, match="unfinished"):
        merge([parts[0], part], tmp_path / "early.jsonl")
    assert not (tmp_path / "early.jsonl").exists()
    stats = _run(recipe_path, part, (1, 2), "rollout.batch_size=4")  # resume this shard alone
    assert 1 <= stats["resumed_prompts"] < SIZE // 2
    assert part.read_bytes() == parts[1].read_bytes()
    shard0 = parts[0].read_bytes()
    merge([parts[0], part], out)
    assert out.read_bytes() == reference.read_bytes() and parts[0].read_bytes() == shard0


def test_a_part_resumed_as_another_shard_or_as_the_whole_run_is_refused(recipe_path, parts, tmp_path):
    part = _copy(parts[0], tmp_path / "p.jsonl")
    before = part.read_bytes()
    for shard, message in (((1, 2), "holds shard 0/2, not shard 1/2"), (None, "not the whole run")):
        with pytest.raises(UserError, match=message):
            _run(recipe_path, part, shard)
    assert part.read_bytes() == before


# ---------------------------------------------------------------------------------------------------------
# What merge refuses (one line each; the output is never written)


def _refused(parts: list[Path], out: Path, match: str) -> str:
    with pytest.raises(UserError, match=match) as err:
        merge(parts, out)
    message = str(err.value)
    assert "\n" not in message
    assert not out.exists() and not fingerprint_path(out).exists()
    return message


def _rewrite(part: Path, edit) -> None:
    """Edit a part's lines in place (its settings file still says complete)."""
    lines = part.read_bytes().splitlines(keepends=True)
    part.write_bytes(b"".join(edit(lines)))


def test_merge_refuses_a_duplicated_prompt(parts, tmp_path):
    out = tmp_path / "out.jsonl"
    twin = _copy(parts[0], tmp_path / "twin.jsonl")
    _refused([parts[0], twin, parts[1]], out, "duplicated prompts: it is shard 0/2 again")
    both = _copy(parts[1], tmp_path / "both.jsonl")
    _rewrite(both, lambda lines: parts[0].read_bytes().splitlines(keepends=True)[:N] + lines[N:])
    _refused([parts[0], both], out, "duplicated prompt")
    inside = _copy(parts[1], tmp_path / "inside.jsonl")
    _rewrite(inside, lambda lines: lines + lines[:N])  # the first group again at the end of the part
    _refused([parts[0], inside], out, "duplicated prompt")


def test_merge_refuses_a_missing_prompt(parts, tmp_path):
    out = tmp_path / "out.jsonl"
    _refused([parts[0]], out, r"missing prompts: shard 1/2 not given")
    short = _copy(parts[1], tmp_path / "short.jsonl")
    _rewrite(short, lambda lines: lines[:-N])  # its last group gone
    _refused([parts[0], short], out, "missing prompts")


def test_merge_refuses_an_incomplete_group_and_an_unfinished_part(parts, tmp_path):
    out = tmp_path / "out.jsonl"
    holed = _copy(parts[1], tmp_path / "holed.jsonl")
    _rewrite(holed, lambda lines: lines[: N + 1] + lines[N + 2 :])  # one row of the second group gone
    message = _refused([parts[0], holed], out, "an incomplete group")
    assert f"has {N - 1} rows, expected {N}" in message
    unfinished = _copy(parts[1], tmp_path / "unfinished.jsonl")
    meta = json.loads(fingerprint_path(unfinished).read_text())
    fingerprint_path(unfinished).write_text(json.dumps({**meta, "complete": False}))
    _refused([parts[0], unfinished], out, "unfinished")
    fingerprint_path(unfinished).unlink()
    _refused([parts[0], unfinished], out, "settings file .* is missing")


def test_merge_refuses_parts_made_with_other_settings_or_of_another_split(recipe_path, parts, tmp_path):
    out = tmp_path / "out.jsonl"
    other = tmp_path / "other.jsonl"
    _run(recipe_path, other, (1, 2), "rollout.temperature=0.7")
    message = _refused([parts[0], other], out, "other rollout settings")
    assert "rollout.temperature" in message
    third = _copy(parts[1], tmp_path / "third.jsonl")
    meta = json.loads(fingerprint_path(third).read_text())
    fingerprint_path(third).write_text(json.dumps({**meta, "shard": {"index": 1, "count": 3}}))
    _refused([parts[0], third], out, "another split")


def test_merge_leaves_an_existing_output_alone_when_refused_or_locked(parts, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("before\n")
    with pytest.raises(UserError, match="missing prompts"):
        merge([parts[0]], out)
    assert out.read_text() == "before\n"
    with pytest.raises(UserError, match="is one of the parts"):
        merge([parts[0], out], out)
    with exclusive_lock(out, "rollout file"), pytest.raises(UserError, match="another drift-lite process"):
        merge(parts, out)  # a second writer of the same output (here: another open of the lock)
    assert out.read_text() == "before\n"
