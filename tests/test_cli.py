"""The `drift-lite` command on bad input: exit code 2, one line on stderr, no traceback, nothing written."""

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from drift_lite import cli


@pytest.fixture(scope="module")
def model_dir(tiny_lm, tmp_path_factory) -> Path:
    """A tiny random Qwen2 saved to a folder (so no case can start building the toy reference)."""
    folder = tmp_path_factory.mktemp("cli-model")
    model, tokenizer = tiny_lm
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def folder(model_dir, tmp_path, monkeypatch) -> Path:
    """An empty working folder holding only recipe.yaml (naming the tiny model)."""
    recipe = {
        "model": {"name": str(model_dir)},
        "task": {"size": 4},
        "env": {"max_turns": 2},
        "rollout": {"n_samples": 2, "max_new_tokens": 4},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "empty.jsonl").write_text("")  # a real task's local source with no rows
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize(
    ("recipe", "overrides", "out", "expected"),
    [
        ("recipe.yaml", ["model.name=./nope"], "out.jsonl", "model path not found: ./nope"),
        ("recipe.yaml", ["model.name=/no/such/model"], "out.jsonl", "model path not found"),
        ("recipe.yaml", ["task.size=0"], "out.jsonl", "'task.size': must be >= 1"),
        ("recipe.yaml", ["task.name=gsm8k", "task.source=empty.jsonl"], "out.jsonl", "no problems"),
        ("recipe.yaml", ["task.size=100000"], "out.jsonl", "toy task: train has only"),
        ("recipe.yaml", ["rollout.n_sample=3"], "out.jsonl", "did you mean 'rollout.n_samples'"),
        ("recipe.yaml", ["rollout.n_samples=0"], "out.jsonl", "'rollout.n_samples': must be >= 1"),
        ("recipe.yaml", ["rollout.batch_size=0"], "out.jsonl", "'rollout.batch_size': must be >= 1"),
        ("recipe.yaml", ["rollout.top_p=0"], "out.jsonl", "'rollout.top_p': must be in (0, 1]"),
        ("recipe.yaml", ["env.shots=1", "task.name=gsm8k"], "out.jsonl", "env.shots"),
        ("missing.yaml", [], "out.jsonl", "recipe 'missing.yaml': no such file"),
        ("recipe.yaml", [], "nodir/out.jsonl", "does not exist"),
        ("recipe.yaml", [], ".", "is a directory"),
    ],
)
def test_bad_rollout_input_is_one_line_and_writes_nothing(folder, capsys, recipe, overrides, out, expected):
    before = _files(folder)
    code = cli.main(["rollout", recipe, *overrides, "--out", out])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("drift-lite: error: "), captured.err
    assert expected in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert _files(folder) == before


def test_a_good_rollout_through_the_cli(folder, capsys):
    out = folder / "good" / "rollouts.jsonl"
    out.parent.mkdir()
    assert cli.main(["rollout", "recipe.yaml", "--out", str(out)]) == 0
    assert "prompts=4 trajectories=8" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 8


def test_overrides_after_out_as_the_help_example_shows(folder, capsys):
    code = cli.main(["rollout", "recipe.yaml", "--out", "o.jsonl", "task.size=0"])
    captured = capsys.readouterr()
    expected = "drift-lite: error: recipe.yaml: key 'task.size': must be >= 1 (or null for all), got 0\n"
    assert code == 2 and captured.err == expected
    assert _files(folder) == {folder / "recipe.yaml", folder / "empty.jsonl"}


@pytest.mark.parametrize("command", sorted(cli.EXAMPLES))
def test_every_subcommand_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"drift-lite {command}" in out.split("example:")[1]


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in cli.EXAMPLES:
        assert f"    {command}" in out


# Write failures on --out: one line naming the path and the reason, exit 2, nothing written, before any
# model loads. The tests run as root, which ignores chmod: a read-only folder is simulated by an os.open that
# refuses to create files in it (EROFS, what a read-only mount answers), an unwritable folder by a path under
# a plain file, and a full disk by an os.fsync that answers ENOSPC.

# (command line with OUT as the output path); RECIPE commands load the recipe first, which must pass
COMMANDS = {
    "rollout": ["rollout", "recipe.yaml", "--out", "OUT/r.jsonl"],
    "weight": ["weight", "empty.jsonl", "OUT/w.jsonl"],
    "train": ["train", "recipe.yaml", "--data", "empty.jsonl", "--out", "OUT/adapter"],
    "eval": ["eval", "recipe.yaml", "--out", "OUT/eval"],
    "report": ["report", ".", "--out", "OUT/report"],
    "run": ["run", "recipe.yaml", "--out", "OUT/run"],
    "compare": ["compare", "spec.yaml", "--out", "OUT/compare"],
}


def _argv(command: str, out: str) -> list[str]:
    return [word.replace("OUT", out) for word in COMMANDS[command]]


def _one_line_exit_2(argv: list[str], capsys, root: Path) -> str:
    """Run the CLI; assert exit 2, one stderr line, no traceback, nothing new under root; return the line."""
    before = _files(root)
    code = cli.main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("drift-lite: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert _files(root) == before
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any model or tokenizer starts loading (the checks must come first)."""
    from drift_lite import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model started loading before the output path was checked")

    for name in ("resolve_model_path", "load_model", "load_tokenizer"):
        monkeypatch.setattr(models, name, refuse)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_out_under_a_plain_file_is_one_line(folder, capsys, no_model_load, command):
    (folder / "file").write_text("x")
    line = _one_line_exit_2(_argv(command, "file"), capsys, folder)
    assert line.endswith(": 'file' is not a folder") and "file/" in line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_out_naming_the_wrong_kind_of_path_is_one_line(folder, capsys, no_model_load, command):
    (folder / "d").mkdir()
    (folder / "d" / "taken").write_text("x")
    (folder / "d" / "r.jsonl").mkdir()
    (folder / "d" / "w.jsonl").mkdir()
    argv = _argv(command, "d")
    if command not in ("rollout", "weight"):  # a folder expected: name an existing file instead
        argv[argv.index(next(w for w in argv if w.startswith("d/")))] = "d/taken"
    line = _one_line_exit_2(argv, capsys, folder)
    expected = "is a directory" if command in ("rollout", "weight") else "d/taken: exists and is not a folder"
    assert expected in line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_out_in_a_read_only_folder_is_one_line(folder, capsys, monkeypatch, no_model_load, command):
    import errno
    import os

    readonly = folder / "ro"
    readonly.mkdir()
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if str(os.path.abspath(path)).startswith(str(readonly)) and flags & (os.O_CREAT | os.O_WRONLY):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    line = _one_line_exit_2(_argv(command, "ro"), capsys, folder)
    assert "Read-only file system" in line and "ro" in line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_out_on_a_full_disk_is_one_line(folder, capsys, monkeypatch, no_model_load, command):
    import errno
    import os

    (folder / "full").mkdir()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    line = _one_line_exit_2(_argv(command, "full"), capsys, folder)
    assert "No space left on device" in line and "full" in line
    assert [p.name for p in (folder / "full").iterdir()] == []  # the probe file is gone


def test_an_os_error_after_the_checks_is_one_line_naming_the_path(folder, capsys, monkeypatch):
    import errno
    import os

    from drift_lite import reporting

    def broken_disk(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO), "out/plots/loss.png")

    monkeypatch.setattr(reporting, "write_plots", broken_disk)
    code = cli.main(["report", ".", "--out", "out"])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert captured.err == "drift-lite: error: out/plots/loss.png: Input/output error\n"


def test_eval_set_name_escaping_out_is_one_line_and_writes_nothing(folder, capsys, no_model_load):
    sets = 'eval.sets=[{"task": "toy", "size": 2, "name": "reference/../../../../ESCAPE"}]'
    (folder / "a" / "b").mkdir(parents=True)
    line = _one_line_exit_2(["eval", "recipe.yaml", sets, "--out", "a/b/out"], capsys, folder)
    assert "ESCAPE" in line
    assert not list(folder.parent.glob("ESCAPE*")) and not list(folder.glob("ESCAPE*"))


def test_eval_with_an_adapter_of_another_base_is_one_line_before_any_output(folder, capsys):
    adapter = folder / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "base_model_name_or_path": str(folder / "another-model"), "r": 4}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    line = _one_line_exit_2(["eval", "recipe.yaml", "--adapter", "adapter", "--out", "out"], capsys, folder)
    assert "holds an adapter for base model" in line and "another-model" in line


def test_a_write_error_without_a_path_names_the_output(folder, capsys, monkeypatch):
    import errno
    import os

    import drift_lite

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write() on an open file raises

    monkeypatch.setattr(drift_lite, "rollout", full_disk)
    code = cli.main(["rollout", "recipe.yaml", "--out", "r.jsonl"])
    assert code == 2
    assert capsys.readouterr().err == "drift-lite: error: r.jsonl: No space left on device\n"


def test_a_reader_that_stops_early_gets_no_error_line():
    """`drift-lite check toy | true`: the closed pipe ends the command quietly, as a Unix tool does."""
    import shutil
    import subprocess

    exe = shutil.which("drift-lite", path=os.path.dirname(sys.executable))
    assert exe is not None
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; '{exe}' check toy | true; echo rc=$?"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "error" not in done.stderr.lower() and "Traceback" not in done.stderr
    assert done.stdout.strip() == "rc=141"  # 128 + SIGPIPE
