"""Reading a learning suite's results (``learning.py plot``, ``table``, ``compare``): SUITE.png, the
Markdown table the README shows, and the in-context vs MAML+PPO comparison; nothing is re-run."""

from __future__ import annotations

import json
from pathlib import Path

from report import write_report  # benchmarks/report.py

RESULTS = Path(__file__).parent / "results"


GROUP_COLORS = {
    "mlp": "tab:blue",
    "ssm": "tab:red",
    "rl2-ssm": "tab:green",
    "rl2-gru": "tab:purple",
    "mt-ppo": "tab:orange",
}
# A group's meta-learner from its name's prefix (learning.py names them so); the rest are MAML+PPO's.
GROUP_PREFIXES = {"rl2-": "rl2 (in context)", "mt-ppo": "mt_ppo (no adaptation)", "meta-sgd": "meta_sgd"}


def is_in_context(group: str) -> bool:
    return group.startswith("rl2-")


def algorithm_of(group: str) -> str:
    return next((name for prefix, name in GROUP_PREFIXES.items() if group.startswith(prefix)), "maml_ppo")


def curve_label(group: str) -> str:
    return group if algorithm_of(group) != "maml_ppo" else f"{group} MAML"


def draw_curve(ax, group: str, points: list[dict], rule: str, phase: str, style: str, label: str) -> None:
    """One group's success curve with its 95% band, against env steps in millions."""
    steps = [p["env_steps"] / 1e6 for p in points]
    means = [p["overall"][rule][phase]["mean"] for p in points]
    cis = [p["overall"][rule][phase]["mean_ci95"] or [m, m] for p, m in zip(points, means)]
    ax.plot(steps, means, style, color=GROUP_COLORS.get(group), label=label)
    ax.fill_between(steps, [c[0] for c in cis], [c[1] for c in cis], color=GROUP_COLORS.get(group), alpha=0.12)


def _read_results(suite_name: str) -> dict:
    path = RESULTS / f"{suite_name}.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; run `python benchmarks/learning.py eval {suite_name}` first")
    return json.loads(path.read_text())


def cmd_plot(suite_name: str, title: str) -> None:
    """SUITE.png: held-out success under each rule, and (third panel) Meta-World's official figure and
    the training classes' success, which tell "did not learn" from "did not transfer"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = _read_results(suite_name)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), sharey=True)
    held_out = "training" if suite_name.startswith("mt") else "held-out"
    for ax, rule in zip(axes, ("mean_action", "sampled")):
        for name, group in results["groups"].items():
            points = group["points"]
            seeds = max(len(p["seeds"]) for p in points)
            for phase, style in (("post", "-o"), ("pre", ":^")):
                draw_curve(
                    ax,
                    name,
                    points,
                    rule,
                    phase,
                    style,
                    f"{curve_label(name)} {phase}-adapt ({seeds} seed(s))",
                )
        ax.set_title(f"{held_out} goals, {rule.replace('_', ' ')} rule")
    for name, group in results["groups"].items():
        color = GROUP_COLORS.get(name)
        official = [
            (p["env_steps"] / 1e6, p["success_rate_official"])
            for p in group["points"]
            if p.get("success_rate_official") is not None
        ]
        if official:
            axes[2].plot(*zip(*official), "-s", color=color, label=f"{name}: official (Meta-World's function)")
        train = [
            (p["env_steps"] / 1e6, p["train_classes"]["overall"]["mean_action"]["post"]["mean"])
            for p in group["points"]
            if p.get("train_classes")
        ]
        if train:
            axes[2].plot(*zip(*train), "--o", color=color, label=f"{name}: training classes, unseen goals, post")
        journal = [(p["env_steps"] / 1e6, p["journal"]["post"]) for p in group["points"] if p.get("journal")]
        if journal:
            axes[2].plot(*zip(*journal), ":", color=color, label=f"{name}: training journal, post (sampled)")
    axes[2].set_title("official figure and training classes")
    for ax in axes:
        ax.set_xlabel("env steps (millions)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("success, mean over classes (95% CI)")
    axes[1].legend(fontsize=7, loc="upper left")
    axes[2].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{title}: meta-test on {held_out} goals")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{suite_name}.png", dpi=110)


def _cell(entry: dict | None, key: str = "mean_ci95") -> str:
    if entry is None:
        return ""
    ci = entry.get(key)
    return f"{entry['mean']:.2f}" + ("" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]")


def cmd_table(suite_name: str, groups: list[str] | None = None) -> None:
    """The curve as a Markdown table (what README.md shows), straight from SUITE.json; ``groups``: only these."""
    results = _read_results(suite_name)
    print(
        "| group | env steps | seeds | goals/class | post (mean action) | pre (mean action) | gain (mean action) "
        "| post (sampled) | gain (sampled) | official | train classes pre → post | journal pre → post | train h |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, group in results["groups"].items():
        if groups is not None and name not in groups:
            continue
        for point in group["points"]:
            mean_rule, sampled = point["overall"]["mean_action"], point["overall"]["sampled"]
            goals = mean_rule["post"]["num_samples"] // len(point["seeds"]) // max(1, len(point["per_task"]))
            official = point.get("official") or (
                None if point["success_rate_official"] is None else {"mean": point["success_rate_official"]}
            )
            train = point.get("train_classes")
            train_cell = (
                ""
                if not train
                else (
                    f"{train['overall']['mean_action']['pre']['mean']:.2f} → "
                    f"{_cell(train['overall']['mean_action']['post'])}"
                )
            )
            journal = point.get("journal")
            journal_cell = "" if not journal else f"{journal['pre']:.2f} → {journal['post']:.2f}"
            hours = [h for h in (point.get("wall_h") or {}).values() if h is not None]
            print(
                f"| {name} | {point['env_steps'] / 1e6:g}M | {len(point['seeds'])} | {goals} "
                f"| {_cell(mean_rule['post'])} "
                f"| {_cell(mean_rule['pre'])} | {_cell(mean_rule['gain'])} | {_cell(sampled['post'])} "
                f"| {_cell(sampled['gain'])} | {_cell(official, 'ci95')} | {train_cell} | {journal_cell} "
                f"| {'' if not hours else f'{max(hours):.2f}'} |"
            )


IN_CONTEXT_GROUPS = ("rl2-ssm", "rl2-gru")
MAML_GROUPS = ("mlp", "ssm")


def _estimate(point: dict, rule: str, phase: str) -> dict:
    entry = point["overall"][rule][phase]
    return {
        "mean": round(entry["mean"], 4),
        "ci95": [round(c, 4) for c in entry["mean_ci95"] or []],
        "num_seeds": entry["num_seeds"],
        "num_samples": entry["num_samples"],
    }


def _group_row(group: str, point: dict) -> dict:
    return {
        "algorithm": algorithm_of(group),
        "policy": group.removeprefix("rl2-"),
        "iteration": point["iteration"],
        "env_steps": point["env_steps"],
        "seeds": point["seeds"],
        "post_mean_action": _estimate(point, "mean_action", "post"),
        "pre_mean_action": _estimate(point, "mean_action", "pre"),
        "gain_mean_action": _estimate(point, "mean_action", "gain"),
        "post_sampled": _estimate(point, "sampled", "post"),
        "official": point["success_rate_official"],
    }


def _largest_shared_budget(groups: dict, names: list[str]) -> int | None:
    """The most env steps at which every named group has an evaluated point (the initial policy aside)."""
    common = set.intersection(*({p["env_steps"] for p in groups[g]["points"] if p["env_steps"] > 0} for g in names))
    return max(common) if common else None


def _rl2_ssm_against_maml_mlp(groups: dict) -> dict | None:
    """The issue's question, at the largest budget these two groups share (other groups may stop earlier)."""
    if not all(groups.get(g, {}).get("points") for g in ("rl2-ssm", "mlp")):
        return None
    budget = _largest_shared_budget(groups, ["rl2-ssm", "mlp"])
    if budget is None:
        return None
    points = [next(p for p in groups[g]["points"] if p["env_steps"] == budget) for g in ("rl2-ssm", "mlp")]
    a, b = (_group_row(g, p)["post_mean_action"] for g, p in zip(("rl2-ssm", "mlp"), points))
    return {
        "budget_env_steps": budget,
        "rl2_ssm": {**a, "seeds": points[0]["seeds"]},
        "maml_mlp": {**b, "seeds": points[1]["seeds"]},
        "same_eval_request": points[0].get("request") == points[1].get("request"),
        "difference": round(a["mean"] - b["mean"], 4),
        "intervals_overlap": None
        if not (a["ci95"] and b["ci95"])
        else bool(a["ci95"][0] <= b["ci95"][1] and b["ci95"][0] <= a["ci95"][1]),
    }


def cmd_compare() -> None:
    """In context vs MAML+PPO: benchmarks/results/in_context.json and .png, from the suites' JSON (nothing
    is re-run). Per suite, every group at the largest budget they all have a point at (the dashed line),
    and rl2-ssm against MAML+PPO's MLP at the largest budget those two share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = {
        "command": "python benchmarks/learning.py compare",
        "question": "held-out post-adaptation success (Meta-World ML1/ML10 test goals) of the in-context learner "
        "with SSM memory against the GRU in-context baseline and MAML+PPO, at the same env-step budget",
        "suites": {},
    }
    suites = [name for name in ("ml1-reach", "ml10") if (RESULTS / f"{name}.json").is_file()]
    fig, axes = plt.subplots(1, max(1, len(suites)), figsize=(6 * max(1, len(suites)), 4.2), squeeze=False)
    for ax, suite_name in zip(axes[0], suites):
        groups = json.loads((RESULTS / f"{suite_name}.json").read_text())["groups"]
        in_context = [g for g in IN_CONTEXT_GROUPS if groups.get(g, {}).get("points")]
        if not in_context:
            report["suites"][suite_name] = {"status": "no in-context group evaluated yet"}
            ax.set_axis_off()
            continue
        present = [g for g in (*MAML_GROUPS, *IN_CONTEXT_GROUPS) if groups.get(g, {}).get("points")]
        budget = _largest_shared_budget(groups, present)
        entry = {"budget_env_steps": budget, "at_budget": {}, "latest": {}}
        for group in present:
            points = groups[group]["points"]
            if budget is not None:
                entry["at_budget"][group] = _group_row(group, next(p for p in points if p["env_steps"] == budget))
            entry["latest"][group] = _group_row(group, points[-1])
            entry["latest"][group]["train_commands"] = groups[group].get("train_commands")
            draw_curve(
                ax,
                group,
                points,
                "mean_action",
                "post",
                "-o",
                f"{group} ({'in context' if is_in_context(group) else 'MAML+PPO'}, {len(points[-1]['seeds'])} seed(s))",
            )
        if budget is not None:
            ax.axvline(budget / 1e6, color="grey", lw=0.8, ls="--")
            ranked = sorted(entry["at_budget"].items(), key=lambda item: -item[1]["post_mean_action"]["mean"])
            entry["ranking_at_budget"] = [
                f"{g}: {row['post_mean_action']['mean']:.3f} {row['post_mean_action']['ci95']}" for g, row in ranked
            ]
        else:
            entry["budget_note"] = "no env-step count at which every group has an evaluated point"
        pair = _rl2_ssm_against_maml_mlp(groups)
        if pair:
            entry["rl2_ssm_above_maml_mlp"] = pair
        at = entry["at_budget"] or entry["latest"]
        entry["seeds"] = {group: row["seeds"] for group, row in at.items()}
        requests = {
            json.dumps(
                next(p for p in groups[g]["points"] if p["iteration"] == row["iteration"]).get("request"),
                sort_keys=True,
            )
            for g, row in at.items()
        }
        entry["same_eval_request"] = len(requests) == 1
        report["suites"][suite_name] = entry
        ax.set_title(f"{suite_name}: post-adaptation success, mean-action rule")
        ax.set_xlabel("env steps (millions)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("held-out success (95% CI over seeds and goals)")
    for name in ("ml1-reach", "ml10"):
        report["suites"].setdefault(
            name,
            {
                "status": f"no results: benchmarks/results/{name}.json is missing "
                f"(python benchmarks/learning.py train {name}, then eval {name})"
            },
        )
    report["caveats"] = [
        "Protocol (metarl eval's, the same for every group; same_eval_request says whether the points asked for the "
        "same goals): every held-out goal, one mean-action episode and 3 sampled ones per goal before and after "
        "adaptation on 10 sampled episodes; MAML adapts by one inner step, rl2 in its memory.",
        "Intervals pool seeds, then goals: a group with fewer seeds (see seeds) has an interval over goals of fewer "
        "seeds, blind to seed-to-seed spread; a difference inside the overlap of two intervals is not a finding.",
        "At the defaults rl2 trains on trials of 10 episodes and is scored on an 11th (docs/usage.md, known gaps).",
        "ML1 reach-v3 is one task class with 50 held-out goals; it says little about ML10's held-out task classes.",
    ]
    fig.tight_layout()
    fig.savefig(RESULTS / "in_context.png", dpi=110)
    write_report("in_context", report)
