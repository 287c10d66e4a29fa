"""Soak: `trl-pro pro` on the quickstart recipe for 2,000 optimizer steps, watching for slow failures.

A benchmark, not a CI test (a smoke test runs it for a few steps). One process, the quickstart settings
(`recipes/quickstart.yaml`: built-in tiny Llama, vendored HH-RLHF slice, batch 8, fp32 on CPU) with `max_steps`
raised to 2,000 (about 13 epochs over the 1,196 valid rows), `logging_steps=1` and TRL/transformers' NaN filter off
(`logging_nan_inf_filter=false`), so every step's own loss and gradient norm are recorded as computed. It checks:

- the loss and the gradient norm are finite at every step;
- memory: the resident set size (RSS) after every step; the slope of a least-squares line over the last 1,000 steps
  must stay under `RSS_SLOPE_BOUND_KIB_PER_STEP` (a leak of one batch's activations per step would be ~MiB/step);
- skipped batches: a step is counted as skipped when its loss or gradient norm is not finite or it saw no tokens
  (`num_tokens` did not grow). There should be none. Rows the data path drops (`drop_invalid_rows`) are reported
  separately, with their reason: they never reach a batch.

Results: `benchmarks/results/soak.json` (every step's loss, gradient norm and RSS), `soak.md` and `soak.png`.

    python benchmarks/soak.py                    # 2,000 steps, ~7-15 min on a 2-core CPU
    python benchmarks/soak.py --steps 5 --output /tmp/soak   # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
RECIPE = REPO / "recipes" / "quickstart.yaml"
#: Bound on the RSS growth over the last 1,000 steps (least-squares slope). 4 KiB/step = 4 MiB per 1,000 steps: the
#: allocator's and Python's own drift on this machine stays below it, a per-step leak of any tensor of the step
#: (a batch is ~8 x 512 tokens; its logits alone are MiBs) is far above it.
RSS_SLOPE_BOUND_KIB_PER_STEP = 4.0
SLOPE_WINDOW = 1000
VERDICTS = {True: "within", False: "**EXCEEDED**", None: f"not judged: window under {SLOPE_WINDOW} steps"}


def _write_atomic(path: Path, data: str | bytes) -> None:
    """Write `path` through a temporary file and `os.replace`: never a half-written result file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "wb") as file:
        file.write(data.encode() if isinstance(data, str) else data)
    os.replace(temporary, path)


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var if var else 0.0


def run(steps: int, output_dir: str, output: Path | None = None, write_every: int = 0) -> dict:
    import psutil
    from transformers import TrainerCallback

    process = psutil.Process()
    records: dict[int, dict] = {}
    dropped: list[str] = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            records.setdefault(state.global_step, {})["rss_mib"] = process.memory_info().rss / 2**20
            records[state.global_step]["time_s"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                entry = records.setdefault(state.global_step, {})
                entry.update(loss=logs["loss"], grad_norm=logs.get("grad_norm"), num_tokens=logs.get("num_tokens"))
                if write_every and state.global_step % write_every == 0 and state.global_step < steps:
                    # partial results, so that an interrupted soak still leaves a report of the steps it ran
                    report = summarise(
                        records, steps, time.perf_counter() - start, dropped, len(trainer.train_dataset), rss_before
                    )
                    write_report(report, output, with_plot=False)  # no matplotlib in the measured process

    argv = [
        "--config",
        str(RECIPE),
        "--max_steps",
        str(steps),
        "--logging_steps",
        "1",
        "--logging_nan_inf_filter",
        "false",
        "--output_dir",
        output_dir,
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "false",
        "--no_eval_before_training",
    ]
    from trl_pro.cli import training
    from trl_pro.utils.quiet import quiet_known_noise

    parser = training.make_method_parser(training.PRO)
    script_args, training_args, model_args, dataset_args = training.parse_args(parser, argv)
    quiet_known_noise()

    import logging

    class Dropped(logging.Handler):  # the trainer's "Dropped N of M rows ..." warning, kept for the report
        def emit(self, record):
            if "Dropped" in record.getMessage():
                dropped.append(record.getMessage())

    logging.getLogger("trl_pro.trainers").addHandler(Dropped())
    trainer, _ = training.build_trainer(script_args, training_args, model_args, dataset_args)
    trainer.add_callback(Watch())
    rss_before = process.memory_info().rss / 2**20
    start = time.perf_counter()
    trainer.train()

    return summarise(records, steps, time.perf_counter() - start, dropped, len(trainer.train_dataset), rss_before)


def summarise(
    records: dict[int, dict], steps: int, wall: float, dropped: list[str], train_rows: int, rss_before: float
) -> dict:
    rows = [
        {"step": step, **records[step]}
        for step in sorted(records)
        if step > 0 and "loss" in records[step] and "rss_mib" in records[step]
    ]
    skipped, previous_tokens = [], 0
    for row in rows:
        reasons = []
        if row.get("loss") is None or not math.isfinite(row["loss"]):
            reasons.append(f"loss {row.get('loss')}")
        if row.get("grad_norm") is None or not math.isfinite(row["grad_norm"]):
            reasons.append(f"grad_norm {row.get('grad_norm')}")
        if row.get("num_tokens") is None or row["num_tokens"] <= previous_tokens:
            reasons.append("no tokens")
        previous_tokens = row.get("num_tokens") or previous_tokens
        if reasons:
            skipped.append({"step": row["step"], "why": ", ".join(reasons)})
    window = rows[-SLOPE_WINDOW:]
    rss_slope_kib = slope([r["step"] for r in window], [r["rss_mib"] for r in window]) * 1024
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    return {
        "steps": len(rows),
        "requested_steps": steps,
        "complete": len(rows) == steps,
        "wall_time_s": wall,
        "rows_dropped_by_data_path": dropped,
        "train_rows": train_rows,
        "loss_finite_every_step": len(losses) == len(rows) and all(math.isfinite(v) for v in losses),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "min_loss": min(losses) if losses else None,
        "max_loss": max(losses) if losses else None,
        "skipped_steps": skipped,
        "rss_before_training_mib": rss_before,
        "rss_max_mib": max(r["rss_mib"] for r in rows),
        "rss_slope_window_steps": len(window),
        "rss_slope_kib_per_step": rss_slope_kib,
        "rss_slope_bound_kib_per_step": RSS_SLOPE_BOUND_KIB_PER_STEP,
        # judged on a full window only: over a few steps the slope is the warm-up (allocator, data loader)
        "rss_within_bound": rss_slope_kib <= RSS_SLOPE_BOUND_KIB_PER_STEP if len(window) == SLOPE_WINDOW else None,
        "per_step": rows,
    }


def environment() -> dict:
    import torch
    import transformers
    import trl

    import trl_pro

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "trl_pro": trl_pro.__version__,
    }


def markdown(report: dict) -> str:
    env = report["environment"]
    ok = "yes" if report["loss_finite_every_step"] else "**NO**"
    lines = [
        "# Soak: quickstart recipe for {} steps (CPU)".format(report["steps"]),
        "",
        *(
            []
            if report["complete"]
            else [
                f"**Partial result: {report['steps']} of {report['requested_steps']} steps** (written while the soak "
                "runs; the run was stopped or is still going).",
                "",
            ]
        ),
        f"Command: `python benchmarks/soak.py --steps {report['requested_steps']}` "
        f"(`recipes/quickstart.yaml`, `max_steps={report['requested_steps']}`, `logging_steps=1`, "
        "`logging_nan_inf_filter=false`).",
        f"Date {env['date']}; {env['cpu_count']} CPU threads, shared machine; torch {env['torch']}, transformers "
        f"{env['transformers']}, trl {env['trl']}, trl-pro {env['trl_pro']}.",
        "",
        "| check | result |",
        "|---|---|",
        f"| optimizer steps run | {report['steps']} of {report['requested_steps']} |",
        f"| loss finite at every step | {ok} (first {report['first_loss']:.4f}, last {report['last_loss']:.4f}, "
        f"range {report['min_loss']:.4f} .. {report['max_loss']:.4f}) |",
        f"| steps that skipped a batch | {len(report['skipped_steps'])} |",
        f"| RSS slope, last {report['rss_slope_window_steps']} steps | {report['rss_slope_kib_per_step']:+.3f} "
        f"KiB/step (bound {report['rss_slope_bound_kib_per_step']} KiB/step: "
        f"{VERDICTS[report['rss_within_bound']]}) |",
        f"| RSS before training / max | {report['rss_before_training_mib']:.0f} MiB / "
        f"{report['rss_max_mib']:.0f} MiB |",
        f"| rows dropped by the data path (never batched) | "
        f"{'; '.join(report['rows_dropped_by_data_path']) or 'none'} |",
        f"| wall time of training | {report['wall_time_s']:.0f} s |",
        "",
    ]
    if report["skipped_steps"]:
        lines += ["Skipped steps:", ""] + [f"- step {s['step']}: {s['why']}" for s in report["skipped_steps"]] + [""]
    lines += [
        "Every step's loss, gradient norm and RSS are in `soak.json`; `soak.png` plots the loss and the RSS.",
        "The RSS is read after each optimizer step (psutil); the slope is a least-squares fit over the window.",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in report["per_step"]]
    fig, (ax_loss, ax_rss) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax_loss.plot(steps, [r.get("loss") for r in report["per_step"]], linewidth=0.6)
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title(f"Soak: quickstart recipe, {report['steps']} steps (CPU)")
    ax_rss.plot(steps, [r["rss_mib"] for r in report["per_step"]], linewidth=0.8)
    window = report["per_step"][-report["rss_slope_window_steps"] :]
    ax_rss.axvspan(
        window[0]["step"],
        window[-1]["step"],
        alpha=0.1,
        label=f"slope {report['rss_slope_kib_per_step']:+.2f} KiB/step",
    )
    ax_rss.set_ylabel("RSS (MiB)")
    ax_rss.set_xlabel("optimizer step")
    ax_rss.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _write_atomic(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--output", default=str(RESULTS / "soak"), help="results path without suffix")
    parser.add_argument("--write_every", type=int, default=100, help="write partial results every N steps (0: off)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    output = Path(args.output)
    with tempfile.TemporaryDirectory(prefix="trl-pro-soak-") as output_dir:
        report = run(args.steps, output_dir, output, args.write_every)
    write_report(report, output)
    print(markdown({"environment": environment(), **report}))
    return report


def write_report(report: dict, output: Path, with_plot: bool = True) -> None:
    report = {"environment": environment(), **report}
    _write_atomic(output.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    _write_atomic(output.with_suffix(".md"), markdown(report))
    if with_plot:
        plot(report, output.with_suffix(".png"))


if __name__ == "__main__":
    report = main()
    sys.exit(
        0
        if report["loss_finite_every_step"] and not report["skipped_steps"] and report["rss_within_bound"] is not False
        else 1
    )
