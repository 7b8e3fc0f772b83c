"""``metarl`` command line: train, eval, doctor.

Every value is validated before anything starts; a user mistake prints one line naming the flag, the
value and what is allowed, and exits with status 2 without writing anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from metarl_ray.config import (
    EVAL_SPLITS,
    FIELD_SECTION,
    SECTIONS,
    TEST_MODE_OVERRIDES,
    ConfigError,
    TrainConfig,
    build_config,
    config_from_dict,
    load_yaml_overrides,
    merge_overrides,
    setting_doc,
)
from metarl_ray.envs import MAX_GOALS_PER_CLASS, env_family
from metarl_ray.errors import EnvFaultError, RunStorageError, TrainingDivergedError
from metarl_ray.training.storage import StoragePath

logger = logging.getLogger("metarl_ray")
EXIT_USAGE = 2

# Seed-project spellings that map onto a field of another name.
ALIASES = {"env_name": "benchmark", "batch_size": "episodes_per_task"}
BOOLEAN_FLAGS = {
    "fast_envs",
    "first_order",
    "ray_dashboard",
    "resume",
    "rl2_normalize_advantages",
    "test_mode",
    "use_amp",
}
# Settings a resumed run must keep (None: the whole section): changing them would not match the
# checkpoint, or (the seed) would silently swap the benchmark's train and test goals.
# fast_envs may change: the fast path's outputs equal stock Meta-World's bit for bit.
FIXED_ON_RESUME: dict[str, list[str] | None] = {
    "env": ["benchmark", "task", "max_episode_length", "reward_function_version", "validation_classes"],
    "policy": None,
    "meta_learner": ["algorithm", "episodes_per_trial"],
    "run": ["seed"],
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise ConfigError(f"{self.prog}: {message}")


def _field_help(section: str, name: str) -> str:
    """The config field's own documentation, so each flag's help is written once, beside its field."""
    return setting_doc(SECTIONS[section], name)


def _add_flag(parser: argparse.ArgumentParser, name: str, dest: str, help_text: str) -> None:
    spellings = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    if dest in BOOLEAN_FLAGS:
        parser.add_argument(
            *spellings, dest=dest, action="store_const", const=True, default=argparse.SUPPRESS, help=help_text
        )
        negated = [f"--no_{name}"] + ([f"--no-{name.replace('_', '-')}"] if "_" in name else [])
        parser.add_argument(
            *negated, dest=dest, action="store_const", const=False, default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    else:
        parser.add_argument(*spellings, dest=dest, metavar="VALUE", default=argparse.SUPPRESS, help=help_text)


def _train_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="metarl train", description="Meta-train a policy on Meta-World: MAML+PPO or in-context (RL2)."
    )
    parser.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML file of settings (flags override it)"
    )
    parser.add_argument(
        "--env", metavar="NAME", default=argparse.SUPPRESS, help="environment suite: metaworld (the only one)"
    )
    for name, section in FIELD_SECTION.items():
        _add_flag(parser, name, name, _field_help(section, name))
    for alias, dest in ALIASES.items():
        _add_flag(parser, alias, dest, f"same as --{dest}")
    return parser


def _explicit_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    values = vars(args)
    if "env" in values and values["env"] != "metaworld":
        raise ConfigError(f"--env={values['env']!r}: expected metaworld")
    file_overrides = load_yaml_overrides(values["config"]) if "config" in values else {}
    flag_overrides: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name in FIELD_SECTION:
            flag_overrides.setdefault(FIELD_SECTION[name], {})[name] = value
    return merge_overrides(file_overrides, flag_overrides)


def _read_checkpoint(path: StoragePath, flag: str) -> dict[str, Any]:
    from metarl_ray.training.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(path)
        if "config" not in state or "learner" not in state:
            raise KeyError("config/learner")
        return state
    except Exception as error:  # a damaged or foreign file is the user's input here, not our bug
        raise ConfigError(f"--{flag}={str(path)!r}: unreadable checkpoint ({type(error).__name__})") from None


def _train_config(argv: Sequence[str]) -> tuple[TrainConfig, dict[str, dict[str, Any]]]:
    """The config a ``metarl train`` command line asks for (and its explicit overrides); no I/O
    beyond reading a ``--config`` file."""
    explicit = _explicit_overrides(_train_parser().parse_args(argv))
    test_mode = bool(explicit.get("run", {}).get("test_mode", False))
    config = build_config(merge_overrides(TEST_MODE_OVERRIDES if test_mode else {}, explicit))
    env_family(config.env).check(config.env)
    return config, explicit


def _storage(location: str, flag: str) -> StoragePath:
    """Open a path or URI given on the command line; an unreachable store is the user's input here."""
    try:
        return StoragePath.parse(location)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--{flag}={location!r}: cannot open it ({str(error).splitlines()[0][:200]})") from None


def resolve_train(argv: Sequence[str]) -> tuple[TrainConfig, StoragePath, StoragePath | None]:
    """Config, run directory and checkpoint to resume from; raises ConfigError, writes nothing."""
    from metarl_ray.training.run_dir import default_run_name

    config, explicit = _train_config(argv)
    if not (config.run.resume or config.run.checkpoint_path):
        run_path = _storage(config.run.output_dir, "output_dir") / (config.run.run_name or default_run_name(config))
        if run_path.exists():
            raise ConfigError(
                f"--run_name={config.run.run_name!r}: {run_path} already exists; "
                "pass --resume to continue it or choose another name"
            )
        return config, run_path, None

    run_path, checkpoint = _resume_target(config)
    state = _read_checkpoint(checkpoint, "checkpoint_path")
    saved = _saved_config(state, checkpoint)
    # A resumed run keeps its saved settings; flags given now override them (e.g. --num_epochs).
    resumed = build_config(explicit, base=saved)
    for section, keys in FIXED_ON_RESUME.items():
        for key in keys or [f.name for f in dataclasses.fields(getattr(saved, section))]:
            value, before = getattr(getattr(resumed, section), key), getattr(getattr(saved, section), key)
            if value != before:
                raise ConfigError(
                    f"--{key}={value!r}: differs from the resumed run's {before!r}; "
                    "env, policy and seed cannot change on resume"
                )
    if resumed.run.num_epochs <= int(state["iteration"]):
        raise ConfigError(
            f"--num_epochs={resumed.run.num_epochs}: the run is already at iteration {state['iteration']}; "
            "pass a larger --num_epochs to train further"
        )
    resumed = dataclasses.replace(
        resumed, run=dataclasses.replace(resumed.run, run_name=run_path.name, output_dir=str(run_path.parent))
    )
    return resumed, run_path, checkpoint


def _resume_target(config: TrainConfig) -> tuple[StoragePath, StoragePath]:
    """The run directory and checkpoint a resume continues; only ever the run's latest checkpoint,
    since continuing from an older one would overwrite the later checkpoints and metrics."""
    from metarl_ray.training.checkpoint import latest_checkpoint, resolve_checkpoint, run_path_of

    if config.run.checkpoint_path:
        checkpoint = resolve_checkpoint(_storage(config.run.checkpoint_path, "checkpoint_path"))
        if checkpoint is None:
            raise ConfigError(
                f"--checkpoint_path={config.run.checkpoint_path!r}: "
                "expected an existing checkpoint file or run directory"
            )
        run_path = run_path_of(checkpoint)
        latest = latest_checkpoint(run_path)
        if latest is not None and latest.resolve().path != checkpoint.resolve().path:
            raise ConfigError(
                f"--checkpoint_path={config.run.checkpoint_path!r}: not the latest checkpoint of {run_path} "
                f"({latest.name} is); resuming from it would overwrite later results"
            )
        if config.run.run_name and config.run.run_name != run_path.name:
            raise ConfigError(f"--run_name={config.run.run_name!r}: the checkpoint belongs to run {run_path.name!r}")
        return run_path, checkpoint
    if config.run.run_name:
        run_path = _storage(config.run.output_dir, "output_dir") / config.run.run_name
        checkpoint = latest_checkpoint(run_path)
        if checkpoint is None:
            raise ConfigError(f"--run_name={config.run.run_name!r}: no checkpoint in {run_path} to resume from")
        return run_path, checkpoint
    raise ConfigError("--resume=True: needs --run_name NAME or --checkpoint_path PATH to say which run")


def _saved_config(state: dict[str, Any], checkpoint: StoragePath) -> TrainConfig:
    try:
        return config_from_dict(state["config"])
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(
            f"--checkpoint_path={str(checkpoint)!r}: unreadable config in checkpoint ({type(error).__name__})"
        ) from None


def cmd_train(argv: Sequence[str]) -> int:
    from metarl_ray.driver.trainer import train

    config, run_path, checkpoint = resolve_train(argv)
    run_path = train(config, run_path, checkpoint)
    print(run_path)
    return 0


def _eval_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="metarl eval",
        description=(
            "Meta-test runs on held-out goals: per task class and overall mean, IQM and 95%% bootstrap "
            "intervals over seeds and goals, under the mean-action and the sampled-action rule, before and after "
            "adaptation; Meta-World's official figures beside them."
        ),
    )
    parser.add_argument(
        "--checkpoint",
        "--checkpoints",
        required=True,
        nargs="+",
        action="extend",
        metavar="PATH",
        help="checkpoint files, run directories (their latest) or a Tune experiment directory; "
        "several runs (seeds) are pooled into one estimate",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--goals_per_class",
        "--goals-per-class",
        type=int,
        default=None,
        metavar="N",
        help=f"goals per task class (default: all {MAX_GOALS_PER_CLASS}; 2 for test-mode runs)",
    )
    parser.add_argument(
        "--sampled_episodes",
        "--sampled-episodes",
        type=int,
        default=3,
        metavar="K",
        help="sampled-action episodes per goal before and after adaptation",
    )
    parser.add_argument(
        "--num_workers",
        "--num-workers",
        type=int,
        default=None,
        metavar="N",
        help="Ray rollout actors (default: one per CPU); 0 runs in this process without Ray",
    )
    parser.add_argument(
        "--ray_address", "--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or local)"
    )
    parser.add_argument(
        "--num_evals", "--num-evals", type=int, default=1, metavar="N", help="rounds of the official ML protocol"
    )
    parser.add_argument(
        "--mt_episodes",
        "--mt-episodes",
        type=int,
        default=None,
        metavar="N",
        help="episodes per task of the official MT evaluation (default 50; 2 for test-mode runs)",
    )
    parser.add_argument(
        "--official_goals_per_class",
        "--official-goals-per-class",
        type=int,
        default=None,
        metavar="N",
        help="goals per class of the official ML evaluation (default: 10, at most --goals_per_class)",
    )
    parser.add_argument(
        "--official_meta_batch_size",
        "--official-meta-batch-size",
        type=int,
        default=None,
        metavar="N",
        help="sub-envs of the official ML evaluation, a multiple of the test classes (default: one per "
        "goal); Meta-World+'s protocol on ML10: --official_meta_batch_size 20 "
        "--official_goals_per_class 40 --num_evals 10",
    )
    parser.add_argument("--no_official", "--no-official", action="store_true", help="skip Meta-World's own evaluation")
    parser.add_argument(
        "--split",
        choices=EVAL_SPLITS,
        default="test",
        help="test: held-out classes (ML; a validation run's validation classes) or the training goals "
        "(MT); train: the training classes on goals never trained on (no official figure)",
    )
    return parser


def cmd_eval(argv: Sequence[str]) -> int:
    from metarl_ray.distributed.eval_runner import evaluate_runs
    from metarl_ray.evaluation.meta_test import EvalOptions, find_checkpoints

    args = _eval_parser().parse_args(argv)
    limits = {
        "goals_per_class": (1, MAX_GOALS_PER_CLASS),
        "sampled_episodes": (1, 10),
        "num_workers": (0, 10_000),
        "num_evals": (1, 1000),
        "mt_episodes": (1, 10_000),
        "official_goals_per_class": (1, MAX_GOALS_PER_CLASS),
        "official_meta_batch_size": (1, 10_000),
    }
    for name, (lower, upper) in limits.items():
        value = getattr(args, name)
        if value is not None and not lower <= value <= upper:
            raise ConfigError(f"--{name}={value!r}: expected an integer in [{lower}, {upper}]")
    locations = []
    for location in args.checkpoint:
        found = find_checkpoints(_storage(location, "checkpoint"))
        if not found:
            raise ConfigError(
                f"--checkpoint={location!r}: expected a checkpoint file, a run directory with "
                "checkpoints or a Tune experiment directory"
            )
        for checkpoint in found:
            _read_checkpoint(checkpoint, "checkpoint")
        locations += found
    options = EvalOptions(
        goals_per_class=args.goals_per_class,
        num_sampled_episodes=args.sampled_episodes,
        official=not args.no_official,
        num_evals=args.num_evals,
        mt_episodes=args.mt_episodes,
        num_workers=args.num_workers,
        official_goals_per_class=args.official_goals_per_class,
        official_meta_batch_size=args.official_meta_batch_size,
        split=args.split,
    )
    report = evaluate_runs(locations, options, args.ray_address)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _interval(entry: dict[str, Any], key: str = "mean") -> str:
    ci = entry[f"{key}_ci95"]
    return f"{entry[key]:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def format_report(report: dict[str, Any]) -> str:
    """The text ``metarl eval`` prints: one block per action rule, overall then per class."""
    protocol = report["protocol"]
    lines = [
        f"{report['benchmark']}{'' if not report['task'] else ' ' + report['task']}: {report['num_runs']} run(s) "
        f"(seeds {protocol['seeds']}) x {protocol['num_goals_per_run']} {protocol['split']} goals; "
        "success mean [95% CI], IQM [95% CI]"
    ]
    for rule, label in (
        ("mean_action", "mean action, 1 episode per goal"),
        ("sampled", f"sampled actions, {protocol['sampled_episodes']} episodes per goal"),
    ):
        lines.append(f"  {rule} ({label}):")
        rows = [("overall", report["overall"][rule])] + [
            (name, entry[rule]) for name, entry in report["per_task"].items()
        ]
        for name, entry in rows:
            lines.append(
                f"    {name:26s} post {_interval(entry['post'])}  pre {_interval(entry['pre'])}  "
                f"gain {_interval(entry['gain'])}  post IQM {_interval(entry['post'], 'iqm')}"
            )
    if report["success_rate_official"] is not None:
        lines.append(
            f"  official (Meta-World's functions, over-counts): success {report['success_rate_official']:.3f}, "
            f"return {report['mean_return_official']:.1f}"
        )
    return "\n".join(lines)


def _plot_parser() -> argparse.ArgumentParser:
    from metarl_ray.evaluation.plotting import DEFAULT_METRICS

    parser = _Parser(
        prog="metarl plot",
        description=(
            "Learning curves of runs against env steps; seeds of one setting are drawn as their mean with a "
            "min-max band."
        ),
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories (paths or URIs)")
    parser.add_argument(
        "--metric",
        nargs="+",
        action="extend",
        default=None,
        metavar="NAME",
        help=f"metrics keys, one panel each (default: {' '.join(DEFAULT_METRICS)})",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="image to write: .png, .pdf or .svg")
    return parser


def _check_output_file(out: str, suffixes: Sequence[str]) -> None:
    """``--out`` of plot and render: a known file type, in a folder that exists (nothing is written yet)."""
    if not out.lower().endswith(tuple(suffixes)):
        raise ConfigError(f"--out={out!r}: expected a file name ending in {', '.join(suffixes)}")
    path = _storage(out, "out")
    if path.local is not None and not path.local.parent.resolve().is_dir():
        raise ConfigError(
            f"--out={out!r}: folder {str(path.local.parent)!r} does not exist; expected an existing folder"
        )


def cmd_plot(argv: Sequence[str]) -> int:
    from metarl_ray.evaluation.plotting import DEFAULT_METRICS, IMAGE_SUFFIXES, plot_runs

    args = _plot_parser().parse_args(argv)
    _check_output_file(args.out, IMAGE_SUFFIXES)
    plot_runs(args.runs, args.metric or list(DEFAULT_METRICS), args.out)
    print(args.out)
    return 0


CAMERAS = ("corner", "corner2", "corner3", "topview", "behindGripper", "gripperPOV")  # Meta-World's


def _render_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="metarl render",
        description=(
            "Video of the meta-policy on one held-out goal: before adaptation (left) and after (right), "
            "mean-action episodes, MuJoCo's offscreen renderer."
        ),
    )
    parser.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="checkpoint file or run directory (its latest)"
    )
    parser.add_argument("--task", default=None, metavar="NAME", help="meta-test class (default: the first)")
    parser.add_argument(
        "--goal", type=int, default=0, metavar="I", help=f"goal index within the class, 0-{MAX_GOALS_PER_CLASS - 1}"
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="video to write (.mp4)")
    parser.add_argument("--camera", default="corner", help=f"Meta-World camera: {', '.join(CAMERAS)}")
    parser.add_argument("--size", type=int, default=256, metavar="PIXELS", help="height and width of each half")
    parser.add_argument("--fps", type=int, default=30)
    return parser


def cmd_render(argv: Sequence[str]) -> int:
    from metarl_ray.evaluation.render import render_goal
    from metarl_ray.training.checkpoint import resolve_checkpoint

    args = _render_parser().parse_args(argv)
    if not 0 <= args.goal < MAX_GOALS_PER_CLASS:
        raise ConfigError(f"--goal={args.goal}: expected an integer in [0, {MAX_GOALS_PER_CLASS - 1}]")
    if not 16 <= args.size <= 2048 or args.size % 2:
        raise ConfigError(f"--size={args.size}: expected an even number of pixels in [16, 2048]")
    if not 1 <= args.fps <= 240:
        raise ConfigError(f"--fps={args.fps}: expected an integer in [1, 240]")
    if args.camera not in CAMERAS:
        raise ConfigError(f"--camera={args.camera!r}: expected one of {', '.join(CAMERAS)}")
    _check_output_file(args.out, (".mp4",))
    checkpoint = resolve_checkpoint(_storage(args.checkpoint, "checkpoint"))
    if checkpoint is None:
        raise ConfigError(
            f"--checkpoint={args.checkpoint!r}: expected a checkpoint file or a run directory with checkpoints"
        )
    _read_checkpoint(checkpoint, "checkpoint")
    rendered = render_goal(checkpoint, args.task, args.goal, args.out, args.camera, args.size, args.fps)
    print(
        f"{args.out}: {rendered.task} goal {rendered.goal_index}, {rendered.num_frames} frames; before adaptation "
        f"success {rendered.pre_success} return {rendered.pre_return:.1f}, after success {rendered.post_success} "
        f"return {rendered.post_return:.1f}"
    )
    return 0


def _tune_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metarl tune", description="Ray Tune search from a file in tune_configs/.")
    parser.add_argument("file", help="search file (YAML), e.g. tune_configs/ml1_quick.yaml")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted experiment (Tuner.restore)")
    parser.add_argument(
        "--ray_address", "--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or local)"
    )
    parser.add_argument(
        "--ray_dashboard",
        "--ray-dashboard",
        action="store_true",
        help="start Ray's dashboard with a local in-process Ray",
    )
    parser.add_argument(
        "--storage_path",
        "--storage-path",
        default=None,
        metavar="URI",
        help="where Tune keeps the experiment (path, file://, s3://, gs://); overrides the file's storage_path",
    )
    return parser


def _tune_spec(argv: Sequence[str]) -> tuple[Any, argparse.Namespace]:
    from metarl_ray.driver.tune import load_tune_spec

    args = _tune_parser().parse_args(argv)
    return load_tune_spec(args.file, storage_path=args.storage_path), args


def check_command(argv: Sequence[str]) -> None:
    """Parse and validate a ``metarl`` command line without running it and without touching its
    output storage (an ``s3://`` bucket may only exist on the cluster). Deployment manifests under
    ``cluster/`` are checked with this. Raises ConfigError with the usual one-line message."""
    if not argv or argv[0] not in ("train", "eval", "tune", "plot", "render", "doctor"):
        raise ConfigError(
            f"command {argv[0] if argv else ''!r}: expected one of train, eval, tune, plot, render, doctor"
        )
    command, rest = argv[0], list(argv[1:])
    if command == "train":
        _train_config(rest)
    elif command == "tune":
        _tune_spec(rest)
    elif command == "eval":
        _eval_parser().parse_args(rest)
    elif command == "plot":
        _plot_parser().parse_args(rest)
    elif command == "render":
        _render_parser().parse_args(rest)
    elif rest:
        raise ConfigError(f"metarl doctor: unexpected arguments {' '.join(rest)!r}")


def cmd_tune(argv: Sequence[str]) -> int:
    from metarl_ray.distributed.session import ray_session
    from metarl_ray.driver.tune import TuneInterrupted, run_tune

    spec, args = _tune_spec(argv)
    with ray_session(args.ray_address, args.ray_dashboard):
        try:
            summary = run_tune(spec, resume=args.resume)
        except TuneInterrupted as stopped:
            print(f"metarl tune: {stopped}", file=sys.stderr)
            return 130
    print(
        f"best trial ({spec.metric} {summary['best_metrics'].get(spec.metric)}): {json.dumps(summary['best_config'])}"
    )
    print(f"written to {summary['experiment']}/best_trial.json")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands = {
        "train": cmd_train,
        "eval": cmd_eval,
        "tune": cmd_tune,
        "plot": cmd_plot,
        "render": cmd_render,
        "doctor": None,
    }
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: metarl {train,eval,tune,plot,render,doctor} [options]   (metarl COMMAND --help for options)")
        return 0 if argv else EXIT_USAGE
    if argv[0] not in commands:
        print(
            f"metarl: error: command {argv[0]!r}: expected one of train, eval, tune, plot, render, doctor",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        if argv[0] == "doctor":
            from metarl_ray.cli.doctor import run_doctor

            return run_doctor()
        return commands[argv[0]](argv[1:])
    except ConfigError as error:
        print(f"metarl: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDivergedError as error:
        print(f"metarl: error: training diverged: {error}", file=sys.stderr)
        return 1
    except (RunStorageError, EnvFaultError) as error:
        print(f"metarl: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("metarl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
