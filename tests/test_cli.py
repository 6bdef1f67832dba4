"""The `drift-lite` command on bad input: exit code 2, one line on stderr, no traceback, nothing written."""

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
