"""Reports of an evaluation: the Markdown table and the bar plot of every system's metrics per subset."""

from __future__ import annotations

import os
from collections.abc import Sequence

from trl_pro.evaluation.test_data import TOTAL
from trl_pro.utils.io import atomic_write


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_results_markdown(results: dict[str, dict[str, dict]], notes: Sequence[str] = ()) -> str:
    """Table 2's layout: one row per system, (BLEU, Reward) per subset and in total; a second table gives sacreBLEU
    and the number of rows."""
    subsets = list(next(iter(results.values())).keys())
    lines = ["| System | " + " | ".join(f"{s} BLEU | {s} Reward" for s in subsets) + " |",
             "|---|" + "---:|---:|" * len(subsets)]
    for system, by_subset in results.items():
        cells = " | ".join(f"{_fmt(by_subset[s]['bleu'])} | {_fmt(by_subset[s]['reward'])}" for s in subsets)
        lines.append(f"| {system} | {cells} |")
    lines += ["", "| System | " + " | ".join(f"{s} sacreBLEU" for s in subsets) + " |",
              "|---|" + "---:|" * len(subsets)]
    for system, by_subset in results.items():
        lines.append(f"| {system} | " + " | ".join(_fmt(by_subset[s]["sacrebleu"]) for s in subsets) + " |")
    counts = ", ".join(f"{s} {next(iter(results.values()))[s]['n']}" for s in subsets)
    lines += ["", f"Rows: {counts}.", "BLEU: the authors' nltk sentence BLEU (character 4-grams, no smoothing) x 100, "
              "averaged over rows; Reward: sigmoid(reward model score) x 100, averaged over rows; sacreBLEU: corpus "
              "BLEU (13a); total: over all rows (sample-weighted)."]
    lines += list(notes)
    return "\n".join(lines) + "\n"


def plot_results(results: dict[str, dict[str, dict]], path: str | os.PathLike, title: str = "") -> None:
    """Bar chart: BLEU and Reward per subset and in total, one bar per system (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subsets = list(next(iter(results.values())).keys())
    metrics = [("bleu", "BLEU (authors', x100)")]
    if any(by_subset[TOTAL]["reward"] is not None for by_subset in results.values()):
        metrics.append(("reward", "Reward (sigmoid x100)"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 + 2 * len(subsets), 4), squeeze=False)
    width = 0.8 / len(results)
    for ax, (key, label) in zip(axes[0], metrics):
        for k, (system, by_subset) in enumerate(results.items()):
            values = [by_subset[s][key] or 0.0 for s in subsets]
            xs = [i + (k - (len(results) - 1) / 2) * width for i in range(len(subsets))]
            bars = ax.bar(xs, values, width, label=system)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(subsets)), subsets, rotation=15)
        top = max((by_subset[s][key] or 0.0) for by_subset in results.values() for s in subsets)
        ax.set_ylim(0, 1.3 * top if top > 0 else 1.0)  # room for the legend above the bars
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.legend(fontsize=8, loc="upper center", ncol=min(3, len(results)))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        atomic_write(path, lambda temporary: fig.savefig(temporary, dpi=110, format="png"))
    finally:
        plt.close(fig)


