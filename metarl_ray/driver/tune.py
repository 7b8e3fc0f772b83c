"""``metarl tune FILE``: Ray Tune searches around the same training loop as ``metarl train``.

A search file (YAML) holds:
    name: experiment name                   storage_path: where Tune keeps it (default ray_results)
    base: {flag: value, ...}                settings shared by every trial (flag names of metarl train)
    search_space: {flag: {grid|choice: [...]} | {uniform|loguniform: [low, high]}}
    scheduler: {type: fifo|asha|pbt, ...}   asha: max_t, grace_period, reduction_factor;
                                            pbt: perturbation_interval, hyperparam_mutations {flag: spec}
    metric: post_adapt/success              mode: max|min
    num_samples: 1                          max_failures: 2
    resources_per_trial: {rollout_workers: 2, gpu: 0}
Each trial reports every iteration and hands Tune a checkpoint every ``checkpoint_every`` iterations;
a failed trial restarts from its latest checkpoint (``max_failures``), and PBT restarts a trial from
another's checkpoint with perturbed ``inner_lr``/``meta_lr``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metarl_ray.config import (
    FIELD_SECTION,
    URI_SCHEMES,
    ConfigError,
    TrainConfig,
    build_config,
    merge_overrides,
    uri_scheme,
)
from metarl_ray.driver.trainer import train
from metarl_ray.envs import env_family
from metarl_ray.training.checkpoint import load_checkpoint, resolve_checkpoint
from metarl_ray.training.storage import StoragePath

logger = logging.getLogger(__name__)
SPACE_KINDS = ("grid", "choice", "uniform", "loguniform")
SCHEDULERS = ("fifo", "asha", "pbt")
BEST_FILE = "best_trial.json"


class TuneSpecError(ConfigError):
    """A mistake in a search file; its message is one line."""


class TuneInterrupted(RuntimeError):
    """The experiment stopped before every trial finished; ``--resume`` continues it."""


@dataclass(frozen=True)
class TuneSpec:
    name: str
    base: dict[str, Any]
    search_space: dict[str, dict[str, list[Any]]]
    scheduler: dict[str, Any]
    metric: str = "post_adapt/success"
    mode: str = "max"
    num_samples: int = 1
    max_failures: int = 2
    rollout_workers: int = 1
    gpus: float = 0.0
    storage_path: str = "ray_results"
    source: str = field(default="", compare=False)
    source_path: str = field(default="", compare=False)

    @property
    def experiment_path(self) -> StoragePath:
        """Where Tune keeps the experiment: an absolute local path, or a URI on shared storage."""
        return StoragePath.parse(self.storage_path).resolve() / self.name


def _fail(source: str, key: str, value: Any, allowed: str) -> None:
    raise TuneSpecError(f"{source}: {key}={value!r}: {allowed}")


def _check_space(source: str, where: str, space: Any) -> dict[str, list[Any]]:
    if not isinstance(space, dict) or len(space) != 1 or next(iter(space)) not in SPACE_KINDS:
        _fail(source, where, space, f"expected one of {{{', '.join(SPACE_KINDS)}: ...}}")
    kind, values = next(iter(space.items()))
    if not isinstance(values, list) or not values:
        _fail(source, where, space, "expected a non-empty list")
    if kind in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or not values[0] < values[1]:
            _fail(source, where, space, f"{kind} expects [low, high] with low < high")
        if kind == "loguniform" and values[0] <= 0:
            _fail(source, where, space, "loguniform expects low > 0")
    return {kind: values}


def _settings_and_space(source: str, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The base settings and the search space, every key a metarl train setting."""
    base = dict(data.get("base") or {})
    space = {
        key: _check_space(source, f"search_space.{key}", value)
        for key, value in (data.get("search_space") or {}).items()
    }
    for key in list(base) + list(space):
        if key not in FIELD_SECTION:
            _fail(source, key, base.get(key, space.get(key)), "not a metarl train setting")
    return base, space


def _scheduler_spec(source: str, data: dict[str, Any]) -> dict[str, Any]:
    scheduler = dict(data.get("scheduler") or {"type": "fifo"})
    if scheduler.get("type") not in SCHEDULERS:
        _fail(source, "scheduler.type", scheduler.get("type"), f"expected one of {', '.join(SCHEDULERS)}")
    for key, value in (scheduler.get("hyperparam_mutations") or {}).items():
        if key not in FIELD_SECTION:
            _fail(source, f"scheduler.hyperparam_mutations.{key}", value, "not a metarl train setting")
        _check_space(source, f"scheduler.hyperparam_mutations.{key}", value)
    return scheduler


def load_tune_spec(path: str | Path, storage_path: str | None = None) -> TuneSpec:
    """Parse and validate a search file; every trial's config is checked before Tune starts.
    ``storage_path`` (``metarl tune --storage_path``) overrides the file's."""
    path = Path(path)
    source = path.name
    if not path.is_file():
        raise TuneSpecError(f"{path}: expected an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise TuneSpecError(f"{source}: not valid YAML") from None
    allowed = {
        "name",
        "base",
        "search_space",
        "scheduler",
        "metric",
        "mode",
        "num_samples",
        "max_failures",
        "resources_per_trial",
        "storage_path",
    }
    for key in data:
        if key not in allowed:
            _fail(source, key, data[key], f"unknown key; allowed: {', '.join(sorted(allowed))}")
    base, space = _settings_and_space(source, data)
    scheduler = _scheduler_spec(source, data)
    resources = dict(data.get("resources_per_trial") or {})
    spec = TuneSpec(
        name=str(data.get("name") or path.stem),
        base=base,
        search_space=space,
        scheduler=scheduler,
        metric=str(data.get("metric", "post_adapt/success")),
        mode=str(data.get("mode", "max")),
        num_samples=data.get("num_samples", 1),
        max_failures=data.get("max_failures", 2),
        rollout_workers=resources.get("rollout_workers", 1),
        gpus=resources.get("gpu", 0),
        storage_path=str(storage_path or data.get("storage_path", "ray_results")),
        source=source,
        source_path=str(path),
    )
    if uri_scheme(spec.storage_path) not in ("",) + URI_SCHEMES:
        _fail(
            source,
            "storage_path",
            spec.storage_path,
            f"expected a path or a URI with one of the schemes {', '.join(URI_SCHEMES)}",
        )
    if spec.mode not in ("max", "min"):
        _fail(source, "mode", spec.mode, "expected max or min")
    # A learner on a GPU takes one whole GPU, and a trial's bundle is sized from the base settings.
    if spec.gpus not in (0, 1) or isinstance(spec.gpus, bool):
        _fail(source, "resources_per_trial.gpu", spec.gpus, "expected 0 or 1 (GPUs per learner)")
    searched = set(space) | set(scheduler.get("hyperparam_mutations") or {})
    if spec.gpus and "num_learners" in searched:
        _fail(
            source,
            "search_space.num_learners",
            "searched",
            "expected num_learners in base when gpu is 1 (it sizes the trial's GPUs)",
        )
    for key, value, low in (
        ("num_samples", spec.num_samples, 1),
        ("max_failures", spec.max_failures, 0),
        ("resources_per_trial.rollout_workers", spec.rollout_workers, 1),
    ):
        if not isinstance(value, int) or value < low:
            _fail(source, key, value, f"expected an integer >= {low}")
    for sample in _corner_configs(spec):  # every value a trial can get must make a valid config
        trial_config(spec, sample)
    return spec


def _corner_configs(spec: TuneSpec) -> list[dict[str, Any]]:
    spaces = {**spec.search_space, **(spec.scheduler.get("hyperparam_mutations") or {})}
    corners = []
    for key, space in spaces.items():
        for value in next(iter(space.values())):
            corners.append({key: value})
    return corners or [{}]


def trial_config(spec: TuneSpec, sampled: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of one trial: base settings, then the sampled ones, then Tune's own placement."""
    flat = {
        **spec.base,
        **sampled,
        "num_rollout_workers": spec.rollout_workers,
        "device": "cuda" if spec.gpus > 0 else "cpu",
    }
    if spec.scheduler.get("type") == "pbt":  # PBT exploits from checkpoints: one at every perturbation
        flat["checkpoint_every"] = spec.scheduler.get("perturbation_interval", flat.get("checkpoint_every", 10))
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        overrides.setdefault(FIELD_SECTION[key], {})[key] = value
    if flat.get("test_mode"):
        from metarl_ray.config import TEST_MODE_OVERRIDES

        overrides = merge_overrides(TEST_MODE_OVERRIDES, overrides)
    try:
        config = build_config(overrides)
        env_family(config.env).check(config.env)
        return config
    except ValueError as error:
        raise TuneSpecError(f"{spec.source}: {error}") from None


def _search_space(spec: TuneSpec) -> dict[str, Any]:
    from ray import tune

    builders = {
        "grid": tune.grid_search,
        "choice": tune.choice,
        "uniform": lambda v: tune.uniform(*v),
        "loguniform": lambda v: tune.loguniform(*v),
    }
    return {key: builders[kind](values) for key, space in spec.search_space.items() for kind, values in space.items()}


def _scheduler(spec: TuneSpec) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    options = {k: v for k, v in spec.scheduler.items() if k != "type"}
    if spec.scheduler["type"] == "asha":
        return ASHAScheduler(time_attr="training_iteration", **options)
    if spec.scheduler["type"] == "pbt":
        mutations = {
            key: (
                tune.loguniform(*values)
                if kind == "loguniform"
                else tune.uniform(*values)
                if kind == "uniform"
                else list(values)
            )
            for key, space in options.pop("hyperparam_mutations", {}).items()
            for kind, values in space.items()
        }
        return PopulationBasedTraining(time_attr="training_iteration", hyperparam_mutations=mutations, **options)
    return FIFOScheduler()


def make_trainable(spec: TuneSpec):
    """The function trainable: ``metarl train``'s loop, reporting to Tune and resuming from its checkpoints."""
    from ray import tune

    def trainable(sampled: dict[str, Any]) -> None:
        config = trial_config(spec, sampled)
        run_path = Path(tune.get_context().get_trial_dir()) / "run"
        checkpoint = tune.get_checkpoint()
        resume_from = None
        if checkpoint is None and run_path.exists():
            shutil.rmtree(run_path)  # an earlier attempt of this trial that failed before any checkpoint
        if checkpoint is not None:  # a restart after a failure, a PBT exploit, or Tuner.restore
            restored = Path(tempfile.mkdtemp(prefix="metarl-restore-"))
            resume_from = resolve_checkpoint(checkpoint.to_directory(str(restored)))

        def report(metrics: dict[str, float], checkpoint_path: StoragePath | None) -> None:
            clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
            if checkpoint_path is None:
                tune.report(clean)
                return
            with tempfile.TemporaryDirectory() as directory:
                # Tune copies the directory into the experiment's storage before report returns.
                target = Path(directory) / checkpoint_path.name
                target.write_bytes(checkpoint_path.read_bytes())
                sidecar = checkpoint_path.with_name(checkpoint_path.name + ".sha256")
                if sidecar.is_file():
                    (Path(directory) / sidecar.name).write_bytes(sidecar.read_bytes())
                tune.report(clean, checkpoint=tune.Checkpoint.from_directory(directory))

        if resume_from is not None:
            state = load_checkpoint(resume_from)
            if int(state["iteration"]) >= config.run.num_epochs:
                # PBT made this trial a clone of one that had already finished: nothing is left to train,
                # so report where the clone stands, or the trial would end on its stale pre-exploit result.
                # "done" ends the trial on this report; without it synchronous PBT exploits on every
                # report and would restart the clone forever.
                report(
                    {**(state.get("metrics") or {}), "iteration": int(state["iteration"]), "done": True}, resume_from
                )
                return
        train(config, run_path, resume_from, on_iteration=report)

    # One bundle for the trial's driver (it waits while others work), one CPU per rollout actor; the
    # learners ask for no CPU and, with gpu: 1, one GPU each. Actors a trial creates are
    # placed inside its placement group, so trials never take each other's cores.
    bundles = [{"CPU": 0.01}] + [{"CPU": 1.0} for _ in range(spec.rollout_workers)]
    if spec.gpus > 0:
        bundles[0]["GPU"] = spec.gpus * int(spec.base.get("num_learners", 1))
    return tune.with_resources(trainable, tune.PlacementGroupFactory(bundles))


class _StopSignalWatch(logging.Handler):
    """Notices Tune's own Ctrl-C handling (it ends fit() normally and only logs the stop)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.stopped = False

    def emit(self, record: logging.LogRecord) -> None:
        self.stopped |= record.getMessage().startswith("Stop signal received")


def _progress_callback(spec: TuneSpec) -> Any:
    """Tune's driver-side hook into ``progress.py``: a live bar of trial iterations on a terminal
    (total grows as trials start), log lines every 30 s elsewhere; beside Tune's own trial table."""
    from ray import tune

    from metarl_ray.training.progress import Progress

    class TuneProgress(tune.Callback):
        def __init__(self) -> None:
            self.progress = Progress(0, "it", f"tune {spec.name}")

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.progress.add_to_total(trial_config(spec, trial.config).run.num_epochs)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            best = max(
                (t.last_result.get(spec.metric, float("-inf")) for t in trials if t.last_result), default=float("nan")
            )
            self.progress.update(
                1,
                trials=len(trials),
                steps=int(result.get("rollout/env_steps_total", 0)),
                **{f"best_{spec.metric.split('/')[-1]}": f"{best:.2f}"},
            )

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self.progress.close()

    return TuneProgress()


def run_tune(spec: TuneSpec, resume: bool) -> dict[str, Any]:
    """Run (or with ``resume`` continue) the experiment; returns and writes the best trial."""
    from ray import tune

    trainable = make_trainable(spec)
    if resume:
        if not tune.Tuner.can_restore(str(spec.experiment_path)):
            raise TuneSpecError(f"--resume: no experiment to restore at {spec.experiment_path}")
        tuner = tune.Tuner.restore(
            str(spec.experiment_path), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        if spec.experiment_path.exists():
            raise TuneSpecError(
                f"{spec.source}: {spec.experiment_path} already exists; pass --resume to continue it or change name"
            )
        tuner = tune.Tuner(
            trainable,
            param_space=_search_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples, scheduler=_scheduler(spec)
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=str(spec.experiment_path.parent),
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                callbacks=[_progress_callback(spec)],
            ),
        )
    watch = _StopSignalWatch()
    tune_logger = logging.getLogger("ray.tune.tune")
    tune_logger.addHandler(watch)
    try:
        results = tuner.fit()
    finally:
        tune_logger.removeHandler(watch)
    if watch.stopped:  # Tune saved the experiment's state on the way out, so --resume continues it
        raise TuneInterrupted(
            f"experiment {spec.experiment_path} was stopped before it finished; "
            f"continue it with: metarl tune {spec.source_path} --resume"
        )
    best = results.get_best_result(metric=spec.metric, mode=spec.mode, scope="last")
    summary = {
        "experiment": str(spec.experiment_path),
        "metric": spec.metric,
        "mode": spec.mode,
        "best_config": best.config,
        "best_metrics": {k: v for k, v in (best.metrics or {}).items() if isinstance(v, (int, float, str))},
        "best_trial_path": best.path,
        "num_trials": len(results),
        "num_errors": results.num_errors,
    }
    (spec.experiment_path / BEST_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
