"""Learning curves at benchmark scale: meta-train a suite's runs, then meta-test every checkpoint.

    python benchmarks/learning.py train ml10          # trains (or resumes, exactly) each run in turn
    python benchmarks/learning.py status ml10         # each run's iteration, env steps, hours, committed state
    python benchmarks/learning.py save ml10           # copy each run's latest checkpoint to benchmarks/state
    python benchmarks/learning.py eval ml10           # meta-tests every checkpoint per seed, pooled over seeds
    python benchmarks/learning.py plot ml10           # SUITE.png; `table ml10` prints the Markdown table
    python benchmarks/learning.py choose ml10-val     # ranks a validation suite's settings (SUITE-choice.json)
    python benchmarks/learning.py compare             # in context vs MAML+PPO at one budget: in_context.json/.png

Suites: smoke (minutes, to check the pipeline), ml1-reach (ML1 reach-v3, 10M steps), ml10 (20M steps,
Meta-World+'s budget), ml10-val (settings chosen on training classes only), mt10 (20M steps).
What each point holds is in suite_points.py. Results: benchmarks/results/SUITE.json (one record per
seed and checkpoint, added as each finishes, so an interrupted eval continues where it stopped, and
the pooled points) and SUITE.png. Run directories train in benchmarks/runs (not in git); each run's
latest state is committed in benchmarks/state/SUITE/RUN, from which a fresh clone continues it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import suite_points  # benchmarks/suite_points.py
from report import write_report  # benchmarks/report.py
from suite_report import _estimate, _read_results, cmd_compare, cmd_plot, cmd_table

RESULTS = Path(__file__).parent / "results"
# Run directories while they train (every checkpoint, TensorBoard events; not in git) ...
RUNS = Path(os.path.relpath(Path(__file__).parent / "runs"))  # relative, as the commands in the results show it
# ... and the committed state of each run: config, metrics journal, log and its latest checkpoint only.
STATE = Path(os.path.relpath(Path(__file__).parent / "state"))
STATE_FILES = ("config.yaml", "metrics.jsonl", "train.log")


@dataclass(frozen=True)
class Group:
    """One method of a suite: the ``metarl train`` flags that define it, and the seeds it runs."""

    flags: tuple[str, ...]
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class Suite:
    flags: tuple[str, ...]
    groups: dict[str, Group]
    num_epochs: int = 100
    checkpoint_every: int = 10
    title: str = ""
    eval_goals_per_class: int | None = None  # None: every goal
    final_goals_per_class: int | None = None  # at the last iteration; None: as eval_goals_per_class
    train_split_goals_per_class: int | None = None  # held-out goals of the training classes; None: not evaluated
    official: dict | None = field(default_factory=dict)  # Meta-World's own evaluation (EvalOptions fields); None: never
    official_at_every_point: bool = False  # else at the last iteration only
    # The direct figure's goals: test (held-out classes; ML1: held-out goals) or train (the training
    # classes' goals never trained on: a validation that never sees the test goals).
    split: str = "test"

    @property
    def seeds(self) -> dict[str, tuple[int, ...]]:
        return {name: group.seeds for name, group in self.groups.items()}


def maml(policy_type: str, *extra: str, seeds: tuple[int, ...] = (0,)) -> Group:
    return Group(("--policy_type", policy_type, *extra), seeds)


def in_context(memory: str, *extra: str, seeds: tuple[int, ...] = (0,)) -> Group:
    return Group(("--algorithm", "rl2", "--policy_type", memory, *extra), seeds)


def multi_task_ppo(*extra: str, seeds: tuple[int, ...] = (0,)) -> Group:
    """Multi-task PPO with the MLP: no adaptation, MAML+PPO's env steps per task (the zero-shot control)."""
    return Group(("--algorithm", "mt_ppo", "--policy_type", "mlp", *extra), seeds)


# Meta-World+'s official ML10 protocol (metaworld-algorithms' maml_trpo_ml10.py): 20 sub-envs (4 per test
# class) over 40 goals per class, 10 rounds, 10 adaptation and 3 evaluation episodes.
METAWORLD_PLUS_ML10 = {"official_meta_batch_size": 20, "official_goals_per_class": 40, "num_evals": 10}
# Chosen on ml10-val (benchmarks/results/ml10-val-choice.json): training classes only, never the test classes.
ML10_MLP = ("--hidden_size", "128", "--inner_lr", "0.001")
VALIDATION_CLASSES = "drawer-close-v3,window-open-v3"
# The in-context update over whole trials (no truncated backprop), minibatched as the defaults are.
RL2_WHOLE_TRIALS = ("--rl2_chunk_length", "0")
# The in-context update before the minibatched one (what configs saved without the rl2_* settings run).
RL2_EARLIER = (
    "--rl2_epochs",
    "5",
    "--rl2_minibatches",
    "1",
    "--rl2_chunk_length",
    "0",
    "--rl2_gae_lambda",
    "1.0",
    "--rl2_entropy_coef",
    "0",
    "--rl2_lr",
    "0.001",
    "--rl2_normalize_advantages",
    "--ssm_max_timescale",
    "0",
)

SUITES = {
    # The whole pipeline in a few minutes (test-mode budgets), to check it before hours-long runs.
    "smoke": Suite(
        ("--env_name", "ML1", "--task", "reach-v3", "--test_mode"),
        {"mlp": maml("mlp", seeds=(0, 1)), "rl2-ssm": in_context("ssm", seeds=(0, 1))},
        num_epochs=2,
        checkpoint_every=1,
        title="smoke test (ML1 reach-v3, test-mode budgets)",
    ),
    # rl2-*: in context (RL²) at the same env-step budget: 2 trials x 10 episodes per task per iteration.
    "ml1-reach": Suite(
        ("--env_name", "ML1", "--task", "reach-v3"),
        {
            "mlp": maml("mlp", seeds=(0, 1, 2)),
            "ssm": maml("ssm", seeds=(0, 1, 2)),
            "rl2-ssm": in_context("ssm", seeds=(0, 1, 2)),
            "rl2-gru": in_context("gru", seeds=(0, 1, 2)),
        },
        title="ML1 reach-v3 (10 tasks x 10 episodes x 500 steps x 2 per iteration)",
    ),
    # In-context settings chosen on ML1 reach-v3's training goals never trained on (never its test goals):
    # the minibatched truncated-backprop update (defaults), the same over whole trials, the earlier
    # full-batch whole-trial update with S4D-Real time scales, and the GRU at the defaults; 3M env steps.
    "ml1-reach-val": Suite(
        ("--env_name", "ML1", "--task", "reach-v3"),
        {
            "rl2-ssm": in_context("ssm"),
            "rl2-ssm-whole-trials": in_context("ssm", *RL2_WHOLE_TRIALS),
            "rl2-ssm-earlier": in_context("ssm", *RL2_EARLIER),
            "rl2-gru": in_context("gru"),
        },
        num_epochs=30,
        official=None,
        split="train",
        title="RL² validation on ML1 reach-v3 (training goals never trained on)",
    ),
    "ml10": Suite(
        ("--env_name", "ML10", "--num_tasks", "20"),
        {
            "mlp": maml("mlp", *ML10_MLP, seeds=(0, 1, 2)),
            "ssm": maml("ssm"),
            "rl2-ssm": in_context("ssm", seeds=(0, 1, 2)),
            "rl2-gru": in_context("gru"),
            "mt-ppo": multi_task_ppo("--hidden_size", "128"),  # the mlp group's width
        },
        eval_goals_per_class=10,
        final_goals_per_class=50,
        train_split_goals_per_class=3,
        official=METAWORLD_PLUS_ML10,
        official_at_every_point=True,
        title="ML10 (20 tasks x 10 episodes x 500 steps x 2 per iteration)",
    ),
    # Settings for ml10 chosen on training classes only: 2 of the 10 left out of meta-training and
    # meta-tested on all their 50 goals; 16 tasks (2 per remaining class) per iteration, 2.4M env steps.
    "ml10-val": Suite(
        ("--env_name", "ML10", "--num_tasks", "16", "--validation_classes", VALIDATION_CLASSES),
        {
            f"mlp-h{hidden}-lr{lr}": maml("mlp", "--hidden_size", str(hidden), "--inner_lr", lr)
            for hidden in (128, 512)
            for lr in ("0.1", "0.01", "0.001")
        },
        num_epochs=15,
        checkpoint_every=5,
        official=None,
        title=f"ML10 validation (8 training classes; meta-test on {VALIDATION_CLASSES})",
    ),
    # MT10 has no held-out goals; 10 of each class's 50 training goals keep a point at ~4 minutes.
    "mt10": Suite(
        ("--env_name", "MT10", "--num_tasks", "20"),
        {"mlp": maml("mlp"), "mt-ppo": multi_task_ppo()},
        eval_goals_per_class=10,
        official_at_every_point=True,
        title="MT10 (20 tasks x 10 episodes x 500 steps x 2 per iteration)",
    ),
}


def run_name(suite: str, group: str, seed: int) -> str:
    return f"{suite}-{group}-s{seed}"


def train_command(
    suite_name: str, suite: Suite, group: str, seed: int, num_epochs: int | None = None, runs: Path = RUNS
) -> list[str]:
    return [
        "metarl",
        "train",
        *suite.flags,
        *suite.groups[group].flags,
        "--num_epochs",
        str(num_epochs or suite.num_epochs),
        "--checkpoint_every",
        str(suite.checkpoint_every),
        "--seed",
        str(seed),
        "--output_dir",
        str(runs),
        "--run_name",
        run_name(suite_name, group, seed),
    ]


def checkpoint_iterations(run_path: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run_path / "checkpoints").glob("checkpoint_*.pt"))


def save_state(run_path: Path, state_path: Path) -> int | None:
    """Copy what continues a run into its committed folder: config, journal, log and the latest
    checkpoint (older checkpoints there are removed). Returns the iteration saved, None if none."""
    done = checkpoint_iterations(run_path)
    saved = checkpoint_iterations(state_path)
    if not done or (saved and saved[-1] > done[-1]):  # never replace committed state with an older run
        return None
    (state_path / "checkpoints").mkdir(parents=True, exist_ok=True)
    for name in STATE_FILES:
        if (run_path / name).is_file():
            shutil.copy2(run_path / name, state_path / name)
    latest = f"checkpoint_{done[-1]:06d}.pt"
    for suffix in ("", ".sha256"):
        shutil.copy2(run_path / "checkpoints" / (latest + suffix), state_path / "checkpoints" / (latest + suffix))
    (state_path / "checkpoints" / "latest").write_text(latest)
    for old in (state_path / "checkpoints").glob("checkpoint_*"):
        if not old.name.startswith(latest):
            old.unlink()
    return done[-1]


def restore_state(state_path: Path, run_path: Path) -> bool:
    """A fresh clone: rebuild the run directory from the committed state (then ``--resume`` continues it).
    A local run directory behind the committed state is an error: which one to keep is the user's call."""
    saved, local = checkpoint_iterations(state_path), checkpoint_iterations(run_path)
    if saved and run_path.exists() and (not local or local[-1] < saved[-1]):
        raise SystemExit(
            f"{run_path.name}: {run_path} is at iteration {local[-1] if local else 0}, behind its committed "
            f"state in {state_path} (iteration {saved[-1]}); remove {run_path} to continue from the state"
        )
    if run_path.exists() or not saved:
        return False
    shutil.copytree(state_path, run_path)
    return True


def suite_runs(suite_name: str, suite: Suite, groups: list[str], seeds: list[int] | None = None):
    for group in groups:
        for seed in suite.groups[group].seeds:
            if seeds is None or seed in seeds:
                yield group, seed, run_name(suite_name, group, seed)


def cmd_train(
    suite_name: str,
    suite: Suite,
    groups: list[str],
    seeds: list[int] | None = None,
    until_iteration: int | None = None,
    runs: Path = RUNS,
    state: Path = STATE,
) -> None:
    """Train (or resume) each group's runs in turn up to ``until_iteration`` (default: the suite's last);
    a run stopped early continues later, exactly, from its latest checkpoint, which is then copied to
    its committed folder (``state``): a fresh clone continues from there."""
    until = until_iteration or suite.num_epochs
    for group, seed, name in suite_runs(suite_name, suite, groups, seeds):
        if restore_state(state / suite_name / name, runs / name):
            print(f"{name}: restored {runs / name} from {state / suite_name / name}", flush=True)
        done = checkpoint_iterations(runs / name)
        if not done and (runs / name).exists():  # stopped before its first checkpoint: nothing to resume
            print(f"{name}: {runs / name} has no checkpoint to resume; remove it to train this run afresh", flush=True)
            continue
        if done and done[-1] >= until:
            save_state(runs / name, state / suite_name / name)
            print(f"{name}: at iteration {done[-1]}", flush=True)
            continue
        command = train_command(suite_name, suite, group, seed, until, runs)
        if done:  # exact resume from the latest checkpoint
            command = [
                "metarl",
                "train",
                "--resume",
                "--run_name",
                name,
                "--output_dir",
                str(runs),
                "--num_epochs",
                str(until),
            ]
        print(" ".join(command), flush=True)
        try:
            subprocess.run([sys.executable, "-m", "metarl_ray", *command[1:]], check=True)
        finally:  # a crash or Ctrl-C still leaves the latest checkpoint in the committed folder
            save_state(runs / name, state / suite_name / name)


def cmd_save(suite_name: str, suite: Suite, groups: list[str], runs: Path = RUNS, state: Path = STATE) -> None:
    """Copy each run's latest checkpoint (and journal) to its committed folder, e.g. while it trains."""
    for _, _, name in suite_runs(suite_name, suite, groups):
        if (runs / name).is_dir():
            iteration = save_state(runs / name, state / suite_name / name)
            print(
                f"{name}: "
                + (
                    f"state at iteration {iteration} in {state / suite_name / name}"
                    if iteration
                    else f"nothing saved (no checkpoint, or {state / suite_name / name} is further on)"
                ),
                flush=True,
            )


def _git_state(path: Path) -> str:
    """committed (tracked and unchanged), changed (not yet committed) or absent."""
    if not path.exists():
        return "absent"
    root = Path(__file__).resolve().parent.parent
    tracked = (
        subprocess.run(
            ["git", "ls-files", "--error-unmatch", str(path.resolve())], cwd=root, capture_output=True
        ).returncode
        == 0
    )
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", str(path.resolve())], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    return "committed" if tracked and not changed else "changed, not committed"


def cmd_status(suite_name: str, suite: Suite, groups: list[str], runs: Path = RUNS, state: Path = STATE) -> None:
    """Each run: iteration and env steps reached, training wall-clock, and whether its state is committed."""
    from metarl_ray.training.metrics import read_metrics

    print(f"{suite_name}: {suite.num_epochs} iterations per run; committed state in {state / suite_name}")
    width = max(28, *(len(name) for _, _, name in suite_runs(suite_name, suite, groups, None)))
    print(f"{'run':{width}} {'iteration':>9} {'env steps':>12} {'train h':>8}  state")
    for _, _, name in suite_runs(suite_name, suite, groups):
        local, saved = runs / name, state / suite_name / name
        source = local if checkpoint_iterations(local) else saved
        done = checkpoint_iterations(source)
        rows = [r for r in read_metrics(source) if done and r["iteration"] <= done[-1]] if done else []
        steps = rows[-1]["rollout/env_steps_total"] if rows else 0
        hours = sum(r["time/iteration_s"] for r in rows) / 3600
        saved_at = checkpoint_iterations(saved)
        where = "none" if not saved_at else f"iteration {saved_at[-1]}, {_git_state(saved)}"
        print(f"{name:{width}} {done[-1] if done else 0:>5}/{suite.num_epochs:<3} {steps:>12,} {hours:>8.2f}  {where}")


def eval_request(suite: Suite, iteration: int, goals_per_class: int | None) -> dict:
    """What a point of ``suite`` at ``iteration`` measures (``goals_per_class`` overrides the suite's)."""
    final = iteration == suite.num_epochs
    official = suite.official is not None and (final or suite.official_at_every_point)
    goals = goals_per_class or (
        suite.final_goals_per_class if final and suite.final_goals_per_class else suite.eval_goals_per_class
    )
    request = {
        "goals_per_class": goals,
        "sampled_episodes": 3,
        "official": dict(suite.official) if official else None,
        "train_goals_per_class": suite.train_split_goals_per_class,
    }
    if suite.split != "test":  # absent for test: earlier records' requests stay equal
        request["split"] = suite.split
    return request


def _checkpoint_sha256(checkpoint: Path) -> str | None:
    sidecar = checkpoint.with_name(checkpoint.name + ".sha256")
    return sidecar.read_text().strip() if sidecar.is_file() else None


def _is_done(records: list[dict], iteration: int, request: dict, sha256: str | None) -> bool:
    """Measured already: same iteration and request, and the same checkpoint bytes (a run recreated under
    the same name is measured again; a record without a checksum predates them and counts)."""
    return any(
        r["iteration"] == iteration and r["request"] == request and r.get("checkpoint_sha256", sha256) == sha256
        for r in records
    )


@contextlib.contextmanager
def _locked_results(output: Path):
    """SUITE.json read, changed and written under an exclusive lock, so evals of one suite running side
    by side (seeds evaluated apart) never drop each other's records; the write is atomic."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output.with_name(output.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(output.read_text()) if output.is_file() else {"suite": output.stem, "groups": {}}
        yield results
        temporary = output.with_name(output.name + ".tmp")
        temporary.write_text(suite_points.dumps(results))
        temporary.replace(output)


def _add_record(
    results: dict, suite_name: str, suite: Suite, group_name: str, seed: int, record: dict, run_path: Path
) -> None:
    group = results["groups"].setdefault(group_name, {})
    if "points" in group and "runs" not in group:  # points of runs evaluated together, before per-seed records
        for key in ("points", "train_commands", "training"):
            if key in group:
                group[f"legacy_{key}"] = group.pop(key)
        group["legacy_note"] = "earlier runs under this group's name, evaluated together (legacy_train_commands)"
    group["flags"] = list(suite.flags) + list(suite.groups[group_name].flags)
    group["train_commands"] = [
        " ".join(train_command(suite_name, suite, group_name, s)) for s in suite.groups[group_name].seeds
    ]
    run = group.setdefault("runs", {}).setdefault(str(seed), {"points": []})
    run["points"] = sorted(
        [r for r in run["points"] if not (r["iteration"] == record["iteration"] and r["request"] == record["request"])]
        + [record],
        key=lambda r: r["iteration"],
    )
    run["training"] = suite_points.training_time(run_path)
    group["points"] = suite_points.pool_group(group["runs"])
    results["eval_command"] = f"python benchmarks/learning.py eval {suite_name}"


def cmd_eval(
    suite_name: str,
    suite: Suite,
    groups: list[str],
    goals_per_class: int | None,
    only_iterations: list[int] | None = None,
    seeds: list[int] | None = None,
    runs: Path = RUNS,
    state: Path = STATE,
) -> None:
    """Meta-test every checkpoint of every run (one record per seed and iteration, added to SUITE.json
    as it is made, so an interrupted eval continues where it stopped), then pool each iteration's seeds.
    A run without a local directory (a fresh clone) is read from its committed state: its latest checkpoint."""
    from metarl_ray.distributed.session import ray_session

    output = RESULTS / f"{suite_name}.json"
    with _locked_results(output) as results:
        done = {
            (g, int(s)): group["runs"][s]["points"]
            for g, group in results["groups"].items()
            for s in group.get("runs", {})
        }
    with ray_session(None):  # one Ray for every point
        for group_name, seed, name in suite_runs(suite_name, suite, groups, seeds):
            run_path = runs / name if checkpoint_iterations(runs / name) else state / suite_name / name
            for iteration in [0, *checkpoint_iterations(run_path)] if checkpoint_iterations(run_path) else []:
                request = eval_request(suite, iteration, goals_per_class)
                checkpoint = (
                    suite_points.initial_checkpoint(run_path, runs / "initial")
                    if iteration == 0
                    else run_path / "checkpoints" / f"checkpoint_{iteration:06d}.pt"
                )
                # Iteration 0's checkpoint is rewritten with the run's current config: its weights identify it.
                sha256 = (
                    suite_points.weights_sha256(Path(checkpoint))
                    if iteration == 0
                    else _checkpoint_sha256(Path(checkpoint))
                )
                if (
                    only_iterations is not None
                    and iteration not in only_iterations
                    or _is_done(done.get((group_name, seed), []), iteration, request, sha256)
                ):
                    continue
                record = suite_points.evaluate_seed(checkpoint, request)
                record.update(
                    checkpoint_sha256=sha256,
                    machine=suite_points.machine(),
                    journal=suite_points.journal_success(run_path, iteration),
                    training=suite_points.training_time(run_path, iteration),
                )
                with _locked_results(output) as results:
                    _add_record(results, suite_name, suite, group_name, seed, record, run_path)
                print(
                    f"{suite_name} {group_name} seed {seed} iteration {iteration}: {summary_line(pool_one(record))} "
                    f"({record['eval_wall_s']:.0f}s)",
                    flush=True,
                )


def pool_one(record: dict) -> dict:
    return suite_points.pool({0: record})


def summary_line(point: dict) -> str:
    rule = point["overall"]["mean_action"]
    text = f"post {rule['post']['mean']:.3f} {rule['post']['mean_ci95']} pre {rule['pre']['mean']:.3f}"
    if point["official"]:
        text += f" | official {point['official']['mean']:.3f}"
    if point["train_classes"]:
        text += f" | train classes post {point['train_classes']['overall']['mean_action']['post']['mean']:.3f}"
    return text


VALIDATION_RULE = (
    "highest post-adaptation success on the validation classes (or goals) under the mean-action rule (the "
    "official metric's rule); ties broken by the sampled rule, then by the mean-action post-adaptation "
    "return; read at the suite's last iteration"
)


def cmd_choose(suite_name: str, suite: Suite) -> None:
    """Rank a validation suite's settings by VALIDATION_RULE (fixed before any run) from SUITE.json;
    writes benchmarks/results/SUITE-choice.json."""
    classes = dict(zip(suite.flags, suite.flags[1:])).get("--validation_classes")
    if classes is None and suite.split != "train":
        raise SystemExit(
            f"choose: suite {suite_name} has no --validation_classes and meta-tests the test split; "
            "only a validation suite chooses settings"
        )
    expected_split = "validation classes" if classes else "train"
    results = _read_results(suite_name)
    rows = []
    for name, group in results["groups"].items():
        final = [p for p in group["points"] if p["iteration"] == suite.num_epochs]
        if not final:
            continue
        point = final[0]
        if not point["protocol"]["split"].startswith(expected_split):
            raise SystemExit(
                f"choose: {suite_name} {name} was meta-tested on {point['protocol']['split']}; "
                f"expected {'its validation classes' if classes else 'the training goals never trained on'}"
            )
        mean_rule = point["overall"]["mean_action"]
        rows.append(
            {
                "group": name,
                "flags": group["flags"],
                "seeds": point["seeds"],
                "env_steps": point["env_steps"],
                "post_mean_action": _estimate(point, "mean_action", "post"),
                "gain_mean_action": _estimate(point, "mean_action", "gain"),
                "post_sampled": _estimate(point, "sampled", "post"),
                "gain_sampled": _estimate(point, "sampled", "gain"),
                "post_mean_return": round(mean_rule["post_mean_return"], 1),
                "per_class_post_mean_action": {
                    c: round(e["mean_action"]["post"]["mean"], 3) for c, e in point["per_task"].items()
                },
                "journal_training_classes": point.get("journal"),
            }
        )
    rows.sort(key=lambda r: (-r["post_mean_action"]["mean"], -r["post_sampled"]["mean"], -r["post_mean_return"]))
    best = rows[0] if rows else None
    overlapping = [
        r["group"]
        for r in rows[1:]
        if best
        and r["post_mean_action"]["ci95"]
        and best["post_mean_action"]["ci95"]
        and r["post_mean_action"]["ci95"][1] >= best["post_mean_action"]["ci95"][0]
    ]
    write_report(
        f"{suite_name}-choice",
        {
            "command": f"python benchmarks/learning.py choose {suite_name}",
            "suite": suite.title,
            "rule": VALIDATION_RULE,
            "validation_classes": classes,
            "validation_split": suite.split,
            "test_classes_used": False,
            "chosen": best and best["group"],
            "intervals_overlapping_the_chosen": overlapping,
            "ranking": rows,
            "evaluated_with": results.get("eval_command"),
            "machine": results.get("machine"),
        },
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def _check_suite_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, suite: Suite, groups: list[str]
) -> None:
    """One line per mistake (the parser's error), before anything runs."""
    if args.until_iteration is not None and (
        not 0 < args.until_iteration <= suite.num_epochs or args.until_iteration % suite.checkpoint_every
    ):
        parser.error(
            f"--until_iteration: {args.until_iteration}; expected a multiple of {suite.checkpoint_every} "
            f"in [{suite.checkpoint_every}, {suite.num_epochs}]"
        )
    if any(group not in suite.groups for group in groups):
        parser.error(f"--groups: {' '.join(groups)}; suite {args.suite} has {', '.join(suite.groups)}")
    if args.goals_per_class is not None and not 1 <= args.goals_per_class <= 50:
        parser.error(f"--goals_per_class: {args.goals_per_class}; expected an integer in [1, 50]")
    unknown = sorted(set(args.seeds or ()) - {s for g in groups for s in suite.groups[g].seeds})
    if unknown:
        parser.error(f"--seeds: {unknown} not among the seeds of {', '.join(groups)} in suite {args.suite}")


def main() -> int:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("train", "save", "status", "eval", "plot", "table", "compare", "choose"))
    parser.add_argument(
        "suite",
        choices=sorted(SUITES),
        nargs="?",
        default=None,
        help="required but by compare (which reads every suite)",
    )
    parser.add_argument("--groups", nargs="+", default=None, help="groups to act on (default: the suite's)")
    parser.add_argument("--goals_per_class", type=int, default=None, help="default: the suite's (ML: every goal)")
    parser.add_argument("--iterations", type=int, nargs="+", default=None, help="evaluate only these checkpoints")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="train or evaluate only these of the suite's seeds"
    )
    parser.add_argument(
        "--until_iteration",
        type=int,
        default=None,
        help="train: stop at this iteration (a multiple of the suite's checkpoint interval; "
        "a later train continues from there exactly)",
    )
    parser.add_argument(
        "--runs_dir",
        type=Path,
        default=RUNS,
        help=f"run directories (default {RUNS}), e.g. those of a git worktree training at a fixed commit",
    )
    args = parser.parse_args()
    if args.command not in ("train", "eval") and args.seeds is not None:
        parser.error(f"--seeds: given to {args.command}; it is an option of train and eval")
    if args.command != "train" and args.until_iteration is not None:
        parser.error(f"--until_iteration: given to {args.command}; it is an option of train")
    if args.command == "compare":
        cmd_compare()
        return 0
    if args.suite is None:
        parser.error(f"suite: missing; expected one of {', '.join(sorted(SUITES))}")
    suite = SUITES[args.suite]
    groups = args.groups or list(suite.groups)
    _check_suite_args(parser, args, suite, groups)
    if args.command == "train":
        cmd_train(args.suite, suite, groups, args.seeds, args.until_iteration, args.runs_dir)
    elif args.command == "save":
        cmd_save(args.suite, suite, groups, args.runs_dir)
    elif args.command == "status":
        cmd_status(args.suite, suite, groups, args.runs_dir)
    elif args.command == "eval":
        cmd_eval(args.suite, suite, groups, args.goals_per_class, args.iterations, args.seeds, args.runs_dir)
        if (RESULTS / f"{args.suite}.json").is_file():
            cmd_plot(args.suite, suite.title)
    elif args.command == "plot":
        cmd_plot(args.suite, suite.title)
    elif args.command == "choose":
        cmd_choose(args.suite, suite)
    else:
        cmd_table(args.suite, args.groups)
    return 0


if __name__ == "__main__":
    sys.exit(main())
