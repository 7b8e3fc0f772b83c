"""Meta-test of one or more runs (seeds) on every held-out goal, with confidence intervals.

For each run and each goal of the benchmark's test split (ML) or training tasks (MT) the rollout
worker's ``evaluate`` records, under two named action rules:
- ``mean_action``: one episode acting with the policy mean, before and after adaptation (the rule of
  Meta-World's official evaluation; a goal's mean-action episodes are identical, so one is the sample);
- ``sampled``: K episodes of sampled actions before and after adaptation (the rule of training).
Pre- and post-adaptation always use the same rule, so a gain is an adaptation gain, not a change of
rule. Scores per (seed, goal) are summarised per task class and overall by ``statistics.estimate``.

Meta-World's official figures (``evaluation.evaluate_official``) are computed beside them on the first
``official_goals_per_class`` goals of each class; they over-count success (see README).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metarl_ray.algorithms.base import build_meta_policy, builder_for
from metarl_ray.batch import GoalEvaluation
from metarl_ray.config import EVAL_SPLITS, ConfigError, TrainConfig, config_from_dict, method_settings
from metarl_ray.envs import TaskSpec, env_family, fixed_task_specs
from metarl_ray.evaluation.agent import build_agent, evaluate_official
from metarl_ray.evaluation.statistics import estimate
from metarl_ray.policies.common import params_to_numpy
from metarl_ray.training.checkpoint import CHECKPOINT_DIR, load_checkpoint, resolve_checkpoint, trained_config
from metarl_ray.training.rollout import EvalPlan
from metarl_ray.training.storage import StoragePath

logger = logging.getLogger(__name__)
TEST_MODE_GOALS_PER_CLASS = 2  # the fewest that give an interval
OFFICIAL_GOALS_PER_CLASS = 10  # Meta-World's official evaluation holds one sub-env per goal
RULES = ("mean_action", "sampled")


@dataclass(frozen=True)
class EvalOptions:
    goals_per_class: int | None = None  # None: every goal (test-mode runs: TEST_MODE_GOALS_PER_CLASS)
    num_sampled_episodes: int = 3
    official: bool = True
    official_goals_per_class: int | None = None  # None: OFFICIAL_GOALS_PER_CLASS
    num_evals: int = 1  # rounds of Meta-World's official ML evaluation
    mt_episodes: int | None = None  # official MT evaluation: episodes per task (default 50; test mode 2)
    num_workers: int | None = None  # None: one Ray rollout actor per CPU; 0: in this process, no Ray
    # test: held-out classes (ML; the validation classes of a validation run) or the training goals (MT);
    # train: the training classes on goals never trained on (no official figure: Meta-World has no such split).
    split: str = "test"
    # Sub-envs of the official ML evaluation; None: one per goal (classes x official goals). Meta-World+
    # uses 20 (4 per ML10 test class) over 40 goals per class, visited in num_evals=10 rounds.
    official_meta_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.split not in EVAL_SPLITS:
            raise ConfigError(f"--split={self.split!r}: expected one of {', '.join(EVAL_SPLITS)}")


@dataclass(frozen=True)
class RunToEvaluate:
    checkpoint: StoragePath
    config: TrainConfig
    meta_params: dict[str, np.ndarray]
    iteration: int
    env_steps: int
    adapting_config: TrainConfig  # ``config`` with the learning rates it was trained with (lower after rollbacks)

    @property
    def inner_lr(self) -> float:
        """What the meta-parameters adapt with: agents, workers and official evaluations use it."""
        return self.adapting_config.maml.inner_lr

    @property
    def seed(self) -> int:
        # The run's seed fixes the benchmark's goal sets; Meta-World derives the test goals of seed s from
        # s + 1, so another seed could hand back the run's own training goals as "held out".
        return self.config.run.seed


@dataclass
class OfficialResult:
    success_rate: float
    mean_return: float
    per_task: dict[str, float] = field(default_factory=dict)


def find_checkpoints(location: StoragePath) -> list[StoragePath]:
    """A checkpoint file, a run directory (its latest), or a Tune experiment directory (each trial's
    latest checkpoint, from the run directory the trainable keeps in every trial)."""
    checkpoint = resolve_checkpoint(location)
    if checkpoint is not None:
        return [checkpoint]
    if not location.is_dir():
        return []
    trials = sorted(
        (trial / "run" for trial in location.iterdir() if (trial / "run" / CHECKPOINT_DIR).is_dir()),
        key=lambda run: run.path,
    )
    return [c for c in (resolve_checkpoint(run) for run in trials) if c is not None]


def load_run(checkpoint: StoragePath) -> RunToEvaluate:
    try:
        state = load_checkpoint(checkpoint)
        config = config_from_dict(state["config"])
        adapting_config = trained_config(state)  # runs are compared by ``config``, adapt by this
        family = env_family(config.env)
        policy = build_meta_policy(config.meta_learner, family, config.policy, config.maml)
        policy.load_state_dict(state["learner"]["policy"])  # also checks the checkpoint fits the config
    except (KeyError, RuntimeError, TypeError, ValueError) as error:  # a damaged or foreign checkpoint is input
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise ConfigError(f"--checkpoint={str(checkpoint)!r}: not a usable metarl-ray checkpoint ({reason})") from None
    params = params_to_numpy(dict(policy.named_parameters()))
    return RunToEvaluate(
        checkpoint, config, params, int(state["iteration"]), int(state.get("env_steps_total", 0)), adapting_config
    )


def check_compatible(runs: Sequence[RunToEvaluate]) -> None:
    """Runs pooled into one estimate must be seeds of one method on one benchmark at one budget."""
    first = method_settings(runs[0].config.to_dict())
    for run in runs[1:]:
        other = method_settings(run.config.to_dict())
        for section, values in first.items():
            for name in sorted(values):
                if values[name] != other[section].get(name):
                    raise ConfigError(
                        f"--checkpoint={str(run.checkpoint)!r}: {name}={other[section][name]!r} differs from "
                        f"{values[name]!r} of {runs[0].checkpoint}; "
                        "expected seeds of one method (evaluate each setting apart)"
                    )
        if run.env_steps != runs[0].env_steps:
            raise ConfigError(
                f"--checkpoint={str(run.checkpoint)!r}: env_steps={run.env_steps} differs from {runs[0].env_steps} of "
                f"{runs[0].checkpoint}; expected checkpoints at one training budget (pass checkpoint files)"
            )
    seeds = [run.seed for run in runs]
    if len(set(seeds)) < len(seeds):
        # Same seed: the same goals and the same evaluation noise, so pooling would count one
        # policy's luck twice (or, for the same checkpoint twice, the very same episodes).
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        raise ConfigError(f"--checkpoint: runs share seed(s) {repeated}; expected one checkpoint per seed")


def goals_per_class_for(options: EvalOptions, config: TrainConfig) -> int:
    if options.goals_per_class is not None:
        return options.goals_per_class
    return TEST_MODE_GOALS_PER_CLASS if config.run.test_mode else env_family(config.env).goals_per_class


def official_goals_for(options: EvalOptions, goals_per_class: int) -> int:
    """Goals per class of the official figure: as asked, else the default capped at the direct figure's."""
    return options.official_goals_per_class or min(goals_per_class, OFFICIAL_GOALS_PER_CLASS)


def goal_specs(run: RunToEvaluate, goals_per_class: int, split: str = "test") -> list[TaskSpec]:
    return fixed_task_specs(
        env_family(run.config.env).tasks(run.config.env, run.seed).evaluation_tasks(split), goals_per_class
    )


def official_applies(config: TrainConfig, options: EvalOptions) -> bool:
    """Meta-World's own functions score its own splits: never the training classes' unseen goals, nor
    a validation run (their ML env would hand it the test classes it must not see)."""
    return options.official and options.split == "test" and not config.env.validation_classes


def _goal_score(goal: GoalEvaluation, rule: str, phase: str, returns: bool = False) -> float:
    kind = "return" if returns else "success"
    if rule == "mean_action":
        return float(getattr(goal, f"{phase}_mean_{kind}"))
    return float(np.mean(getattr(goal, f"{phase}_sampled_{kind}{'es' if kind == 'success' else 's'}")))


def goal_scores(goal: GoalEvaluation) -> dict[str, Any]:
    """One goal's scores as plain numbers, keyed ``RULE/PHASE_KIND``: what a report keeps so that seeds
    evaluated apart can be pooled later (``summarize_scores``) exactly as if evaluated together."""
    record: dict[str, Any] = {"task": goal.env_name, "goal": goal.goal_index}
    for rule in RULES:
        for phase in ("pre", "post"):
            record[f"{rule}/{phase}_success"] = round(_goal_score(goal, rule, phase), 6)
            record[f"{rule}/{phase}_return"] = round(_goal_score(goal, rule, phase, returns=True), 3)
    return record


def score_table(
    results: Sequence[Sequence[dict[str, Any]]], classes: Sequence[str], rule: str, phase: str, returns: bool = False
) -> np.ndarray:
    """(seeds, classes, goals) scores from ``goal_scores`` records: every run has as many goals per class."""
    key = f"{rule}/{phase}_{'return' if returns else 'success'}"
    table = [[[g[key] for g in run if g["task"] == name] for name in classes] for run in results]
    sizes = {len(goals) for run in table for goals in run}
    if len(sizes) != 1:
        raise ValueError(f"goal counts per (run, class) differ: {sorted(sizes)}")
    return np.array(table)


def summarize_rule(results: Sequence[Sequence[dict[str, Any]]], classes: Sequence[str], rule: str) -> dict[str, Any]:
    """Pre, post and the paired gain (post - pre, goal by goal) of one action rule, plus mean returns."""
    pre, post = (score_table(results, classes, rule, phase) for phase in ("pre", "post"))
    return {
        "pre": estimate(pre).to_dict(),
        "post": estimate(post).to_dict(),
        "gain": estimate(post - pre).to_dict(),
        "pre_mean_return": float(score_table(results, classes, rule, "pre", returns=True).mean()),
        "post_mean_return": float(score_table(results, classes, rule, "post", returns=True).mean()),
    }


def summarize_scores(results: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """Overall and per-class estimates per rule of runs' ``goal_scores`` records (one list per seed)."""
    classes = sorted({goal["task"] for run_results in results for goal in run_results})
    return {
        "overall": {rule: summarize_rule(results, classes, rule) for rule in RULES},
        "per_task": {name: {rule: summarize_rule(results, [name], rule) for rule in RULES} for name in classes},
    }


def summarize(
    runs: Sequence[RunToEvaluate],
    evaluations: Sequence[Sequence[GoalEvaluation]],
    official: Sequence[OfficialResult | None],
    options: EvalOptions,
    goals_per_class: int,
) -> dict[str, Any]:
    """The report ``metarl eval --json`` prints: overall and per-class estimates per rule, and per run
    (with every goal's scores)."""
    results = [[goal_scores(goal) for goal in run_results] for run_results in evaluations]
    classes = sorted({goal["task"] for run_results in results for goal in run_results})
    config = runs[0].config
    pooled = summarize_scores(results)
    overall, per_task = pooled["overall"], pooled["per_task"]
    have_official = [o for o in official if o is not None]
    for name, entry in per_task.items():
        values = [o.per_task[name] for o in have_official if name in o.per_task]
        entry["success_rate_official"] = float(np.mean(values)) if values else None
    per_run = [
        {
            "checkpoint": str(run.checkpoint),
            "seed": run.seed,
            "iteration": run.iteration,
            "env_steps": run.env_steps,
            "success_rate": {
                rule: {
                    phase: float(score_table([run_results], classes, rule, phase).mean(axis=-1).mean())
                    for phase in ("pre", "post")
                }
                for rule in RULES
            },
            "success_rate_official": None if run_official is None else run_official.success_rate,
            "mean_return_official": None if run_official is None else run_official.mean_return,
            "per_task_official": None if run_official is None else run_official.per_task,
            "goals": run_results,
        }
        for run, run_results, run_official in zip(runs, results, official)
    ]
    headline = overall["mean_action"]
    return {
        "benchmark": config.env.benchmark,
        "task": config.env.task if config.env.benchmark in ("ML1", "MT1") else None,
        "num_runs": len(runs),
        # Headline figures: the mean-action rule, as Meta-World's own evaluation acts.
        "success_rate": headline["post"]["mean"],
        "pre_adapt_success_rate": headline["pre"]["mean"],
        "mean_return": headline["post_mean_return"],
        "success_rate_official": float(np.mean([o.success_rate for o in have_official])) if have_official else None,
        "mean_return_official": float(np.mean([o.mean_return for o in have_official])) if have_official else None,
        "overall": overall,
        "per_task": per_task,
        "runs": per_run,
        "protocol": {
            "split": _split_name(config, options.split),
            "goals_per_class": goals_per_class,
            "num_goals_per_run": sum(len(r) for r in results) // max(1, len(results)),
            "algorithm": config.meta_learner.algorithm,
            # An in-context learner adapts in one trial of the adaptation episodes; its pre-adaptation
            # sampled episodes start fresh memories, its post-adaptation ones continue the trial's memory.
            "adaptation_episodes": EvalPlan.num_adaptation_episodes,
            **builder_for(config.meta_learner).adaptation_protocol(config),
            "sampled_episodes": options.num_sampled_episodes,
            "mean_action_episodes": 1,
            "max_episode_length": config.env.max_episode_length,
            "seeds": [run.seed for run in runs],
            "score": "per (seed, goal); mean_action: its one episode's success (0/1); "
            "sampled: the fraction of its episodes that succeed",
            "interval": "95% percentile, two-stage bootstrap (seeds, then goals within each seed and task class; "
            "classes are strata), 5000 resamples",
            "mean": "mean over task classes of the class mean over seeds and goals",
            "iqm": "mean of the middle 50% of the per-(seed, class) success rates (rliable's aggregate_iqm)",
            "official": None
            if not have_official
            else {
                "goals_per_class": official_goals_for(options, goals_per_class),
                "num_evals": options.num_evals,
                "meta_batch_size": options.official_meta_batch_size,
                "mt_episodes": options.mt_episodes,
                "note": "Meta-World's own functions; they over-count success (README)",
            },
        },
    }


def check_official_layout(run: RunToEvaluate, options: EvalOptions, goals_per_class: int) -> None:
    """Meta-World's ML vector env splits its sub-envs evenly over the test classes and each class's goals
    evenly over its sub-envs; a layout that does not divide is a one-line error, not a traceback."""
    if not run.config.env.is_meta_learning or options.official_meta_batch_size is None:
        return
    num_classes = len(env_family(run.config.env).tasks(run.config.env, run.seed).test_tasks())
    size, goals = options.official_meta_batch_size, official_goals_for(options, goals_per_class)
    if size % num_classes or goals % (size // num_classes):
        raise ConfigError(
            f"--official_meta_batch_size={size}: expected a multiple of the {num_classes} test classes "
            f"whose sub-envs per class divide --official_goals_per_class={goals}"
        )


def _split_name(config: TrainConfig, split: str) -> str:
    if split == "train":
        return "train classes, held-out goals" if config.env.is_meta_learning else "train, held-out goals"
    if config.env.validation_classes:
        return f"validation classes ({config.env.validation_classes})"
    return "test" if config.env.is_meta_learning else "train"


def official_result(
    config: TrainConfig,
    meta_params: dict[str, np.ndarray],
    goals_per_class: int,
    num_evals: int,
    mt_episodes: int,
    meta_batch_size: int | None = None,
) -> OfficialResult:
    agent = build_agent(config, meta_params)
    success, mean_return, per_task = evaluate_official(
        agent, config, goals_per_class, num_evals, mt_episodes, config.run.seed, meta_batch_size
    )
    return OfficialResult(success, mean_return, per_task)
