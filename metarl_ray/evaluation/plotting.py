"""``metarl plot``: learning curves of one or more runs from their metrics journals.

Runs whose configs differ only in the seed (and in settings that do not change the method, such as
where they ran) are seeds of one setting: drawn as their mean with a band from the lowest to the
highest seed, over the iterations every one of them reached. With a handful of seeds a min-max band
shows the spread without pretending to a distribution. Other runs get their own curve and colour.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from metarl_ray.config import ConfigError, config_from_dict, method_settings
from metarl_ray.training.metrics import STEP_KEY, read_metrics
from metarl_ray.training.run_dir import CONFIG_FILE, read_config_dict
from metarl_ray.training.storage import StoragePath

DEFAULT_METRICS = ("post_adapt/success", "pre_adapt/success", "post_adapt/return")
IMAGE_SUFFIXES = (".png", ".pdf", ".svg")


@dataclass(frozen=True)
class Curve:
    label: str
    num_seeds: int
    env_steps: np.ndarray  # (T,) mean over seeds (equal for seeds of one setting)
    mean: np.ndarray  # (T,)
    low: np.ndarray  # (T,) lowest seed
    high: np.ndarray  # (T,) highest seed


def setting_key(config: dict) -> str:
    """Runs of one setting share this key: their method settings, read through ``config_from_dict``
    so that a run saved before a setting existed gets the value it ran with."""
    return json.dumps(method_settings(config_from_dict(config).to_dict()), sort_keys=True)


def load_runs(locations: Sequence[str]) -> dict[str, list[tuple[StoragePath, list[dict]]]]:
    """Runs grouped by setting, in the order given; a location without metrics is a one-line error."""
    groups: dict[str, list[tuple[StoragePath, list[dict]]]] = {}
    for location in locations:
        try:
            run = StoragePath.parse(location)
            is_run = (run / CONFIG_FILE).is_file()
        except (OSError, ValueError) as error:
            raise ConfigError(f"RUN={location!r}: cannot open it ({str(error).splitlines()[0][:200]})") from None
        if not is_run:
            raise ConfigError(
                f"RUN={location!r}: not a run directory (no {CONFIG_FILE}); expected the folder metarl train wrote"
            )
        try:
            rows = read_metrics(run)
        except (OSError, ValueError) as error:
            raise ConfigError(f"RUN={location!r}: unreadable metrics ({str(error).splitlines()[0][:200]})") from None
        if not rows:
            raise ConfigError(
                f"RUN={location!r}: the run has no metrics rows yet; expected a run with at least one iteration"
            )
        groups.setdefault(setting_key(read_config_dict(run)), []).append((run, rows))
    return groups


def curves_of(groups: dict[str, list[tuple[StoragePath, list[dict]]]], metric: str) -> list[Curve]:
    curves = []
    for runs in groups.values():
        length = min(len(rows) for _, rows in runs)
        values = np.array([[row.get(metric, np.nan) for row in rows[:length]] for _, rows in runs], dtype=float)
        steps = np.array([[row[STEP_KEY] for row in rows[:length]] for _, rows in runs], dtype=float).mean(axis=0)
        names = [run.name for run, _ in runs]
        label = names[0] if len(names) == 1 else f"{names[0]} + {len(names) - 1} seed(s)"
        curves.append(
            Curve(
                label,
                len(runs),
                steps,
                np.nanmean(values, axis=0),
                np.nanmin(values, axis=0),
                np.nanmax(values, axis=0),
            )
        )
    return curves


def plot_runs(locations: Sequence[str], metrics: Sequence[str], out: str) -> dict[str, list[Curve]]:
    """Draw one panel per metric and save the figure to ``out`` (a path or URI ending in one of
    IMAGE_SUFFIXES); returns the curves drawn."""
    out_path = StoragePath.parse(out)
    groups = load_runs(locations)
    available = {key for runs in groups.values() for _, rows in runs for row in rows for key in row}
    for metric in metrics:
        if metric not in available:
            raise ConfigError(
                f"--metric={metric!r}: not in these runs' metrics; expected one of "
                f"{', '.join(sorted(k for k in available if '/' in k))}"
            )
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    drawn = {metric: curves_of(groups, metric) for metric in metrics}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for index, curve in enumerate(drawn[metric]):
            color = f"C{index}"
            ax.plot(
                curve.env_steps / 1e6,
                curve.mean,
                color=color,
                label=curve.label + ("" if curve.num_seeds == 1 else f" (mean, band: min-max of {curve.num_seeds})"),
            )
            if curve.num_seeds > 1:
                ax.fill_between(curve.env_steps / 1e6, curve.low, curve.high, color=color, alpha=0.2)
        ax.set_title(metric + (" (training tasks)" if metric.startswith(("pre_adapt/", "post_adapt/")) else ""))
        ax.set_xlabel("env steps (millions)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=out.rsplit(".", 1)[-1].lower(), dpi=110)
    plt.close(fig)
    out_path.write_bytes(buffer.getvalue())  # atomic, and to a URI as well as a path
    return drawn
