"""`drift-lite compare`: methods × seeds, resumable, results computed by hand on hand-made run folders."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_TOY_RUN

from drift_lite import compare as compare_mod
from drift_lite.compare import compare, load_spec, method_recipe, write_results
from drift_lite.errors import UserError
from drift_lite.files import read_json
from drift_lite.metrics import recompute_matches
from drift_lite.recipe import dump_recipe, load_recipe

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "recipes" / "toy"
DRIFT = TOY / "drift.yaml"

# (method, seed) -> (multi@1, multi@5) of the trained model; the reference model scores 0.3 / 0.6.
SCORES = {
    ("drift", 0): (0.5, 0.8),
    ("drift", 1): (0.6, 0.9),
    ("drift", 2): (0.7, 0.85),
    ("sft", 0): (0.4, 0.7),
    ("sft", 1): (0.5, 0.8),
    ("sft", 2): (0.5, 0.9),
    ("online", 0): (0.5, 0.9),
    ("online", 1): (0.5, 0.84),
    ("online", 2): (0.6, 0.88),
}
# multi@5 of the online curve at iterations 0, 5, 10, 15 (generated tokens 0/500/1000/1500, wall 0/20/40/60 s)
CURVES = {0: [0.6, 0.8, 0.86, 0.9], 1: [0.6, 0.84, 0.8, 0.84], 2: [0.6, 0.85, 0.87, 0.88]}


def _metrics(m1: float, m5: float) -> dict:
    mid = [m1 + (m5 - m1) * i / 4 for i in range(5)]
    return {
        "n": 100,
        **{f"multi@{k}": mid[k - 1] for k in range(1, 6)},
        "per_turn": [m1, 0.25, 0.2, 0.1, None],
        "correction_rate": (m5 - m1) / (1 - m1),
        "repeat_rate": 0.1,
        "format_error_rate": 0.05,
        "mean_turns": 2.0,
    }


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


class StubRunner:
    """Writes a run folder laid out as pipeline.run leaves it, with the scores above; records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool, bool]] = []  # (method, seed, force, rollout already there)

    def __call__(self, recipe, out_dir, *, recipe_path=None, force=False, show_progress=True) -> Path:
        root = Path(out_dir)
        method = recipe.name.removeprefix("m-")
        seed = recipe.seed
        shared = (root / "rollouts.jsonl").exists()
        self.calls.append((method, seed, force, shared))
        if root.exists() and not (root / "run.json").exists() and not force:
            raise UserError(f"{root}: not empty and not a drift-lite run")
        root.mkdir(parents=True, exist_ok=True)
        _write(root / "run.json", {"recipe": recipe.name})
        dump_recipe(recipe, root / "recipe.yaml")
        timings = read_json(root / "timings.json") or {}
        if method == "online":
            timings["online-train"] = {
                "seconds": 200.0,
                "generated_tokens": 20000,
                "train_tokens": 40000,
                "steps": 20,
            }
            rows = [
                {
                    "iteration": 5 * i,
                    "generated_tokens": 500 * i,
                    "wall_s": 20.0 * i,
                    "multi@5": v,
                    "mean_reward": 0.1,
                }
                for i, v in enumerate(CURVES[seed])
            ]
            (root / "online").mkdir(exist_ok=True)
            (root / "online" / "curve.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows) + '{"iter'
            )
        else:
            if not shared:
                (root / "rollouts.jsonl").write_text(f"rollout of {method} seed {seed}\n")
                (root / "rollouts.jsonl.settings.json").write_text("{}")
                (root / ".stamps").mkdir(exist_ok=True)
                (root / ".stamps" / "rollout.json").write_text('{"key": "k", "complete": true}')
                timings["rollout"] = {"seconds": 10.0, "generated_tokens": 1000, "prompts": 4}
            timings["weight"] = {"seconds": 1.0, "rows": 32}
            timings["train"] = {
                "seconds": 30.0 + seed,
                "train_tokens": 5000,
                "target_tokens": 900,
                "steps": 12,
            }
        if (
            "eval-reference" not in timings
        ):  # pipeline.run skips a shared reference evaluation of equal settings
            timings["eval-reference"] = {"seconds": 2.0, "generated_tokens": 100}
            (root / ".stamps").mkdir(exist_ok=True)
            (root / ".stamps" / "eval-reference.json").write_text('{"key": "e", "complete": true}')
        timings["eval-trained"] = {"seconds": 3.0, "generated_tokens": 100}
        _write(root / "timings.json", timings)
        _write(root / "eval-reference" / "eval-toy.json", _metrics(0.3, 0.6))
        _write(root / "eval-trained" / "eval-toy.json", _metrics(*SCORES[(method, seed)]))
        (root / "report.md").write_text("report\n")
        return root / "report.md"


def _spec(tmp_path: Path, sft_overrides: tuple[str, ...] = ()) -> Path:
    spec = {
        "seeds": [0, 1, 2],
        "reference_method": "drift",
        "overrides": ["task.size=8"],
        "methods": {
            "drift": {"recipe": str(DRIFT), "overrides": ["name=m-drift"], "label": "DRIFT"},
            "sft": {
                "recipe": str(DRIFT),
                "overrides": ["name=m-sft", "weights.scheme=uniform", *sft_overrides],
            },
            "online": {"recipe": str(DRIFT), "overrides": ["name=m-online", "algorithm=online_rl"]},
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def done(tmp_path):
    """A finished comparison of the stub runner: (spec path, out folder, runner, results.json)."""
    runner = StubRunner()
    spec = _spec(tmp_path)
    out = tmp_path / "cmp"
    md = compare(spec, out, show_progress=False, runner=runner)
    assert md == out / "results.md"
    return spec, out, runner, json.loads((out / "results.json").read_text())


def test_results_are_the_means_and_sds_over_seeds(done):
    _, out, _, results = done
    drift = results["methods"]["drift"]
    assert drift["per_seed"]["multi@5"] == [0.8, 0.9, 0.85]
    assert drift["summary"]["multi@5"]["mean"] == pytest.approx(0.85)
    assert drift["summary"]["multi@5"]["sd"] == pytest.approx(0.05)  # sample sd of 0.8, 0.9, 0.85
    assert drift["summary"]["multi@1"]["mean"] == pytest.approx(0.6)
    assert drift["summary"]["multi@1"]["sd"] == pytest.approx(0.1)
    assert drift["per_turn"]["summary"][0]["mean"] == pytest.approx(0.6)
    assert drift["per_turn"]["summary"][4]["mean"] is None  # no row active at turn 5
    assert results["reference_model"]["summary"]["multi@5"] == {"mean": pytest.approx(0.6), "sd": 0.0, "n": 3}
    assert drift["runs"] == ["runs/drift-s0", "runs/drift-s1", "runs/drift-s2"]
    md = (out / "results.md").read_text()
    assert "| DRIFT | 0.600 ± 0.100 | 0.850 ± 0.050 | 0.800 / 0.900 / 0.850 |" in md
    assert (out / "plots" / "multi_at_k.png").stat().st_size > 1000
    assert (out / "plots" / "online-online.png").stat().st_size > 1000


def test_paired_differences_have_the_hand_computed_standard_error(done):
    _, out, _, results = done
    paired = results["methods"]["sft"]["paired"]["multi@5"]
    # sft − drift per seed: −0.1, −0.1, +0.05; mean −0.05;
    # sd √((0.05² + 0.05² + 0.1²)/2) = √0.0075; se = sd/√3
    assert paired["per_seed"] == pytest.approx([-0.1, -0.1, 0.05])
    assert paired["mean"] == pytest.approx(-0.05)
    assert paired["se"] == pytest.approx(math.sqrt(0.0075) / math.sqrt(3))
    assert paired["se"] == pytest.approx(0.05)
    assert "drift" not in results["cost_ratio"]
    # multi@1: −0.1, −0.1, −0.2 → −0.133 ± 0.033
    assert "| sft | -0.133 ± 0.033 | -0.050 ± 0.050 |" in (out / "results.md").read_text()


def test_cost_is_summed_over_training_stages_and_shared_rollouts_are_charged(done):
    _, out, runner, results = done
    cost = results["methods"]["drift"]["cost"]
    assert cost["train_seconds"]["mean"] == pytest.approx(42.0)  # rollout 10 + weight 1 + train 30+seed
    assert cost["generated_tokens"]["mean"] == 1000
    assert cost["train_tokens"]["mean"] == 5000 and cost["steps"]["mean"] == 12
    assert cost["stage_seconds"]["train"]["mean"] == pytest.approx(31.0)
    assert cost["eval_seconds"]["mean"] == pytest.approx(5.0)
    # sft differs from drift only in its weights: it started with drift's rollout of the same seed
    assert [c for c in runner.calls if c[0] == "sft"] == [("sft", s, True, True) for s in (0, 1, 2)]
    assert [c[3] for c in runner.calls if c[0] != "sft"] == [False] * 6
    sft = out / "runs" / "sft-s1"
    assert (sft / "rollouts.jsonl").read_text() == "rollout of drift seed 1\n"
    assert read_json(sft / "timings.json")["rollout"]["shared_from"] == "drift-s1"
    sft_cost = results["methods"]["sft"]["cost"]
    assert sft_cost["generated_tokens"]["mean"] == 1000 and sft_cost["shared"] == [
        "eval-reference",
        "rollout",
    ]
    online = results["methods"]["online"]["cost"]
    assert online["train_seconds"]["mean"] == 200.0 and online["generated_tokens"]["mean"] == 20000


def test_cost_ratio_by_hand(done):
    _, out, _, results = done
    ratio = results["cost_ratio"]["online"]
    assert ratio["target"] == pytest.approx(0.85)  # DRIFT's mean multi@5
    seed0, seed1, seed2 = ratio["per_seed"]
    # seed 0 first reaches 0.85 at iteration 10 (0.86): 1000 tokens, 40 s, over DRIFT's 1000 tokens and 42 s
    assert seed0 == {
        "reached": True,
        "iteration": 10,
        "multi@5": 0.86,
        "generated_tokens": 1000,
        "wall_s": 40.0,
        "token_ratio": 1.0,
        "wall_ratio": pytest.approx(40 / 42),
    }
    # seed 1 never does: its best point, the first 0.84 (iteration 5)
    assert (seed1["reached"], seed1["iteration"], seed1["token_ratio"]) == (False, 5, 0.5)
    assert (seed2["reached"], seed2["iteration"]) == (True, 5)
    assert ratio["reached"] == 2
    assert ratio["token_ratio"]["mean"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert ratio["wall_ratio"]["mean"] == pytest.approx((40 + 20 + 20) / 42 / 3)
    md = (out / "results.md").read_text()
    assert "Reached in 2 of 3 seeds" in md and "| 1 | no (best point) | 5 |" in md
    # the curve scored fewer problems (online.eval_size 64) than DRIFT's target's evaluation (100)
    assert "scored on the first 64 of the 100 evaluation problems" in md


def test_a_rerun_skips_finished_runs_and_redoes_changed_or_killed_ones(done, tmp_path):
    spec, out, _, _ = done
    again = StubRunner()
    compare(spec, out, show_progress=False, runner=again)
    assert again.calls == []
    # a run killed mid-way (the ledger says not done) is handed to the runner again, and only it
    ledger = read_json(out / compare_mod.LEDGER)
    ledger["drift-s1"]["done"] = False
    (out / compare_mod.LEDGER).write_text(json.dumps(ledger))
    compare(spec, out, show_progress=False, runner=again)
    assert [c[:2] for c in again.calls] == [("drift", 1)]
    # a changed method reruns that method's runs only
    again.calls.clear()
    compare(_spec(tmp_path, ("train.epochs=1",)), out, show_progress=False, runner=again)
    assert [c[:2] for c in again.calls] == [("sft", 0), ("sft", 1), ("sft", 2)]
    # a missing report means the run did not finish
    again.calls.clear()
    (out / "runs" / "online-s2" / "report.md").unlink()
    compare(_spec(tmp_path, ("train.epochs=1",)), out, show_progress=False, runner=again)
    assert [c[:2] for c in again.calls] == [("online", 2)]


def test_a_compare_killed_inside_a_run_resumes_it(tmp_path):
    class Killed(StubRunner):
        def __call__(self, recipe, out_dir, **kwargs):
            if (recipe.name, recipe.seed) == ("m-sft", 1):
                raise KeyboardInterrupt  # after the folder was seeded with drift-s1's rollout
            return super().__call__(recipe, out_dir, **kwargs)

    spec, out = _spec(tmp_path), tmp_path / "cmp"
    with pytest.raises(KeyboardInterrupt):
        compare(spec, out, show_progress=False, runner=Killed())
    assert (out / "runs" / "sft-s1" / "rollouts.jsonl").exists()
    again = StubRunner()
    compare(spec, out, show_progress=False, runner=again)
    # the seeded folder is compare's own (force), its shared rollout kept; the runs never started come after
    assert again.calls[0] == ("sft", 1, True, True)
    assert [c[:2] for c in again.calls[1:]] == [(m, 2) for m in ("drift", "online", "sft")]


def test_results_are_recomputable_from_the_run_folders(done):
    spec, out, _, results = done
    (out / "results.json").unlink()
    write_results(spec, out)
    again = json.loads((out / "results.json").read_text())
    assert again == results


def test_a_missing_evaluation_is_listed_not_averaged(done):
    spec, out, _, _ = done
    (out / "runs" / "sft-s2" / "eval-trained" / "eval-toy.json").unlink()
    write_results(spec, out)
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["sft"]["missing"] == ["runs/sft-s2"]
    assert results["methods"]["sft"]["summary"]["multi@5"]["mean"] == pytest.approx(0.75)
    assert results["methods"]["sft"]["paired"]["multi@5"]["per_seed"][2] is None
    assert "Missing evaluations" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"methods": {"a": {"recipe": "x.yaml"}}, "sedes": [0]}, "unknown key 'sedes'"),
        ({"methods": {"a": {"recipe": "x.yaml"}}, "reference_method": "b"}, "'b' is not one of the methods"),
        ({"methods": {"a": {"recipe": "x.yaml", "overide": []}}}, "unknown key 'overide'"),
        ({"methods": {"a b": {"recipe": "x.yaml"}}}, "method name 'a b'"),
        ({"methods": {"a": {"recipe": "x.yaml"}}, "seeds": [0, 0]}, "distinct integers"),
        ({"methods": {"a": {"recipe": "x.yaml", "overrides": "seed=1"}}}, "list of key=value"),
        ({"seeds": [0]}, "key 'methods'"),
    ],
)
def test_spec_mistakes_are_one_line_errors(tmp_path, body, message):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(UserError, match=message):
        load_spec(path)


def test_a_missing_recipe_is_a_user_error_before_anything_runs(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"methods": {"a": {"recipe": "nope.yaml"}}}))
    runner = StubRunner()
    with pytest.raises(UserError, match="recipe 'nope.yaml': no such file"):
        compare(path, tmp_path / "out", show_progress=False, runner=runner)
    assert runner.calls == [] and not (tmp_path / "out").exists()


# The keys each toy method recipe may change from drift.yaml (besides `name`).
METHOD_KEYS = {
    "sft-1turn.yaml": {("env", "max_turns"), ("weights", "scheme"), ("eval", "max_turns")},
    "sft-5turn.yaml": {("weights", "scheme")},
    "rft.yaml": {("weights", "scheme")},
    "drift-1turn.yaml": {("env", "max_turns"), ("eval", "max_turns")},
    "drift-gamma0.3.yaml": {("weights", "gamma")},
    "drift-beta0.05.yaml": {("weights", "beta")},
    "drift-beta0.3.yaml": {("weights", "beta")},
    "drift-beta1.0.yaml": {("weights", "beta")},
    "drift-target-all.yaml": {("train", "target")},
}


@pytest.mark.parametrize("name", sorted(METHOD_KEYS))
def test_toy_method_recipes_differ_from_drift_only_in_their_method_keys(name):
    base = load_recipe(DRIFT).to_dict()
    recipe = load_recipe(TOY / name).to_dict()
    changed = {
        (section, key)
        for section, values in recipe.items()
        if isinstance(values, dict)
        for key in values
        if values[key] != base[section][key]
    }
    assert changed == METHOD_KEYS[name]
    assert recipe["name"] == "toy-" + name.removesuffix(".yaml")


@pytest.mark.parametrize("spec_name", ["compare.yaml", "ablations.yaml"])
def test_toy_specs_load_and_name_every_method(spec_name):
    spec = load_spec(TOY / spec_name)
    assert len(spec.seeds) >= 3 and spec.reference_method == "drift"
    files = {Path(m.recipe).name for m in spec.methods}
    ablations = {n for n in METHOD_KEYS if n.startswith(("drift-gamma", "drift-beta", "drift-target"))}
    wanted = {"drift.yaml", *ablations}
    if spec_name == "compare.yaml":
        wanted |= {*METHOD_KEYS, "online-rl.yaml"}
    assert files == wanted
    for method in spec.methods:
        if Path(method.recipe).exists():  # online-rl.yaml comes from the online-RL baseline's branch
            assert method_recipe(spec, method, 1).seed == 1


@pytest.mark.slow
def test_two_methods_two_seeds_end_to_end(tmp_path):
    """The real `drift-lite run` behind compare, tiny toy settings: 2 methods × 2 seeds, then a resume."""
    small = [
        *TINY_TOY_RUN,
        "train.batch_size=4",
        "train.grad_accum=1",
        "train.epochs=1",
        "report.plots=false",
    ]
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "seeds": [0, 1],
                "overrides": small,
                "methods": {"drift": {"recipe": str(DRIFT)}, "sft": {"recipe": str(TOY / "sft-5turn.yaml")}},
            }
        )
    )
    out = tmp_path / "cmp"
    code = (
        "import sys; from drift_lite.compare import compare; "
        f"print(compare({str(spec)!r}, {str(out)!r}, show_progress=False))"
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DRIFT_LITE_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    first = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    log = out / "compare-log.txt"
    assert "sft-s0: rollout shared with drift-s0" in log.read_text()
    results = json.loads((out / "results.json").read_text())
    for name in ("drift", "sft"):
        for seed in (0, 1):
            root = out / "runs" / f"{name}-s{seed}"
            assert (
                recompute_matches(
                    root / "eval-trained" / "eval-toy.json", root / "eval-trained" / "eval-toy.jsonl"
                )
                == []
            )
            stored = json.loads((root / "eval-trained" / "eval-toy.json").read_text())
            assert results["methods"][name]["per_seed"]["multi@5"][seed] == stored["multi@5"]
        assert results["methods"][name]["cost"]["steps"]["mean"] > 0
    sft = out / "runs" / "sft-s1"
    assert (sft / "rollouts.jsonl").read_bytes() == (
        out / "runs" / "drift-s1" / "rollouts.jsonl"
    ).read_bytes()
    assert "[rollout] up to date, skipped" in (sft / "log.txt").read_text()
    before = log.read_text().splitlines()
    run_log = (out / "runs" / "drift-s0" / "log.txt").read_text()
    second = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    added = log.read_text().splitlines()[len(before) :]
    assert len(added) == 4 and all(line.endswith("finished, skipped") for line in added), added
    assert (out / "runs" / "drift-s0" / "log.txt").read_text() == run_log  # pipeline.run was not even called


def test_toy_compare_methods_share_rollouts_as_documented_and_one_evaluation():
    spec = load_spec(TOY / "compare.yaml")
    recipes = {m.name: method_recipe(spec, m, 0) for m in spec.methods if Path(m.recipe).exists()}
    keys = {name: compare_mod._rollout_key(r) for name, r in recipes.items()}
    five_turn = {
        n
        for n, r in recipes.items()
        if r.algorithm == "weighted_sft" and n not in ("sft-1turn", "drift-1turn")
    }
    assert len(five_turn) >= 8
    assert len({keys[n] for n in five_turn}) == 1  # DRIFT's rollout serves every 5-turn weighted-SFT method
    assert keys["sft-1turn"] == keys["drift-1turn"] != keys["drift"]
    # every method is evaluated on the same problems, the same way, over 5 turns
    evals = {
        name: {**r.to_dict()["eval"], "max_turns": r.eval.max_turns or r.env.max_turns}
        for name, r in recipes.items()
    }
    assert all(e == evals["drift"] for e in evals.values()) and evals["drift"]["max_turns"] == 5


def test_a_curve_that_never_reaches_the_target_uses_its_best_trained_point_not_the_reference():
    from drift_lite.compare_stats import cost_ratio

    curve = [  # iteration 0 is the reference itself: best here, but it trains nothing and costs nothing
        {"iteration": 0, "multi@5": 0.72, "generated_tokens": 0, "wall_s": 0.0},
        {"iteration": 4, "multi@5": 0.70, "generated_tokens": 400, "wall_s": 10.0},
        {"iteration": 8, "multi@5": 0.71, "generated_tokens": 800, "wall_s": 20.0},
    ]
    reference = {
        "summary": {"multi@5": {"mean": 0.85}},
        "cost": {"generated_tokens": {"mean": 1000}, "train_seconds": {"mean": 40.0}},
    }
    ratio = cost_ratio({"curves": [curve]}, reference, 5)
    (seed,) = ratio["per_seed"]
    assert (seed["reached"], seed["iteration"], seed["token_ratio"], seed["wall_ratio"]) == (
        False,
        8,
        0.8,
        0.5,
    )


@pytest.mark.parametrize(
    ("spec_path", "method", "expected"),
    [
        (TOY / "online-rl-sweep.yaml", "kl0", {"online.kl_coef": 0.0}),
        (TOY.parent / "cpu" / "smollm2-choice-compare.yaml", "drift-controls", {"weights.max_weight": 4.0}),
    ],
)
def test_the_other_packaged_specs_resolve_every_method(spec_path, method, expected):
    spec = load_spec(spec_path)
    recipes = {m.name: method_recipe(spec, m, spec.seeds[-1]) for m in spec.methods}
    assert all(r.seed == spec.seeds[-1] for r in recipes.values())
    for key, value in expected.items():
        section, name = key.split(".")
        assert getattr(getattr(recipes[method], section), name) == value
    assert spec.reference_method in recipes
