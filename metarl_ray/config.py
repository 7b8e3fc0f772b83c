"""Typed, frozen configuration: one small dataclass per concern.

Every field is validated in ``__post_init__``; a bad value raises :class:`ConfigError`, whose message
names the field (as its command-line flag), the value and what is allowed. The CLI prints that one
line and exits non-zero before anything is started or written.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from metarl_ray.registry import algorithm_names, get_builder

ML_BENCHMARKS = ("ML1", "ML10", "ML45")
MT_BENCHMARKS = ("MT1", "MT10", "MT50")
BENCHMARKS = ML_BENCHMARKS + MT_BENCHMARKS
# Goal sets a meta-test can run on: test (held-out classes; MT: the training goals) or train (the
# training classes on goals never trained on); evaluation/meta_test.py and the CLI share them.
EVAL_SPLITS = ("test", "train")


# URI schemes the storage layer opens through pyarrow.fs (kept here so config imports nothing from the package).
URI_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def uri_scheme(location: str) -> str:
    """'' for a plain path (a one-letter scheme is a Windows drive), else the URI scheme."""
    scheme = urlparse(location).scheme
    return scheme if len(scheme) > 1 else ""


def setting(default: Any, doc: str) -> Any:
    """A config field with its documentation (the CLI's help for its flag) in the field's metadata."""
    return field(default=default, metadata={"doc": doc})


def setting_doc(cls: type, name: str) -> str:
    """The documentation of field ``name`` of config section ``cls``."""
    return next(f.metadata.get("doc", "") for f in fields(cls) if f.name == name)


class ConfigError(ValueError):
    """A user-facing configuration mistake; its message is one line."""


def _check(condition: bool, flag: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"--{flag}={value!r}: {allowed}")


@dataclass(frozen=True)
class EnvConfig:
    benchmark: str = setting(
        "ML1", "Meta-World benchmark: ML1, ML10, ML45 (meta-learning) or MT1, MT10, MT50 (multi-task)."
    )
    task: str | None = setting("reach-v3", "Task class for ML1/MT1, e.g. reach-v3; ignored by the other benchmarks.")
    max_episode_length: int = setting(500, "Steps per episode (Meta-World's own horizon is 500).")
    reward_function_version: str = setting("v2", "Meta-World reward function version: v1 or v2.")
    fast_envs: bool = setting(
        True, "Step Meta-World through the verified fast path (bit-identical to stock); --no_fast_envs for stock."
    )
    validation_classes: str = setting(
        "",
        "ML10/ML45: comma-separated training classes left out of meta-training and meta-tested in place of the test "
        "classes, to choose settings without the test classes (e.g. drawer-close-v3,window-open-v3); empty: none.",
    )

    def __post_init__(self) -> None:
        _check(self.benchmark in BENCHMARKS, "benchmark", self.benchmark, f"expected one of {', '.join(BENCHMARKS)}")
        # The task name is Meta-World's to check (envs.metaworld.check_env_config): this module
        # imports nothing from the package.
        if self.benchmark in ("ML1", "MT1"):
            _check(
                isinstance(self.task, str) and bool(self.task),
                "task",
                self.task,
                "expected a task name such as reach-v3",
            )
        _check(
            1 <= self.max_episode_length <= 10_000,
            "max_episode_length",
            self.max_episode_length,
            "expected an integer in [1, 10000]",
        )
        _check(
            self.reward_function_version in ("v1", "v2"),
            "reward_function_version",
            self.reward_function_version,
            "expected v1 or v2",
        )
        _check(isinstance(self.fast_envs, bool), "fast_envs", self.fast_envs, "expected true or false")
        # Which names are training classes is Meta-World's to check (envs.metaworld.check_env_config).
        _check(
            not self.validation_classes or self.benchmark in ("ML10", "ML45"),
            "validation_classes",
            self.validation_classes,
            f"only ML10 and ML45 have training classes to leave out (benchmark {self.benchmark})",
        )
        names = self.validation_class_names
        _check(
            len(set(names)) == len(names) and all(names),
            "validation_classes",
            self.validation_classes,
            "expected distinct comma-separated class names such as drawer-close-v3,window-open-v3",
        )

    @property
    def is_meta_learning(self) -> bool:
        return self.benchmark in ML_BENCHMARKS

    @property
    def validation_class_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.validation_classes.split(",")) if self.validation_classes else ()


@dataclass(frozen=True)
class PolicyConfig:
    policy_type: str = setting(
        "mlp", "Policy family: mlp, ssm (diagonal state-space recurrence) or gru (the recurrent baseline)."
    )
    hidden_size: int = setting(
        128, "Width of each hidden layer (MLP), of the SSM blocks' channels, or of the GRU's state."
    )
    num_hidden_layers: int = setting(2, "Number of hidden layers of the MLP.")
    state_size: int = setting(64, "SSM: states per layer (diagonal state matrix size).")
    num_ssm_layers: int = setting(2, "SSM: number of residual SSM blocks.")
    ssm_scan: str = setting(
        "adjoint",
        "SSM: training scan over whole episodes: adjoint (graph-free passes, the adjoint recurrence as backward), "
        "chunked (closed form per chunk), reference (step loop) or doubling.",
    )
    init_log_std: float = setting(0.0, "Initial log standard deviation of the Gaussian action distribution.")
    num_encoder_layers: int = setting(
        1, "SSM and GRU: tanh layers of width hidden_size before the memory (Meta-World+'s RL² GRU: 2 at hidden 256)."
    )
    ssm_max_timescale: int | None = setting(
        None,
        "SSM: initial memory time scales. 0: S4D-Real (lambda_n = -(n + 1), dt log-uniform in [1e-3, 1e-1]: up to "
        "about 1,000 steps); N > 0: time constants 1/(dt |lambda|) log-spaced from 1 to N steps, so the slowest states"
        " keep their input across N steps. Default: 0 for maml_ppo, the trial length (episodes_per_trial x "
        "max_episode_length) for rl2.",
    )

    def __post_init__(self) -> None:
        _check(self.policy_type in ("mlp", "ssm", "gru"), "policy_type", self.policy_type, "expected mlp, ssm or gru")
        _check(1 <= self.state_size <= 4096, "state_size", self.state_size, "expected an integer in [1, 4096]")
        _check(1 <= self.num_ssm_layers <= 16, "num_ssm_layers", self.num_ssm_layers, "expected an integer in [1, 16]")
        _check(
            self.ssm_scan in ("adjoint", "reference", "doubling", "chunked"),
            "ssm_scan",
            self.ssm_scan,
            "expected adjoint, reference, doubling or chunked",
        )
        _check(1 <= self.hidden_size <= 8192, "hidden_size", self.hidden_size, "expected an integer in [1, 8192]")
        _check(
            1 <= self.num_hidden_layers <= 16,
            "num_hidden_layers",
            self.num_hidden_layers,
            "expected an integer in [1, 16]",
        )
        _check(-10.0 <= self.init_log_std <= 2.0, "init_log_std", self.init_log_std, "expected a number in [-10, 2]")
        _check(
            1 <= self.num_encoder_layers <= 8,
            "num_encoder_layers",
            self.num_encoder_layers,
            "expected an integer in [1, 8]",
        )
        _check(
            self.ssm_max_timescale is None or 0 <= self.ssm_max_timescale <= 10**7,
            "ssm_max_timescale",
            self.ssm_max_timescale,
            "expected 0 (S4D-Real) or a number of steps in [1, 10000000]",
        )


@dataclass(frozen=True)
class MAMLConfig:
    num_tasks: int = setting(10, "Tasks per meta-batch (meta batch size).")
    episodes_per_task: int = setting(
        10, "Episodes collected per task for each inner step and for the query set (seed name: batch_size)."
    )
    inner_lr: float = setting(0.1, "Step size of the inner-loop policy-gradient step.")
    num_inner_steps: int = setting(1, "Inner-loop adaptation steps, each on fresh episodes.")
    first_order: bool = setting(False, "Drop the second-order term of the meta-gradient (first-order MAML).")

    def __post_init__(self) -> None:
        _check(1 <= self.num_tasks <= 1000, "num_tasks", self.num_tasks, "expected an integer in [1, 1000]")
        _check(
            1 <= self.episodes_per_task <= 1000,
            "episodes_per_task",
            self.episodes_per_task,
            "expected an integer in [1, 1000]",
        )
        _check(0.0 < self.inner_lr <= 10.0, "inner_lr", self.inner_lr, "expected a number in (0, 10]")
        _check(
            1 <= self.num_inner_steps <= 20, "num_inner_steps", self.num_inner_steps, "expected an integer in [1, 20]"
        )


@dataclass(frozen=True)
class MetaLearnerConfig:
    algorithm: str = setting(
        "maml_ppo",
        f"Meta-learner, one of {', '.join(algorithm_names())} (metarl_ray/registry.py; how each adapts: the "
        "docstring of its folder under metarl_ray/algorithms/, and the README's table).",
    )
    episodes_per_trial: int = setting(
        10, "rl2: consecutive episodes of one task in a trial; the policy's memory carries across them."
    )
    trials_per_task: int = setting(
        2, "rl2: trials collected per task per iteration (2 x 10 episodes: the env steps MAML+PPO spends per task)."
    )
    rl2_epochs: int = setting(10, "rl2: PPO epochs over the iteration's trials.")
    rl2_minibatches: int = setting(8, "rl2: optimizer steps per epoch, each on a shuffled share of the trial chunks.")
    rl2_chunk_length: int = setting(
        500,
        "rl2: truncated backpropagation through time: steps per chunk of a trial (it must divide the trial length); "
        "each chunk starts from the memory the current policy carries into it, computed without gradient. 0: whole "
        "trials.",
    )
    rl2_gae_lambda: float = setting(0.95, "rl2: GAE lambda over a trial.")
    rl2_entropy_coef: float = setting(0.005, "rl2: weight of the Gaussian policy's entropy bonus in the loss.")
    rl2_lr: float = setting(0.0005, "rl2: Adam step size (in place of --meta_lr).")
    rl2_normalize_advantages: bool = setting(
        False, "rl2: normalise each task's advantages to zero mean and unit variance."
    )

    def __post_init__(self) -> None:
        _check(
            self.algorithm in algorithm_names(),
            "algorithm",
            self.algorithm,
            f"expected one of {', '.join(algorithm_names())}",
        )
        _check(
            1 <= self.episodes_per_trial <= 1000,
            "episodes_per_trial",
            self.episodes_per_trial,
            "expected an integer in [1, 1000]",
        )
        _check(
            1 <= self.trials_per_task <= 1000,
            "trials_per_task",
            self.trials_per_task,
            "expected an integer in [1, 1000]",
        )
        _check(1 <= self.rl2_epochs <= 100, "rl2_epochs", self.rl2_epochs, "expected an integer in [1, 100]")
        _check(
            1 <= self.rl2_minibatches <= 1000,
            "rl2_minibatches",
            self.rl2_minibatches,
            "expected an integer in [1, 1000]",
        )
        _check(
            0 <= self.rl2_chunk_length <= 10**6,
            "rl2_chunk_length",
            self.rl2_chunk_length,
            "expected 0 (whole trials) or a number of steps in [1, 1000000]",
        )
        _check(0.0 <= self.rl2_gae_lambda <= 1.0, "rl2_gae_lambda", self.rl2_gae_lambda, "expected a number in [0, 1]")
        _check(
            0.0 <= self.rl2_entropy_coef <= 1.0,
            "rl2_entropy_coef",
            self.rl2_entropy_coef,
            "expected a number in [0, 1]",
        )
        _check(0.0 < self.rl2_lr <= 1.0, "rl2_lr", self.rl2_lr, "expected a number in (0, 1]")
        _check(
            isinstance(self.rl2_normalize_advantages, bool),
            "rl2_normalize_advantages",
            self.rl2_normalize_advantages,
            "expected true or false",
        )


@dataclass(frozen=True)
class PPOConfig:
    meta_lr: float = setting(1e-3, "Adam step size of the meta-update.")
    num_ppo_epochs: int = setting(5, "Outer epochs over the query data, each re-deriving the adaptation.")
    clip_eps: float = setting(0.2, "PPO ratio clipping range.")
    gamma: float = setting(0.99, "Discount factor.")
    gae_lambda: float = setting(1.0, "GAE lambda (1.0 as in the Meta-World+ MAML baselines).")
    grad_clip: float = setting(1.0, "Max global norm of the meta-gradient.")

    def __post_init__(self) -> None:
        _check(0.0 < self.meta_lr <= 1.0, "meta_lr", self.meta_lr, "expected a number in (0, 1]")
        _check(
            1 <= self.num_ppo_epochs <= 100, "num_ppo_epochs", self.num_ppo_epochs, "expected an integer in [1, 100]"
        )
        _check(0.0 < self.clip_eps < 1.0, "clip_eps", self.clip_eps, "expected a number in (0, 1)")
        _check(0.0 < self.gamma <= 1.0, "gamma", self.gamma, "expected a number in (0, 1]")
        _check(0.0 <= self.gae_lambda <= 1.0, "gae_lambda", self.gae_lambda, "expected a number in [0, 1]")
        _check(self.grad_clip > 0.0, "grad_clip", self.grad_clip, "expected a number > 0")


@dataclass(frozen=True)
class RolloutConfig:
    num_rollout_workers: int | None = setting(
        None, "Rollout actors; default: one per CPU that Ray sees (at most one per task)."
    )
    sample_timeout_s: float = setting(
        1800.0, "A rollout actor silent this long in one iteration counts as dead and is replaced."
    )

    def __post_init__(self) -> None:
        _check(
            1.0 <= self.sample_timeout_s <= 1e6,
            "sample_timeout_s",
            self.sample_timeout_s,
            "expected seconds in [1, 1e6]",
        )
        if self.num_rollout_workers is not None:
            _check(
                1 <= self.num_rollout_workers <= 1024,
                "num_rollout_workers",
                self.num_rollout_workers,
                "expected an integer in [1, 1024]",
            )


@dataclass(frozen=True)
class LearnerConfig:
    device: str = setting("auto", "Learner device: auto (a GPU per learner when the cluster has them), cpu or cuda.")
    num_learners: int = setting(
        1, "Learner actors, each computing the meta-gradient of its share of the tasks; gradients are averaged."
    )
    use_amp: bool = setting(
        False, "Mixed precision: bfloat16 autocast on the learner's forward passes; fp32 parameters and Adam state."
    )
    gradient_accumulation_steps: int = setting(
        1, "Process each learner's tasks in this many chunks per optimizer step (less memory, same gradient)."
    )
    meta_batching: str = setting(
        "auto",
        "batched: a chunk's tasks in one vmapped graph; per_task: one graph per task; auto: what measured faster.",
    )
    nonfinite_lr_factor: float = setting(
        0.5, "On a NaN/Inf loss or gradient the update is undone and meta_lr and inner_lr are multiplied by this."
    )
    max_nonfinite_rollbacks: int = setting(
        3, "Stop the run (its last good checkpoint intact) after this many rolled-back updates in a row."
    )

    def __post_init__(self) -> None:
        _check(self.device in ("auto", "cpu", "cuda"), "device", self.device, "expected auto, cpu or cuda")
        _check(1 <= self.num_learners <= 256, "num_learners", self.num_learners, "expected an integer in [1, 256]")
        _check(
            1 <= self.gradient_accumulation_steps <= 1000,
            "gradient_accumulation_steps",
            self.gradient_accumulation_steps,
            "expected an integer in [1, 1000]",
        )
        _check(
            self.meta_batching in ("auto", "batched", "per_task"),
            "meta_batching",
            self.meta_batching,
            "expected auto, batched or per_task",
        )
        _check(
            0.0 < self.nonfinite_lr_factor <= 1.0,
            "nonfinite_lr_factor",
            self.nonfinite_lr_factor,
            "expected a number in (0, 1]",
        )
        _check(
            1 <= self.max_nonfinite_rollbacks <= 1000,
            "max_nonfinite_rollbacks",
            self.max_nonfinite_rollbacks,
            "expected an integer in [1, 1000]",
        )


@dataclass(frozen=True)
class RunConfig:
    num_epochs: int = setting(100, "Meta-training iterations (seed name: num_epochs).")
    seed: int = setting(0, "Seed of task sampling, action noise and initial weights.")
    output_dir: str = setting(
        "runs", "Folder that holds run directories: a path, or a URI (file://, s3://, gs://) for shared storage."
    )
    run_name: str | None = setting(None, "Run directory name; default: benchmark, task, time and a random suffix.")
    checkpoint_every: int = setting(10, "Write a checkpoint every this many iterations (and always at the end).")
    resume: bool = setting(
        False, "Continue the run named by --run_name or --checkpoint_path from its latest checkpoint."
    )
    checkpoint_path: str | None = setting(None, "Checkpoint file or run directory (path or URI) to resume from.")
    test_mode: bool = setting(
        False, "Tiny budgets for smoke tests: 2 iterations, 2 tasks (so up to 2 workers), 2 episodes of 50 steps."
    )
    ray_address: str | None = setting(
        None, "Ray cluster to join; default: RAY_ADDRESS if set, else a local in-process Ray."
    )
    ray_dashboard: bool = setting(
        False, "Start Ray's dashboard with a local in-process Ray (a cluster's dashboard is the cluster's own)."
    )
    max_failures: int = setting(
        2, "Restarts from the latest checkpoint after the learner or another actor process dies."
    )

    def __post_init__(self) -> None:
        _check(1 <= self.num_epochs <= 10_000_000, "num_epochs", self.num_epochs, "expected an integer >= 1")
        _check(0 <= self.seed < 2**32, "seed", self.seed, "expected an integer in [0, 2**32)")
        _check(bool(self.output_dir), "output_dir", self.output_dir, "expected a non-empty path or URI")
        _check(
            uri_scheme(self.output_dir) in ("",) + URI_SCHEMES,
            "output_dir",
            self.output_dir,
            f"expected a path or a URI with one of the schemes {', '.join(URI_SCHEMES)}",
        )
        if self.run_name is not None:
            _check(
                bool(self.run_name) and "/" not in self.run_name and self.run_name not in (".", ".."),
                "run_name",
                self.run_name,
                "expected a plain folder name without '/'",
            )
        _check(0 <= self.max_failures <= 1000, "max_failures", self.max_failures, "expected an integer in [0, 1000]")
        _check(
            1 <= self.checkpoint_every <= 10_000_000,
            "checkpoint_every",
            self.checkpoint_every,
            "expected an integer >= 1",
        )
        if self.checkpoint_path is not None:  # whether it exists is checked on resume: it may be a URI
            _check(
                uri_scheme(self.checkpoint_path) in ("",) + URI_SCHEMES,
                "checkpoint_path",
                self.checkpoint_path,
                f"expected a path or a URI with one of the schemes {', '.join(URI_SCHEMES)}",
            )


@dataclass(frozen=True)
class TrainConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    maml: MAMLConfig = field(default_factory=MAMLConfig)
    meta_learner: MetaLearnerConfig = field(default_factory=MetaLearnerConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        # Every learner needs at least one task of the meta-batch.
        _check(
            self.learner.num_learners <= self.maml.num_tasks,
            "num_learners",
            self.learner.num_learners,
            f"expected at most --num_tasks={self.maml.num_tasks} (each learner needs a task)",
        )
        builder = get_builder(self.meta_learner.algorithm)
        builder.check_config(self)
        if self.policy.ssm_max_timescale is None:  # resolved once, so the saved config says what ran
            object.__setattr__(
                self,
                "policy",
                dataclasses.replace(self.policy, ssm_max_timescale=builder.default_ssm_max_timescale(self)),
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "env": EnvConfig,
    "policy": PolicyConfig,
    "maml": MAMLConfig,
    "meta_learner": MetaLearnerConfig,
    "ppo": PPOConfig,
    "rollout": RolloutConfig,
    "learner": LearnerConfig,
    "run": RunConfig,
}

# Test mode shrinks budgets; flags given explicitly still win over these.
TEST_MODE_OVERRIDES: dict[str, dict[str, Any]] = {
    "env": {"max_episode_length": 50},
    "maml": {"num_tasks": 2, "episodes_per_task": 2},
    "meta_learner": {"episodes_per_trial": 2, "rl2_epochs": 2, "rl2_minibatches": 2, "rl2_chunk_length": 0},
    "ppo": {"num_ppo_epochs": 2},
    "run": {"num_epochs": 2, "checkpoint_every": 1},
}

FIELD_SECTION: dict[str, str] = {f.name: section for section, cls in SECTIONS.items() for f in fields(cls)}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _to_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "false", "0", "no"):
        return raw.lower() in ("true", "1", "yes")
    raise ConfigError(f"--{name}={raw!r}: expected true or false")


def _to_int(name: str, raw: Any) -> int:
    if not isinstance(raw, bool):
        try:
            value = float(raw) if isinstance(raw, str) else raw
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                return int(value)
            if isinstance(value, int):
                return value
        except ValueError:
            pass
    raise ConfigError(f"--{name}={raw!r}: expected an integer")


def _to_float(name: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise ConfigError(f"--{name}={raw!r}: expected a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name}={raw!r}: expected a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"--{name}={raw!r}: expected a finite number")
    return value


def _to_str(name: str, raw: Any) -> str:
    if isinstance(raw, (dict, list)):
        raise ConfigError(f"--{name}={raw!r}: expected a string")
    return str(raw)


_CONVERTERS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def coerce(name: str, raw: Any, annotation: Any) -> Any:
    """Convert a raw value (a CLI string or a YAML scalar) to the field's type, or raise ConfigError."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null")):
            return None
        return coerce(name, raw, options[0])
    if annotation not in _CONVERTERS:
        raise TypeError(f"unsupported annotation {annotation!r} for {name}")
    return _CONVERTERS[annotation](name, raw)


def build_config(overrides: dict[str, dict[str, Any]] | None = None, base: TrainConfig | None = None) -> TrainConfig:
    """Build a TrainConfig from ``base`` (default: defaults) with per-section raw overrides."""
    overrides = overrides or {}
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        hints = _field_types(cls)
        # The sections' own defaults, not a built TrainConfig's: that one has resolved the settings
        # whose default depends on others (ssm_max_timescale on the algorithm) for its own defaults.
        values = dataclasses.asdict(getattr(base, section) if base is not None else cls())
        for key, raw in overrides.get(section, {}).items():
            if key not in hints:
                raise ConfigError(f"{section}.{key}={raw!r}: unknown setting; allowed: {', '.join(sorted(hints))}")
            values[key] = coerce(key, raw, hints[key])
        sections[section] = values
    # Construct only after every value is coerced, so the first error reported is the user's.
    return TrainConfig(**{section: SECTIONS[section](**values) for section, values in sections.items()})


def merge_overrides(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            merged.setdefault(section, {}).update(values)
    return merged


def load_yaml_overrides(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a YAML config: either sections (``maml: {inner_lr: 0.1}``) or flat flag names."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config={str(path)!r}: expected an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        line = getattr(getattr(error, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"--config={str(path)!r}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config={str(path)!r}: expected a mapping of sections or settings")
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}={value!r}: expected a mapping of settings in section {key}")
            overrides.setdefault(key, {}).update(value)
        elif key in FIELD_SECTION:
            overrides.setdefault(FIELD_SECTION[key], {})[key] = value
        else:
            raise ConfigError(
                f"{key}={value!r}: unknown setting in {path.name}; allowed sections: {', '.join(SECTIONS)}"
            )
    return overrides


def config_from_dict(data: dict[str, dict[str, Any]]) -> TrainConfig:
    """Rebuild a TrainConfig saved with ``to_dict`` (run directories, checkpoints)."""
    overrides = {section: dict(values) for section, values in data.items() if section in SECTIONS}
    # Where a run resumed from is history, not a setting of the run itself.
    overrides.setdefault("run", {}).update(resume=False, checkpoint_path=None)
    return build_config(_with_legacy_defaults(overrides))


def _with_legacy_defaults(sections: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A config saved before a setting existed ran with the behaviour that setting now names: fill it
    in, so that an old run resumes and evaluates as it trained."""
    policy = sections.setdefault("policy", {})
    if policy and "ssm_max_timescale" not in policy:
        policy["ssm_max_timescale"] = 0  # S4D-Real, the only initialisation then
    algorithm = sections.get("meta_learner", {}).get("algorithm", MetaLearnerConfig().algorithm)
    if algorithm in algorithm_names():  # an unknown one fails with its own message when the config is built
        get_builder(algorithm).legacy_settings(sections)
    return sections


def method_settings(config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The settings that make a method on a benchmark (``to_dict`` sections): none of
    NOT_PART_OF_THE_METHOD, and no other meta-learner's own settings (those named ``<algorithm>_*``:
    an rl2_* value is no part of a MAML+PPO run). Runs pooled into one estimate must agree in these."""
    algorithm = config.get("meta_learner", {}).get("algorithm")
    others = tuple(f"{name}_" for name in algorithm_names() if name != algorithm)
    kept: dict[str, dict[str, Any]] = {}
    for section, values in config.items():
        ignored = NOT_PART_OF_THE_METHOD.get(section, set())
        if ignored is None:
            continue
        kept[section] = {
            k: v
            for k, v in values.items()
            if k not in ignored and not (section == "meta_learner" and k.startswith(others))
        }
    return kept


# Settings that are not part of the method or the benchmark: runs pooled into one estimate may differ
# in these (the seed above all) and must agree in every other setting.
NOT_PART_OF_THE_METHOD = {
    "env": {"fast_envs"},
    "rollout": {"num_rollout_workers", "sample_timeout_s"},
    "learner": {
        "device",
        "num_learners",
        "gradient_accumulation_steps",
        "meta_batching",
        "nonfinite_lr_factor",
        "max_nonfinite_rollbacks",
    },
    "run": None,
}
