"""`drift-lite run`: rollout → weight → train → eval (reference and trained) → report in one run directory.

Each step records a stamp (a hash of the settings and upstream stamps it depends on). On a rerun a step whose
stamp matches and is complete is skipped; one that was killed resumes; one whose settings changed is redone,
and so is everything downstream of it. With `processes=N` > 1 the rollout, training and evaluation steps run
in N local processes (`drift_lite.processes`; online RL's training stays in this one); their outputs are the
same files.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drift_lite.errors import UserError
from drift_lite.files import exclusive_lock, read_json, remove_stale_temps, settings_hash, write_json_atomic
from drift_lite.recipe import Recipe, dump_recipe


@dataclass
class Step:
    """One stage of a run: what it depends on, what it writes, how to run it."""

    name: str
    key: dict
    outputs: list[Path]
    fn: Callable[[bool], dict]  # fn(resume) -> stats ({"generated_tokens"?, ...})
    depends: tuple[str, ...] = ()  # earlier steps whose outputs this one reads
    complete: Callable[[], bool] | None = None  # whether the outputs are whole (default: they all exist)

    def is_complete(self) -> bool:
        """Whether this step's outputs are all there and whole."""
        if not all(p.exists() for p in self.outputs):
            return False
        return self.complete is None or bool(self.complete())


class RunDir:
    """Stamps, timings and the log of one run directory."""

    def __init__(self, root: Path) -> None:
        """Open (creating `.stamps/`) the run directory `root`."""
        self.root = root
        self.stamps = root / ".stamps"
        self.stamps.mkdir(parents=True, exist_ok=True)

    def stamp(self, name: str) -> dict | None:
        """The stamp of step `name`, if any."""
        stamp = read_json(self.stamps / f"{name}.json")
        return stamp if isinstance(stamp, dict) else None

    def write_stamp(self, name: str, key_hash: str, complete: bool) -> None:
        """Record that step `name` started (complete=False) or finished with settings `key_hash`."""
        write_json_atomic(self.stamps / f"{name}.json", {"key": key_hash, "complete": complete})

    def log(self, message: str) -> None:
        """Append a timestamped line to log.txt and print it."""
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        with open(self.root / "log.txt", "a") as f:
            f.write(line + "\n")

    def record_timing(self, name: str, stats: dict) -> None:
        """Merge a step's wall time and token counts into timings.json."""
        path = self.root / "timings.json"
        timings = read_json(path)
        timings = timings if isinstance(timings, dict) else {}
        timings[name] = stats
        write_json_atomic(path, timings)


def execute(run_dir: RunDir, steps: list[Step]) -> None:
    """Run the steps in order, skipping complete ones and redoing those whose inputs changed."""
    hashes: dict[str, str] = {}
    for step in steps:
        key_hash = settings_hash({"key": step.key, "upstream": {d: hashes[d] for d in step.depends}})
        hashes[step.name] = key_hash
        old = run_dir.stamp(step.name) or {}
        same = old.get("key") == key_hash
        if same and old.get("complete") and step.is_complete():
            run_dir.log(f"[{step.name}] up to date, skipped")
            continue
        resume = same  # killed (or an output went missing) with these very settings: pick up where it was
        if not resume:
            for path in step.outputs:
                _remove(path)
        run_dir.write_stamp(step.name, key_hash, complete=False)
        run_dir.log(f"[{step.name}] {'resuming' if resume else 'running'}")
        start = time.perf_counter()
        try:
            stats = step.fn(resume) or {}
        except BaseException as exc:  # a kill -9 logs nothing; anything else says why the step stopped
            run_dir.log(f"[{step.name}] stopped: {_why(exc)}")
            raise
        # a resumed step's seconds cover only the part run now
        stats = {
            "seconds": round(time.perf_counter() - start, 3),
            **stats,
            **({"resumed": True} if resume else {}),
        }
        run_dir.record_timing(step.name, stats)
        run_dir.write_stamp(step.name, key_hash, complete=True)
        run_dir.log(f"[{step.name}] done in {stats['seconds']:.1f} s")


def run(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    recipe_path: str | None = None,
    force: bool = False,
    show_progress: bool = True,
    processes: int = 1,
) -> Path:
    """The whole method in `out_dir`, one writer at a time (a second process is refused); returns the report.
    `processes=N` > 1 runs rollout, training and evaluation in N local processes (`drift_lite.processes`).

    >>> run(load_recipe("recipes/toy/drift.yaml"), "runs/toy-drift")
    """

    from drift_lite import models
    from drift_lite.processes import check_devices, check_processes

    processes = check_processes(processes)
    root = Path(out_dir)
    # the model first: a name that is neither a local folder nor reachable fails before --out is touched
    models.resolve_model_path(recipe.model, recipe.toy)
    check_devices(recipe.model, processes)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: exists and is not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)  # `runs/` is not in a fresh clone
    except OSError as e:
        raise UserError(f"{root}: cannot create the run folder ({e.strerror or e})") from None
    with exclusive_lock(root):
        return _run_locked(
            recipe,
            root,
            recipe_path=recipe_path,
            force=force,
            show_progress=show_progress,
            processes=processes,
        )


def _run_locked(
    recipe: Recipe, root: Path, *, recipe_path: str | None, force: bool, show_progress: bool, processes: int
) -> Path:
    """`run` while this process holds the run folder's lock."""
    from drift_lite import models, versions
    from drift_lite import processes as procs
    from drift_lite.evaluation import eval_settings, evaluate, set_name
    from drift_lite.reporting import summary_lines, write_report
    from drift_lite.rollouts import is_complete as rollout_complete
    from drift_lite.rollouts import rollout, rollout_settings
    from drift_lite.training import is_complete as train_complete
    from drift_lite.training import train as train_step
    from drift_lite.weights import diagnostics_path, weight_file

    _claim(root, recipe, force)
    remove_stale_temps(root)
    run_dir = RunDir(root)
    dump_recipe(
        recipe, root / "recipe.yaml", extra={"recipe_file": recipe_path, **versions.package_versions()}
    )
    base: dict = {}

    def base_model() -> tuple:
        """The reference model and tokenizer, loaded once and shared by rollout and eval-reference."""
        if not base:
            path = models.resolve_model_path(recipe.model, recipe.toy)
            base["tokenizer"] = models.load_tokenizer(path, recipe.model)
            base["model"] = models.load_model(path, recipe.model)
        return base["model"], base["tokenizer"]

    # the children of `processes` read the recipe as this run wrote it (recipe.yaml, provenance as comments)
    recipe_file, logs = root / "recipe.yaml", root / "logs"

    def do_rollout(resume: bool) -> dict:
        """Sample the trajectories (rollout() resumes a partial file by itself)."""
        if processes > 1:
            stats = procs.rollout(recipe_file, root / "rollouts.jsonl", processes, logs, fresh=not resume)
            return {k: stats[k] for k in ("generated_tokens", "prompts")} | {"processes": processes}
        model, tokenizer = base_model()
        stats = rollout(
            recipe, root / "rollouts.jsonl", model=model, tokenizer=tokenizer, show_progress=show_progress
        )
        if "engine" in stats:
            run_dir.log(f"[rollout] engine: {_engine_line(stats['engine'])}")
        return {k: stats[k] for k in ("generated_tokens", "prompts", "engine") if k in stats}

    def do_weight(resume: bool) -> dict:
        """Returns and weights (rewritten whole: it takes a fraction of a second)."""
        diagnostics = weight_file(
            root / "rollouts.jsonl", root / "weighted.jsonl", recipe.weights, show_progress=show_progress
        )
        return {"rows": diagnostics.get("rows")}

    def do_train(resume: bool) -> dict:
        """Weighted SFT into adapter/ (resumes from its last complete checkpoint)."""
        base.clear()  # free the reference model while training
        if processes > 1:
            stats = procs.train(recipe_file, root / "weighted.jsonl", root / "adapter", processes, logs)
        else:
            stats = train_step(
                recipe, root / "weighted.jsonl", root / "adapter", resume=resume, show_progress=show_progress
            )
        # train_tokens: non-padding tokens the optimizer saw (all epochs, across resumes); target_tokens: the
        # supervised (unmasked) tokens of one epoch
        return {
            "train_tokens": stats.get("tokens_seen"),
            "target_tokens": stats.get("target_tokens"),
            "steps": stats.get("steps"),
            "resumed_from": stats.get("resumed_from"),
        }

    def do_eval(label: str, adapter: Path | None) -> Callable[[bool], dict]:
        """The step function evaluating the reference (adapter None) or reference + adapter."""

        def fn(resume: bool) -> dict:
            """Evaluate every eval set (from scratch: an evaluation is rewritten whole)."""
            if processes > 1:
                merged = procs.evaluate(recipe_file, root / f"eval-{label}", processes, logs, adapter)
                return {"generated_tokens": merged["generated_tokens"], "processes": processes}
            kwargs = {}
            if adapter is None:
                kwargs["model"], kwargs["tokenizer"] = base_model()
            results = evaluate(
                recipe,
                root / f"eval-{label}",
                adapter=str(adapter) if adapter else None,
                show_progress=show_progress,
                **kwargs,
            )
            return {"generated_tokens": sum(r["generated_tokens"] for r in results.values())}

        return fn

    data = recipe.to_dict()
    model_key = {"model": models.model_identity(recipe.model, recipe.toy)}
    # Rows do not depend on the batch they shared nor on the process that played them (per-trajectory seeds),
    # as for the rollout: changing the batch size or the process count reruns nothing.
    eval_key = eval_settings(recipe)
    rollouts, weighted, adapter = root / "rollouts.jsonl", root / "weighted.jsonl", root / "adapter"
    set_names = [set_name(s) for s in recipe.eval.sets]

    def evals_complete(label: str) -> Callable[[], bool]:
        """Whether eval-<label>/ holds eval-<set>.json and .jsonl for every set."""
        folder = root / f"eval-{label}"
        return lambda: all(
            (folder / f"eval-{n}{ext}").is_file() for n in set_names for ext in (".json", ".jsonl")
        )

    reference_eval = Step(
        "eval-reference",
        eval_key,
        [root / "eval-reference"],
        do_eval("reference", None),
        complete=evals_complete("reference"),
    )
    if recipe.algorithm == "online_rl":
        # the baseline: the current policy plays and a group-baseline policy gradient updates it, in one step
        from drift_lite import online

        def do_online(resume: bool) -> dict:
            """Online multi-turn RL into adapter/ (resumes from its last complete iteration)."""
            base.clear()  # free the reference model while training
            stats = online.train_online(recipe, root, show_progress=show_progress)
            return {
                "generated_tokens": stats.get("generated_tokens"),
                "train_tokens": stats.get("trained_tokens"),
                "steps": stats.get("steps"),
                "iterations": stats.get("iterations"),
                "resumed_from": stats.get("resumed_from"),
            }

        online_key = {"online": online.online_settings(recipe), **model_key}
        train_steps = [
            Step(
                "online-train",
                online_key,
                [adapter, root / "online"],
                do_online,
                complete=lambda: online.is_complete(root, recipe),
            )
        ]
        trained_after = "online-train"
    else:
        train_steps = [
            Step(
                "rollout",
                rollout_settings(recipe),
                [rollouts],
                do_rollout,
                complete=lambda: bool(rollout_complete(rollouts, recipe)),
            ),
            Step(
                "weight",
                {"weights": data["weights"]},
                [weighted],
                do_weight,
                ("rollout",),
                complete=lambda: Path(diagnostics_path(weighted)).is_file(),
            ),
            Step(
                "train",
                # train.batch_size is per process: the process count changes the global batch
                {"train": data["train"], **model_key, **({"processes": processes} if processes > 1 else {})},
                [adapter],
                do_train,
                ("weight",),
                complete=lambda: train_complete(adapter),
            ),
        ]
        trained_after = "train"
    trained_eval = Step(
        "eval-trained",
        eval_key,
        [root / "eval-trained"],
        do_eval("trained", adapter),
        (trained_after,),
        complete=evals_complete("trained"),
    )
    steps = [*train_steps, reference_eval, trained_eval]
    execute(run_dir, steps)
    report = write_report([root], root, plots=recipe.report.plots)
    run_dir.log(f"[report] {report}")
    summary = summary_lines(root)
    with open(root / "log.txt", "a") as f:
        f.write("".join(line + "\n" for line in summary))
    for line in summary:
        print(line)
    return report


def _claim(root: Path, recipe: Recipe, force: bool) -> None:
    """Refuse a folder that holds another recipe's run (unless forced); mark it as this recipe's."""
    marker = root / "run.json"
    if marker.exists():
        data = read_json(marker)
        owner = data.get("recipe") if isinstance(data, dict) else "<unreadable run.json>"
        if owner != recipe.name and not force:
            raise UserError(
                f"{root}: holds a run of recipe '{owner}', not '{recipe.name}' (use --force to reuse it)"
            )
    elif root.exists() and any(p.name != ".drift-lite.lock" for p in root.iterdir()) and not force:
        raise UserError(f"{root}: not empty and not a drift-lite run (use --force to use it anyway)")
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"recipe": recipe.name})


def _why(exc: BaseException) -> str:
    """`Type: first line of the message` of an exception, for the log."""
    text = str(exc).strip()
    return type(exc).__name__ + (f": {text.splitlines()[0]}" if text else "")


def _remove(path: Path) -> None:
    """Delete a step's output (file or folder) and its side files (`<name>.*.json`)."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    for side in path.parent.glob(path.name + ".*.json"):
        side.unlink()


def _engine_line(engine: object) -> str:
    """`turn (prefix_cache=False)`-style summary of the engine record a rollout returns."""
    if not isinstance(engine, dict):
        return str(engine)
    rest = ", ".join(f"{k}={v}" for k, v in engine.items() if k != "engine")
    return f"{engine.get('engine')} ({rest})" if rest else str(engine.get("engine"))
