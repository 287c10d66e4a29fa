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
    lines = [
        "| System | " + " | ".join(f"{s} BLEU | {s} Reward" for s in subsets) + " |",
        "|---|" + "---:|---:|" * len(subsets),
    ]
    for system, by_subset in results.items():
        cells = " | ".join(f"{_fmt(by_subset[s]['bleu'])} | {_fmt(by_subset[s]['reward'])}" for s in subsets)
        lines.append(f"| {system} | {cells} |")
    lines += [
        "",
        "| System | " + " | ".join(f"{s} sacreBLEU" for s in subsets) + " |",
        "|---|" + "---:|" * len(subsets),
    ]
    for system, by_subset in results.items():
        lines.append(f"| {system} | " + " | ".join(_fmt(by_subset[s]["sacrebleu"]) for s in subsets) + " |")
    # Reward functions' metrics: every key beyond the fixed ones (each a function's name)
    extra = [
        key for key in next(iter(results.values()))[subsets[-1]] if key not in ("bleu", "sacrebleu", "reward", "n")
    ]
    if extra:
        lines += [
            "",
            "| System | " + " | ".join(f"{s} {name}" for s in subsets for name in extra) + " |",
            "|---|" + "---:|" * (len(subsets) * len(extra)),
        ]
        for system, by_subset in results.items():
            cells = " | ".join(f"{by_subset[s][name]:.4f}" for s in subsets for name in extra)
            lines.append(f"| {system} | {cells} |")
    counts = ", ".join(f"{s} {next(iter(results.values()))[s]['n']}" for s in subsets)
    lines += [
        "",
        f"Rows: {counts}.",
        "BLEU: the authors' nltk sentence BLEU (character 4-grams, no smoothing) x 100, "
        "averaged over rows; Reward: sigmoid(reward model score) x 100, averaged over rows; sacreBLEU: corpus "
        "BLEU (13a); total: over all rows (sample-weighted).",
    ]
    lines += list(notes)
    return "\n".join(lines) + "\n"


def plot_groups(results: dict[str, dict[str, dict]]) -> list[str]:
    """The groups of bars `plot_results` draws: every subset and the total, or the only subset alone (its total is
    the same numbers)."""
    groups = list(next(iter(results.values())).keys())
    subsets = [group for group in groups if group != TOTAL]
    return subsets if len(subsets) == 1 else groups


#: Value labels: font size (points), and above how many systems they are turned upright (side by side, the
#: labels of 4+ systems need more room than a bar).
LABEL_FONTSIZE = 7
UPRIGHT_LABELS_ABOVE = 3
#: Above this many bars per panel the value labels are left out (results.md has the numbers).
MAX_LABELLED_BARS = 80


def plot_results(results: dict[str, dict[str, dict]], path: str | os.PathLike, title: str = "") -> None:
    """Bar chart: BLEU and Reward per subset and in total (`plot_groups`), one bar per system (written atomically).
    The figure widens with the number of bars, so that their value labels never overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = plot_groups(results)
    metrics = [("bleu", "BLEU (authors', x100)")]
    if any(by_subset[TOTAL]["reward"] is not None for by_subset in results.values()):
        metrics.append(("reward", "Reward (sigmoid x100)"))
    num_systems = len(results)
    upright = num_systems > UPRIGHT_LABELS_ABOVE
    labelled = num_systems * len(groups) <= MAX_LABELLED_BARS
    # Room per bar, in inches: a label's height when upright ("%.1f" at 7 points), its width ("100.0") otherwise,
    # with a margin; the x axis spans about the groups plus matplotlib's 5% margins
    pitch = (1.4 if upright else 1.25) * LABEL_FONTSIZE / 72 * (1.2 if upright else 3.0)
    span = (len(groups) - 0.2) * 1.1
    axes_width = pitch * span * num_systems / 0.8
    panel_width = max(4.0, 1.2 + axes_width)
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(panel_width * len(metrics), 4.5), squeeze=False, layout="constrained"
    )
    width = 0.8 / num_systems
    for ax, (key, label) in zip(axes[0], metrics):
        for k, (system, by_subset) in enumerate(results.items()):
            values = [by_subset[g][key] or 0.0 for g in groups]
            xs = [i + (k - (num_systems - 1) / 2) * width for i in range(len(groups))]
            bars = ax.bar(xs, values, width, label=system)
            if labelled:
                ax.bar_label(bars, fmt="%.1f", fontsize=LABEL_FONTSIZE, rotation=90 if upright else 0)
        ax.set_xticks(range(len(groups)), groups, rotation=15)
        top = max((by_subset[g][key] or 0.0) for by_subset in results.values() for g in groups)
        ax.set_ylim(0, (1.2 if upright else 1.1) * top if top > 0 else 1.0)  # room for the labels above the bars
        ax.set_ylabel(label)
        ax.set_title(label)
    # One legend for both panels, below them: inside, it would cover the bars and labels of many systems
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="outside lower center",
        fontsize=8,
        ncol=max(1, min(num_systems, int(panel_width * len(metrics) / 1.3))),
    )
    if title:
        fig.suptitle(title)
    try:
        atomic_write(path, lambda temporary: fig.savefig(temporary, dpi=110, format="png"))
    finally:
        plt.close(fig)
