"""Building rankings on CPU: batched reward scoring and batched generation against one row at a time, and the share
of a self-bootstrapping round spent generating.

    python benchmarks/build_rankings.py            # writes benchmarks/results/build_rankings_cpu.{json,md,png}
    python benchmarks/build_rankings.py --smoke --output /tmp/br   # a seconds-long check that the pipeline runs

Models: a random "small" Llama (hidden 256, 4 layers, the tiny tokenizer) as policy and as reward model (a
sequence classifier with one score); timings do not depend on what the weights have learned. Data: the vendored
HH-RLHF slice. Each comparison alternates the two modes `--repeats` times in one run and reports the median of each
and their ratio, so the machine's load affects both alike. CPU only: GPU figures are not measured on GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {
    "small": dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512
    ),
    "tiny": {},
}


def _models(size: str):
    from transformers import LlamaForSequenceClassification

    from trl_pro.assets import build_tiny_llama, load_tiny_tokenizer, tiny_llama_config

    tokenizer = load_tiny_tokenizer()
    policy = build_tiny_llama(seed=0, **SIZES[size]).eval()
    torch.manual_seed(1)
    reward_model = LlamaForSequenceClassification(tiny_llama_config(len(tokenizer), num_labels=1, **SIZES[size]))
    return policy, reward_model.eval(), tokenizer


def _pairs(count: int):
    from trl_pro.assets import load_hh_rlhf_slice
    from trl_pro.pipeline.rankings import dataset_rankings

    rows = dataset_rankings(load_hh_rlhf_slice("train").select(range(count + 10)), drop_invalid_rows=True)[:count]
    return rows


def _time(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def _alternate(first, second, repeats: int) -> tuple[list[float], list[float]]:
    a, b = [], []
    for _ in range(repeats):
        a.append(_time(first))
        b.append(_time(second))
    return a, b


def bench_scoring(reward_model, tokenizer, rows, batch_size: int, repeats: int) -> dict:
    from trl_pro.pipeline.reward_models import score_completions

    prompts = [row["prompt"] for row in rows for _ in row["completions"]]
    completions = [c for row in rows for c in row["completions"]]
    kwargs = dict(prompt_format="plain", max_length=512, progress=False)
    batched, single = _alternate(
        lambda: score_completions(reward_model, tokenizer, prompts, completions, batch_size=batch_size, **kwargs),
        lambda: score_completions(reward_model, tokenizer, prompts, completions, batch_size=1, **kwargs),
        repeats,
    )
    n = len(prompts)
    return {
        "candidates": n,
        "batch_size": batch_size,
        "batched_s": batched,
        "one_at_a_time_s": single,
        "batched_rows_per_s": n / statistics.median(batched),
        "one_at_a_time_rows_per_s": n / statistics.median(single),
        "speedup": statistics.median(single) / statistics.median(batched),
    }


def bench_generation(policy, tokenizer, rows, batch_size: int, new_tokens: int, repeats: int) -> dict:
    from trl_pro.pipeline.generation import generate_local

    prompts = [row["prompt"] for row in rows]
    kwargs = dict(do_sample=False, max_completion_length=new_tokens, max_prompt_length=256, progress=False)
    batched, single = _alternate(
        lambda: generate_local(policy, tokenizer, prompts, batch_size=batch_size, **kwargs),
        lambda: generate_local(policy, tokenizer, prompts, batch_size=1, **kwargs),
        repeats,
    )
    return {
        "prompts": len(prompts),
        "batch_size": batch_size,
        "max_new_tokens": new_tokens,
        "batched_s": batched,
        "one_at_a_time_s": single,
        "speedup": statistics.median(single) / statistics.median(batched),
    }


def bench_bootstrap(policy, reward_model, tokenizer, rows_count: int, new_tokens: int, folder: Path) -> dict:
    from trl_pro.assets import load_hh_rlhf_slice
    from trl_pro.trainers.pro_config import PROConfig
    from trl_pro.trainers.pro_trainer import PROTrainer

    reward_dir = folder / "reward_model"
    reward_model.save_pretrained(reward_dir)
    tokenizer.save_pretrained(reward_dir)
    args = PROConfig(
        output_dir=str(folder / "out"),
        per_device_train_batch_size=4,
        num_train_epochs=1,
        learning_rate=1e-4,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        max_length=256,
        logging_steps=1000,
        bootstrap_rounds=2,
        bootstrap_reward_model_name_or_path=str(reward_dir),
        bootstrap_reward_prompt_format="plain",
        bootstrap_max_completion_length=new_tokens,
        bootstrap_generation_batch_size=8,
    )
    dataset = load_hh_rlhf_slice("train").select(range(rows_count))
    trainer = PROTrainer(model=policy, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    rounds = []
    for record in trainer.bootstrap_history:
        total = record["generation_seconds"] + record["scoring_seconds"] + record["training_seconds"]
        rounds.append(
            {
                key: record[key]
                for key in ("round", "rows", "samples", "generation_seconds", "scoring_seconds", "training_seconds")
            }
            | {"generation_share": record["generation_seconds"] / total}
        )
    return {
        "rows": rows_count,
        "rounds": rounds,
        "max_new_tokens": new_tokens,
        "median_generation_share": statistics.median(r["generation_share"] for r in rounds),
    }


def markdown(report: dict) -> str:
    s, g, b = report["scoring"], report["generation"], report["bootstrap"]
    lines = [
        "# Building rankings on CPU",
        "",
        report["setup"],
        "",
        "| comparison | batched (median s) | one at a time (median s) | speed-up |",
        "|---|---|---|---|",
        f"| reward scoring, {s['candidates']} candidates, batch {s['batch_size']} | "
        f"{statistics.median(s['batched_s']):.3f} | {statistics.median(s['one_at_a_time_s']):.3f} | "
        f"{s['speedup']:.2f}x |",
        f"| generation, {g['prompts']} prompts x {g['max_new_tokens']} new tokens (greedy), batch {g['batch_size']} | "
        f"{statistics.median(g['batched_s']):.3f} | {statistics.median(g['one_at_a_time_s']):.3f} | "
        f"{g['speedup']:.2f}x |",
        "",
        f"Self-bootstrapping, {b['rows']} rows in 2 rounds, {b['max_new_tokens']} new tokens per sample:",
        "",
        "| round | rows | samples | generating (s) | scoring (s) | training (s) | share generating |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in b["rounds"]:
        lines.append(
            f"| {r['round']} | {r['rows']} | {r['samples']} | {r['generation_seconds']:.2f} | "
            f"{r['scoring_seconds']:.2f} | {r['training_seconds']:.2f} | {100 * r['generation_share']:.0f}% |"
        )
    lines += [
        "",
        f"Median share of a round spent generating: {100 * b['median_generation_share']:.0f}%.",
        "",
        report["note"],
        "",
    ]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, g, b = report["scoring"], report["generation"], report["bootstrap"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = ["reward scoring", "generation"]
    left.bar([0, 1], [s["speedup"], g["speedup"]], color=["tab:blue", "tab:orange"])
    left.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    left.set_xticks([0, 1], names)
    left.set_ylabel("speed-up of batched over one at a time (x)")
    left.set_title("Batching (CPU, medians of interleaved runs)")
    bottom = [0.0] * len(b["rounds"])
    labels = [f"round {r['round']}" for r in b["rounds"]]
    for key, color in (
        ("generation_seconds", "tab:orange"),
        ("scoring_seconds", "tab:green"),
        ("training_seconds", "tab:blue"),
    ):
        values = [r[key] for r in b["rounds"]]
        right.bar(labels, values, bottom=bottom, color=color, label=key.split("_")[0])
        bottom = [x + y for x, y in zip(bottom, values)]
    right.set_ylabel("seconds")
    right.set_title("A self-bootstrapping round (CPU)")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, few rows: checks the pipeline only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None, help="results path without suffix")
    args = parser.parse_args(argv)
    size = "tiny" if args.smoke else "small"
    score_rows, gen_prompts, new_tokens, boot_rows = (4, 4, 4, 8) if args.smoke else (32, 16, 32, 32)
    repeats = 1 if args.smoke else args.repeats
    policy, reward_model, tokenizer = _models(size)
    rows = _pairs(max(score_rows, gen_prompts))
    scoring = bench_scoring(reward_model, tokenizer, rows[:score_rows], batch_size=16, repeats=repeats)
    print(f"scoring speed-up {scoring['speedup']:.2f}x", file=sys.stderr)
    generation = bench_generation(
        policy, tokenizer, rows[:gen_prompts], batch_size=16, new_tokens=new_tokens, repeats=repeats
    )
    print(f"generation speed-up {generation['speedup']:.2f}x", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-rankings-") as folder:
        bootstrap = bench_bootstrap(policy, reward_model, tokenizer, boot_rows, new_tokens, Path(folder))
    report = {
        "benchmark": "build_rankings",
        "smoke": args.smoke,
        "setup": f"Random {size} Llama policy and reward model (tiny tokenizer), vendored HH-RLHF slice, fp32 on CPU, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
        f"{repeats} interleaved repetitions per comparison.",
        "scoring": scoring,
        "generation": generation,
        "bootstrap": bootstrap,
        "note": "CPU timings on a shared machine vary from run to run; the ratios come from interleaved runs in one "
        "invocation. Not measured on GPU."
        + (" Smoke run: checks the pipeline, not a measurement." if args.smoke else ""),
    }
    output = Path(args.output) if args.output else RESULTS / "build_rankings_cpu"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(report))
    plot(report, output.with_suffix(".png"))
    print(markdown(report))


if __name__ == "__main__":
    main()
