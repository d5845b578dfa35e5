"""What ``xlreward eval`` shows of its results: a table per language and a plot of the win rates.

``plot_win_rates`` draws the demo's ``win_rates.png`` too (one marked line per series over the same x labels),
so both pictures share their look. matplotlib is imported only when a plot is drawn (the ``eval`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xlreward.evaluation.lc_variants import DESCRIPTIONS

PLOT_FILE = "win_rates.png"


def results_table(summary: dict[str, Any]) -> str:
    """The summary ``evaluate`` returns, one row per language; with a baseline, a footer saying which LC."""
    rows = summary["languages"]
    baseline = summary["baseline"]
    if baseline is None:
        lines = [
            f"{summary['generator']}, judged by {summary['judge']} (no baseline: mean judge scores only)",
            f"{'language':<10}{'n':>6}{'score':>10}{'length':>9}",
        ]
        lines += [
            f"{language:<10}{row['instructions']:>6}{row['mean_score']:>10.4f}{row['mean_length']:>9.1f}"
            for language, row in rows.items()
        ]
        return "\n".join(lines)
    variant = summary["length_controlled_variant"]
    lines = [
        f"{summary['generator']} against {baseline}, judged by {summary['judge']} (ties count half)",
        f"{'language':<10}{'n':>6}{'WR':>8}{'LC':>8}{'W/T/L':>14}{'score':>10}{'baseline':>10}{'length':>9}",
    ]
    for language, row in rows.items():
        record = f"{row['wins']}/{row['ties']}/{row['losses']}"
        lines.append(
            f"{language:<10}{row['instructions']:>6}{row['win_rate']:>8.1f}"
            f"{row['length_controlled_win_rate']:>8.1f}{record:>14}{row['mean_score']:>10.4f}"
            f"{row['baseline_mean_score']:>10.4f}{row['mean_length']:>9.1f}"
        )
    lines.append(f"LC variant: {variant} ({DESCRIPTIONS[variant]})")
    return "\n".join(lines)


def plot_results(path: Path, summary: dict[str, Any]) -> None:
    """WR and LC per language against the baseline (a summary with one)."""
    rows = summary["languages"]
    variant = summary["length_controlled_variant"]
    plot_win_rates(
        path,
        {
            "win rate": {language: row["win_rate"] for language, row in rows.items()},
            f"length-controlled ({variant})": {
                language: row["length_controlled_win_rate"] for language, row in rows.items()
            },
        },
        ylabel=f"win rate vs {summary['baseline']} (%)",
        title=f"{summary['generator']}: win rate per language, judged by {summary['judge']}",
        legend_title=None,
        connect=False,
    )


def plot_win_rates(
    path: Path,
    series: Mapping[str, Mapping[str, float]],
    *,
    ylabel: str,
    title: str,
    legend_title: str | None,
    target: float | None = None,
    connect: bool = True,
) -> None:
    """One marked line per series (label -> {x label: win rate in percent}) over the first series' x labels,
    on 0-100 with a dotted line at 50 and a dashed one at ``target``; ``connect`` False leaves out the lines
    between markers (x labels that are not a sequence, such as languages)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    labels = list(next(iter(series.values())))
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for name, values in series.items():
        axis.plot(
            labels,
            [values[label] for label in labels],
            marker="o",
            linestyle="-" if connect else "none",
            label=name,
        )
    axis.axhline(50, color="grey", linewidth=0.8, linestyle=":")
    if target is not None:
        axis.axhline(target, color="grey", linewidth=0.8, linestyle="--")
    axis.set_ylabel(ylabel)
    axis.set_ylim(0, 100)
    axis.set_title(title)
    axis.legend(title=legend_title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
