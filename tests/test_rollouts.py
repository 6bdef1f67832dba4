"""The rollout step: per-problem worked examples, and `rollout` files: valid rows, determinism, the engine
recorded, kill -9 and resume, refusals, one writer per file, what `complete` means, and what the fingerprint
depends on (no weighting setting). Shards: tests/test_shards.py."""

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

from drift_lite import chat, records
from drift_lite.env import EpisodeSettings
from drift_lite.errors import UserError
from drift_lite.recipe import load_recipe
from drift_lite.records import fingerprint_path
from drift_lite.rollouts import (
    is_complete,
    load_shots,
    make_jobs,
    rollout,
    rollout_settings,
)
from drift_lite.tasks import load_problems, toy
from drift_lite.tasks.base import ExactChecker, Problem


def test_each_problem_gets_worked_examples_of_its_own_family():
    shots = load_shots(load_recipe(None, ["env.shots=2"]))
    problems = load_problems("toy", "train", None, 40, 0)
    jobs = make_jobs(problems, 2, 0, ExactChecker(), EpisodeSettings(), shots)
    assert len(jobs) == 80
    families = set()
    for job in jobs:
        problem, messages = job.episode.problem, job.episode.messages
        family = problem.meta["toy_family"]
        families.add(family)
        examples = toy.worked_examples(family, 2, avoid=problem)
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
        for (shot, content), user, assistant in zip(examples, messages[1:5:2], messages[2:5:2]):
            assert shot.meta["toy_family"] == family
            assert (
                user["content"] == chat.first_user_message(shot, "simple", 5)
                and assistant["content"] == content
            )
        assert messages[-1]["content"] == chat.first_user_message(problem, "simple", 5)
    assert families == {"add", "choice"}
    no_shots = make_jobs(problems[:1], 1, 0, ExactChecker(), EpisodeSettings(), load_shots(load_recipe(None)))
    assert len(no_shots[0].episode.messages) == 2


def test_worked_examples_only_for_the_toy_tasks():
    with pytest.raises(UserError, match="env.shots"):
        load_shots(load_recipe(None, ["env.shots=1", "task.name=gsm8k"]))
    shots = load_shots(load_recipe(None, ["env.shots=1"]))
    with pytest.raises(UserError, match="env.shots"):  # e.g. an eval set of another task
        shots(Problem("gsm8k-1", "1+1?", "2"))


# ---------------------------------------------------------------------------------------------------------
# The `rollout` function and the CLI on a tiny random Qwen2 saved to a folder (a recipe's model.name)

N = 3  # samples per prompt
MAX_TURNS = 3
SIZE = 40  # prompts: enough that a kill after the first group lands well before the end


@pytest.fixture(scope="module")
def recipe_path(tiny_lm, tmp_path_factory) -> Path:
    """A recipe naming a tiny random Qwen2 folder, the toy task and small settings."""
    folder = tmp_path_factory.mktemp("rollout")
    model, tokenizer = tiny_lm
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    recipe = {
        "seed": 3,
        "model": {"name": str(folder / "model")},
        "task": {"name": "toy", "size": SIZE, "seed": 1},
        "env": {"max_turns": MAX_TURNS},
        "rollout": {"n_samples": N, "max_new_tokens": 12, "temperature": 1.0, "batch_size": 8},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def reference(recipe_path) -> bytes:
    """The bytes of an uninterrupted rollout with the recipe's settings."""
    out = recipe_path.parent / "reference.jsonl"
    rollout(load_recipe(recipe_path), out, show_progress=False)
    return out.read_bytes()


def _run(recipe_path: Path, out: Path, *overrides: str) -> dict:
    return rollout(load_recipe(recipe_path, list(overrides)), out, show_progress=False)


def _assert_agrees_with_messages(row: dict) -> None:
    """t_star, verifier, turn_rewards, answer_norms and format_penalty recomputed from the messages."""
    roles = [m["role"] for m in row["messages"]]
    assert roles[:2] == ["system", "user"] and roles[-1] == "assistant"
    assert roles[2:] == ["assistant", "user"] * (len(roles[2:]) // 2) + ["assistant"]
    checker = ExactChecker()
    outputs = [
        m["content"].removeprefix(chat.THINK_PREFILL) for m in row["messages"] if m["role"] == "assistant"
    ]
    answers = [chat.parse_turn(text).answer for text in outputs]
    correct = [a is not None and checker.is_correct(a, row["gold"]) for a in answers]
    t_star = correct.index(True) + 1 if any(correct) else None
    assert row["t_star"] == t_star
    assert len(outputs) == (t_star or MAX_TURNS)
    assert row["verifier"] == {f"t{k}": int(k == t_star) for k in range(1, MAX_TURNS + 1)}
    assert row["turn_rewards"] == {k: float(v) for k, v in row["verifier"].items()}
    assert row["answer_norms"] == [checker.normalize(a) for a in answers if a is not None]
    assert row["format_penalty"] == round(-0.1 * answers.count(None), 10)
    assert len(row["reward_details"]) == len(outputs)


def test_every_written_row_validates_and_each_prompt_has_n_rows(recipe_path, reference):
    path = recipe_path.parent / "reference.jsonl"
    rows = list(records.iter_rows(path))  # validates each row against the schema
    problems = load_problems("toy", "train", None, SIZE, 1)
    assert len(rows) == SIZE * N
    assert [r["prompt_id"] for r in rows] == [p.id for p in problems for _ in range(N)]
    golds = {p.id: p.gold for p in problems}
    for i, row in enumerate(rows):
        assert records.validate_row(row, f"row {i}") is row
        assert row["traj_idx"] == i % N and row["gold"] == golds[row["prompt_id"]]
        assert (row["task"], row["seed"], row["ref_model"]) == ("toy", 3, str(recipe_path.parent / "model"))
        _assert_agrees_with_messages(row)
    meta = json.loads(fingerprint_path(path).read_text())
    assert meta["complete"] and is_complete(path, load_recipe(recipe_path))


def test_same_seed_and_settings_give_the_same_bytes(recipe_path, reference, tmp_path):
    out = tmp_path / "again.jsonl"
    _run(recipe_path, out, "rollout.batch_size=5")  # batch size is not a setting of the rows
    assert out.read_bytes() == reference
    _run(recipe_path, tmp_path / "seed4.jsonl", "seed=4")
    assert (tmp_path / "seed4.jsonl").read_bytes() != reference


def test_the_recipe_switches_of_engine_and_kv_reuse_change_no_byte(recipe_path, reference, tmp_path):
    """The default turn engine, with its prefix cache or without, and the opt-in token engine write the same
    bytes; each switch reaches the engine it names, as the returned stats and the fingerprint file record."""
    for overrides, engine, cache in (
        (["rollout.prefix_cache=true"], "turn", True),
        ([], "turn", False),
        (["rollout.engine=token"], "token", True),
    ):
        out = tmp_path / f"{'-'.join(overrides) or 'default'}.jsonl"
        stats = _run(recipe_path, out, *overrides)
        assert out.read_bytes() == reference, overrides
        ran = stats["engine"]
        assert (ran["engine"], ran["prefix_cache"], ran["fallback"]) == (engine, cache, None), overrides
        assert ran["decoder_chain"] is (engine == "token")  # a plain Qwen2: the token engine chains its parts
        assert json.loads(fingerprint_path(out).read_text())["stats"]["engine"] == ran


def _lines_end(data: bytes, k: int) -> int:
    """Byte offset just past the k-th line."""
    end = 0
    for _ in range(k):
        end = data.index(b"\n", end) + 1
    return end


def test_resume_drops_a_torn_line_and_a_partial_group(recipe_path, reference, tmp_path):
    out = tmp_path / "torn.jsonl"
    shutil.copy(fingerprint_path(recipe_path.parent / "reference.jsonl"), fingerprint_path(out))
    cut = _lines_end(reference, 2 * N + 1) + 25  # two groups, one row of the third and part of another
    out.write_bytes(reference[:cut])
    stats = _run(recipe_path, out)
    assert stats["resumed_prompts"] == 2
    assert out.read_bytes() == reference


def test_resume_with_other_settings_is_refused_and_touches_nothing(recipe_path, reference, tmp_path):
    out = tmp_path / "partial.jsonl"
    shutil.copy(fingerprint_path(recipe_path.parent / "reference.jsonl"), fingerprint_path(out))
    out.write_bytes(reference[: _lines_end(reference, N + 1) + 10])  # torn tail: would be cut on resume
    before = (out.read_bytes(), fingerprint_path(out).read_bytes())
    for override, key in [("rollout.temperature=0.7", "rollout.temperature"), ("seed=4", "seed")]:
        with pytest.raises(UserError) as err:
            _run(recipe_path, out, override)
        message = str(err.value)
        assert "\n" not in message and key in message and "other rollout settings" in message
        assert (out.read_bytes(), fingerprint_path(out).read_bytes()) == before
    fingerprint_path(out).unlink()
    with pytest.raises(UserError, match="settings file .* is missing"):
        _run(recipe_path, out)
    assert out.read_bytes() == before[0]


def test_killed_rollout_resumes_to_the_same_bytes(recipe_path, reference, tmp_path):
    out = tmp_path / "killed.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "drift_lite.cli", "rollout", str(recipe_path), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= N:  # one complete group on disk
                break
            time.sleep(0.01)
        assert proc.poll() is None, (
            f"the rollout ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    killed = out.read_bytes()
    assert killed.count(b"\n") >= N and len(killed) < len(reference)  # mid-run: a group or more, not all
    assert reference.startswith(killed)  # what the killed run wrote is what an uninterrupted run writes
    assert not json.loads(fingerprint_path(out).read_text())["complete"]
    stats = _run(recipe_path, out, "rollout.batch_size=4")  # resume in this process, another batch size
    assert 1 <= stats["resumed_prompts"] < SIZE
    assert out.read_bytes() == reference
    # Float-level caveat: a resumed run batches rows with other mates (and here another batch size). A row's
    # logits move with its padding and cached prefixes at float-rounding level (measured max |diff| ~1e-7 on
    # this tiny model, ~1e-5 on the toy reference, fp32 CPU), so bytes match while no sampled token sits on a
    # tie at that precision: here none does; on a GPU or in bf16 (larger rounding) a near-tie could flip.


def test_rollout_settings_follow_the_toy_build_and_no_weighting_setting(monkeypatch):
    from drift_lite import toy_model

    recipe = load_recipe(None)
    base = rollout_settings(recipe)
    assert base == rollout_settings(load_recipe(None, ["rollout.batch_size=3", "model.device=cpu"]))
    for weighting in ("weights.repeat_coef=0.3", "weights.beta=0.5", "weights.gamma=0.7"):
        assert base == rollout_settings(load_recipe(None, [weighting])), (
            weighting
        )  # applied at the weight step
    assert base != rollout_settings(load_recipe(None, ["env.format_penalty=-0.2"]))
    assert base != rollout_settings(load_recipe(None, ["toy.steps=7"]))
    monkeypatch.setattr(toy_model, "CORPUS_VERSION", "another-corpus")  # a rebuilt reference, same settings
    assert base != rollout_settings(recipe)


def test_a_second_process_on_a_locked_rollout_file_is_refused_and_changes_nothing(
    recipe_path, reference, tmp_path
):
    """One writer per rollout file: while another process holds it, `drift-lite rollout` exits 2, one line."""
    out = tmp_path / "locked.jsonl"
    out.write_bytes(reference[: _lines_end(reference, N)])  # one group, as a killed run leaves it
    shutil.copy(fingerprint_path(recipe_path.parent / "reference.jsonl"), fingerprint_path(out))
    before = (out.read_bytes(), fingerprint_path(out).read_bytes())
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from drift_lite.files import exclusive_lock\n"
            f"with exclusive_lock({str(out)!r}, 'rollout file'):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run(
            [sys.executable, "-m", "drift_lite.cli", "rollout", str(recipe_path), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    lines = second.stderr.splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"pid {holder.pid}" in lines[0] and "another drift-lite process" in lines[0]
    assert "rollout file" in lines[0]
    assert (out.read_bytes(), fingerprint_path(out).read_bytes()) == before


def test_complete_means_every_group_has_exactly_n_rows(recipe_path, reference, tmp_path):
    """The settings file saying `complete` is not enough: a duplicated, a short, an oversized or a missing
    group makes the file incomplete (two writers once appended to one file and both called it complete)."""
    recipe = load_recipe(recipe_path)
    rows = reference.splitlines(keepends=True)
    meta = fingerprint_path(recipe_path.parent / "reference.jsonl").read_bytes()
    cases = {
        "whole": rows,
        "a group twice": rows + rows[:N],
        "a row missing": rows[:1] + rows[2:],
        "a row too many": rows + rows[-1:],
        "a group missing": rows[:-N],
        "a torn last line": rows[:-1] + [rows[-1][:-5]],
    }
    for name, lines in cases.items():
        out = tmp_path / f"{name.replace(' ', '-')}.jsonl"
        out.write_bytes(b"".join(lines))
        fingerprint_path(out).write_bytes(meta)
        assert is_complete(out, recipe) is (name == "whole"), name
    assert not is_complete(tmp_path / "whole.jsonl", load_recipe(recipe_path, ["seed=4"]))


def test_a_rerun_removes_the_temp_files_a_killed_writer_of_this_file_left(recipe_path, reference, tmp_path):
    out = tmp_path / "done.jsonl"
    out.write_bytes(reference)
    shutil.copy(fingerprint_path(recipe_path.parent / "reference.jsonl"), fingerprint_path(out))
    own = [tmp_path / ".done.jsonl.0123abcd.tmp", tmp_path / ".done.jsonl.settings.json.deadbeef.tmp"]
    other = tmp_path / ".other.jsonl.0123abcd.tmp"  # another file's writer may be alive: left alone
    for path in [*own, other]:
        path.write_text("partial")
    stats = _run(recipe_path, out)
    assert stats["resumed_prompts"] == SIZE and out.read_bytes() == reference
    assert not any(p.exists() for p in own) and other.exists()


def test_a_task_size_beyond_the_source_is_said_not_shrunk_silently(recipe_path, tmp_path, capsys):
    source = tmp_path / "three.jsonl"
    source.write_text(
        "".join(
            json.dumps({"question": f"What is {a} + 1?", "answer": f"#### {a + 1}"}) + "\n" for a in range(3)
        )
    )
    overrides = ["task.name=gsm8k", f"task.source={source}", "task.size=5", "task.checker=exact"]
    stats = _run(recipe_path, tmp_path / "r.jsonl", *overrides, "rollout.max_new_tokens=2")
    err = capsys.readouterr().err
    assert f"task.size 5 > 3 problems in {source}: using 3" in err
    assert stats["prompts"] == 3


def test_in_reduced_precision_the_engine_and_batch_size_are_rollout_settings():
    """bf16 flips near-ties with the order of the arithmetic (docs/cpu-model.md): a resume must not mix."""
    bf16 = load_recipe(None, ["model.dtype=bfloat16"])
    base = rollout_settings(bf16)
    for override in ["rollout.engine=token", "rollout.batch_size=3", "rollout.prefix_cache=true"]:
        assert base != rollout_settings(load_recipe(None, ["model.dtype=bfloat16", override])), override
    fp32 = rollout_settings(load_recipe(None, ["model.dtype=float32"]))
    assert fp32 == rollout_settings(load_recipe(None, ["model.dtype=float32", "rollout.engine=token"]))
