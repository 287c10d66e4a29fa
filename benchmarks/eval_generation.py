"""Eval generation: batched vs one-at-a-time, and the time `trl-pro eval` takes on the 200 held-out prompts.

1. The same prompts are generated (greedy, the authors' settings: 128 new tokens, prompts left-truncated to 384
   tokens) one at a time and in batches of several sizes; repetitions are interleaved (1, 8, 16, 1, 8, 16, ...) so
   that a busy machine slows every setting alike, and each setting's median is reported with its ratio to one at a
   time. The batched responses are checked to equal the one-at-a-time ones.
2. The whole evaluation (`trl_pro.evaluation.systems.evaluate_systems`: generation, BLEU, sacreBLEU, and reward when a reward
   model is given) of one model on the vendored HH-RLHF test slice (200 prompts), timed once, in a fresh folder.

Results: `benchmarks/results/eval_generation.json`, `.md` and `.png`. CPU figures only; GPU: not measured on GPU.

    python benchmarks/eval_generation.py --model_path outputs/quickstart --reward_model_name_or_path path/to/rm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


RESULTS = Path(__file__).resolve().parent / "results"


def _generation_times(model, tokenizer, prompts, batch_sizes, repeats, max_new_tokens):
    from trl_pro.evaluation.responses import generate_responses

    times = {bs: [] for bs in batch_sizes}
    outputs = {}
    generate_responses(model, tokenizer, prompts[:2], batch_size=2, max_new_tokens=4, progress=False)  # warm-up
    for repeat in range(repeats):
        for bs in batch_sizes:
            start = time.perf_counter()
            outputs[bs] = generate_responses(
                model, tokenizer, prompts, batch_size=bs, max_new_tokens=max_new_tokens, progress=False
            )
            times[bs].append(time.perf_counter() - start)
            print(f"repeat {repeat}: batch {bs}: {times[bs][-1]:.2f} s", file=sys.stderr)
    reference = outputs[min(batch_sizes)]
    same = {bs: sum(outputs[bs][p] == reference[p] for p in prompts) for bs in batch_sizes}
    return times, same


def _markdown(report) -> str:
    gen = report["generation"]
    lines = [
        "# Eval generation on CPU",
        "",
        f"Model: `{report['model']}`; {gen['num_prompts']} prompts of the vendored HH-RLHF test slice; greedy, "
        f"{gen['max_new_tokens']} new tokens, prompts left-truncated to 384 tokens; {report['threads']} CPU "
        f"thread(s); {gen['repeats']} interleaved repetitions, medians. Machine: {report['machine']}. "
        "GPU: not measured on GPU.",
        "",
        "| batch size | median time (s) | all runs (s) | speed-up vs one at a time | responses equal to batch 1 |",
        "|---:|---:|---|---:|---:|",
    ]
    for row in gen["rows"]:
        runs = ", ".join(f"{t:.2f}" for t in row["times_s"])
        lines.append(
            f"| {row['batch_size']} | {row['median_s']:.2f} | {runs} | {row['speedup_vs_1']:.2f}x | "
            f"{row['equal_to_batch_1']}/{gen['num_prompts']} |"
        )
    full = report["full_eval"]
    if full is not None:
        rm = full["reward_model"] or "none (no reward)"
        lines += [
            "",
            f"Whole `trl-pro eval` pipeline (generation at batch size {full['batch_size']}, BLEU, "
            f"sacreBLEU, reward model: {rm}) on the {full['num_prompts']} held-out prompts: "
            f"**{full['seconds']:.1f} s** (one run).",
        ]
    lines += [
        "",
        "Batched generation left-pads the prompts; greedy decoding then gives the same tokens as one at a "
        "time up to floating-point ties (the column above counts equal responses).",
    ]
    return "\n".join(lines) + "\n"


def _plot(report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["generation"]["rows"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bars = ax.bar([str(r["batch_size"]) for r in rows], [r["median_s"] for r in rows], color="tab:blue")
    ax.bar_label(bars, labels=[f"{r['speedup_vs_1']:.1f}x" for r in rows])
    ax.set_xlabel("batch size")
    ax.set_ylabel("median time (s)")
    ax.set_title(f"Greedy eval generation, {report['generation']['num_prompts']} prompts (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model_path",
        default="trl-pro/tiny-llama",
        help="model to generate with (default: the untrained built-in tiny Llama)",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the built-in tiny Llama (quickstart: 42)")
    parser.add_argument("--num_prompts", type=int, default=32, help="prompts of the batched vs one-at-a-time part")
    parser.add_argument("--batch_sizes", default="1,8,16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--full_eval_prompts", type=int, default=200, help="0 skips the whole-evaluation timing")
    parser.add_argument("--full_eval_batch_size", type=int, default=16)
    parser.add_argument("--reward_model_name_or_path", default=None)
    parser.add_argument("--model_label", default=None, help="how the report names the model (default: its path)")
    parser.add_argument("--reward_model_label", default=None, help="how the report names the reward model")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least hurt by a busy machine)")
    parser.add_argument("--output", default=str(RESULTS / "eval_generation"), help="results path without suffix")
    args = parser.parse_args(argv)

    import torch

    from trl_pro.evaluation.systems import System, evaluate_systems
    from trl_pro.evaluation.test_data import load_test_data, unique_prompts
    from trl_pro.pipeline.models import load_policy

    torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    model, tokenizer = load_policy(args.model_path, seed=args.seed)
    prompts = unique_prompts(load_test_data(max_samples=args.num_prompts))
    times, same = _generation_times(model, tokenizer, prompts, batch_sizes, args.repeats, args.max_new_tokens)
    base = statistics.median(times[min(batch_sizes)])
    rows = [
        {
            "batch_size": bs,
            "times_s": times[bs],
            "median_s": statistics.median(times[bs]),
            "speedup_vs_1": base / statistics.median(times[bs]),
            "equal_to_batch_1": same[bs],
        }
        for bs in batch_sizes
    ]

    full = None
    if args.full_eval_prompts:
        data = load_test_data(max_samples=args.full_eval_prompts)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            evaluate_systems(
                [System("model", args.model_path)],
                data,
                folder,
                seed=args.seed,
                reward_model_name_or_path=args.reward_model_name_or_path,
                batch_size=args.full_eval_batch_size,
                max_new_tokens=args.max_new_tokens,
                progress=False,
                plot=False,
            )
            seconds = time.perf_counter() - start
        full = {
            "num_prompts": len(unique_prompts(data)),
            "batch_size": args.full_eval_batch_size,
            "reward_model": args.reward_model_label or args.reward_model_name_or_path,
            "seconds": seconds,
        }

    report = {
        "model": args.model_label or args.model_path,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible, torch {torch.__version__}",
        "generation": {
            "num_prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats,
            "rows": rows,
        },
        "full_eval": full,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    output.with_suffix(".md").write_text(_markdown(report))
    _plot(report, output.with_suffix(".png"))
    print(_markdown(report))
    return report


if __name__ == "__main__":
    main()
