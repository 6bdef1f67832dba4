"""The run orchestrator: skip complete steps, resume killed ones, redo what a changed setting touches."""

import pytest

from drift_lite.errors import UserError
from drift_lite.recipe import load_recipe
from drift_lite.run import RunDir, Step, _claim, execute


def _steps(tmp_path, calls, keys):
    def make(name):
        def fn(resume):
            calls.append((name, resume))
            (tmp_path / name).write_text("x")
            return {}

        return fn

    return [
        Step("a", {"k": keys["a"]}, [tmp_path / "a"], make("a")),
        Step("b", {"k": keys["b"]}, [tmp_path / "b"], make("b"), ("a",)),
        Step("c", {"k": keys["c"]}, [tmp_path / "c"], make("c")),
        Step("d", {"k": keys["d"]}, [tmp_path / "d"], make("d"), ("b",)),
    ]


def test_rerun_skips_and_changes_rerun_only_dependents(tmp_path, capsys):
    run_dir = RunDir(tmp_path)
    keys = {"a": 1, "b": 1, "c": 1, "d": 1}
    calls = []
    execute(run_dir, _steps(tmp_path, calls, keys))
    assert [c[0] for c in calls] == ["a", "b", "c", "d"]
    calls.clear()
    execute(run_dir, _steps(tmp_path, calls, keys))
    assert calls == []
    keys["b"] = 2
    execute(run_dir, _steps(tmp_path, calls, keys))
    assert calls == [("b", False), ("d", False)]
    calls.clear()
    keys["c"] = 2
    execute(run_dir, _steps(tmp_path, calls, keys))
    assert calls == [("c", False)]


def test_a_killed_step_resumes_and_a_missing_output_reruns(tmp_path):
    run_dir = RunDir(tmp_path)
    keys = {"a": 1, "b": 1, "c": 1, "d": 1}
    calls = []
    steps = _steps(tmp_path, calls, keys)

    def dies(resume):
        raise KeyboardInterrupt

    killed = [steps[0], Step("b", steps[1].key, steps[1].outputs, dies, ("a",))]
    with pytest.raises(KeyboardInterrupt):
        execute(run_dir, killed)
    calls.clear()
    execute(run_dir, _steps(tmp_path, calls, keys))
    assert calls == [("b", True), ("c", False), ("d", False)]
    calls.clear()
    (tmp_path / "c").unlink()
    execute(run_dir, _steps(tmp_path, calls, keys))
    assert calls == [("c", True)]


def test_a_run_dir_of_another_recipe_is_refused(tmp_path):
    root = tmp_path / "run"
    _claim(root, load_recipe(None, ["name=first"]), force=False)
    with pytest.raises(UserError, match="holds a run of recipe 'first'"):
        _claim(root, load_recipe(None, ["name=second"]), force=False)
    _claim(root, load_recipe(None, ["name=second"]), force=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "file").write_text("x")
    with pytest.raises(UserError, match="not a drift-lite run"):
        _claim(other, load_recipe(None), force=False)
