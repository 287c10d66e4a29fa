"""QLoRA memory benchmark: peak GPU memory and tokens/s of a PRO training step on a LLaMA-7B-shaped model, for
rankings of n = 2, 3, 4, 5 candidates, beside TRL's DPOTrainer on the same n = 2 data.

Setup: random weights in LLaMA-7B's shape (nothing is downloaded), loaded in 4-bit NF4 with double quantization and
bf16 compute, LoRA r=64 on every linear layer but the LM head, gradient checkpointing, batch of 1 prompt, 512 tokens
per candidate (256 prompt + 256 completion, synthetic single-token words). Each configuration runs in its own process;
peak memory is `torch.cuda.max_memory_allocated` over the timed steps (model weights included), tokens/s counts every
candidate token of a step.

Needs one CUDA GPU. Without one, it writes its result files saying "not measured on GPU" (no numbers) and exits 0.
`--smoke` runs the same pipeline on CPU instead (tiny Llama in 4-bit with bitsandbytes' CPU backend, 32 + 32 tokens,
n in {2, 3}, no memory figure): a check that the script works, used by the tests, not a measurement.

    python benchmarks/qlora_memory.py            # writes benchmarks/results/qlora_memory.json, .md and .png
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import environment, loaded_in_4bit, save_model, synthetic_pairs  # noqa: E402


RESULTS = Path(__file__).resolve().parent / "results"
NS = (2, 3, 4, 5)
TOKENS = 256  # prompt tokens, and completion tokens, per candidate: 512 in all
SMOKE_NS, SMOKE_TOKENS = (2, 3), 32
GOAL_GIB, GOAL_N = 12.0, 4  # PRO at n = 4 fits a 12 GB consumer card


def synthetic_rankings(n: int, rows: int, tokens: int, seed: int = 0):
    """Rankings of `n` candidates, `tokens` prompt + `tokens` completion tokens each, with scores (the dynamic
    temperature is on)."""
    from datasets import Dataset

    pairs = synthetic_pairs(rows * ((n + 1) // 2), tokens, tokens, seed)
    texts = [t for row in pairs for t in (row["chosen"], row["rejected"])]
    out = []
    for i in range(rows):
        completions = texts[i * n : (i + 1) * n]
        scores = [float(n - k) for k in range(n)]
        out.append({"prompt": pairs[i]["prompt"], "completions": completions, "scores": scores})
    return Dataset.from_list(out)


def worker(args) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from trl_pro.assets import load_tiny_tokenizer
    from trl_pro.trainers.pro_config import PROConfig
    from trl_pro.trainers.pro_trainer import PROTrainer

    steps, warmup, cuda = args.steps, args.warmup, not args.smoke
    tokens = SMOKE_TOKENS if args.smoke else TOKENS
    rows = steps + warmup + 2
    times: list[float] = []
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            synchronize()
            times.append(time.perf_counter() - self.t0)

    common = dict(
        output_dir=tempfile.mkdtemp(prefix="qlora-memory-"),
        per_device_train_batch_size=1,
        max_steps=steps + warmup,
        learning_rate=1e-4,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=True,
        max_length=2 * tokens,
        model_init_kwargs={"dtype": "bfloat16", "device_map": {"": 0}} if cuda else {"dtype": "bfloat16"},
    )
    quantization_config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    peft_config = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    tokenizer = load_tiny_tokenizer()
    if args.worker == "pro":
        dataset = synthetic_rankings(args.n, rows, tokens)
        config = PROConfig(**common, max_prompt_length=tokens)
        trainer = PROTrainer(
            args.model_path,
            config,
            train_dataset=dataset,
            processing_class=tokenizer,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
    else:
        dataset = synthetic_pairs(rows, tokens, tokens)
        config = DPOConfig(**common, beta=0.1)
        trainer = DPOTrainer(
            args.model_path,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
    trainer.add_callback(StepTimer())
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    measured = times[warmup:]
    median = statistics.median(measured)
    tokens_per_step = args.n * 2 * tokens
    return {
        "trainer": args.worker,
        "n": args.n,
        "tokens_per_step": tokens_per_step,
        "median_step_s": median,
        "tokens_per_s": tokens_per_step / median,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "step_times_s": measured,
        "loaded_in_4bit": loaded_in_4bit(trainer.model),
    }


def markdown(report: dict) -> str:
    lines = ["# QLoRA memory: PRO on a LLaMA-7B-shaped model, n = 2..5 candidates, beside DPO (n = 2)", ""]
    env = report["environment"]
    versions = (
        f"torch {env['torch']}, transformers {env['transformers']}, trl {env['trl']}, peft {env['peft']}, "
        f"bitsandbytes {env.get('bitsandbytes')}"
    )
    if not report["measured"] and not report.get("smoke"):
        lines += [
            f"**Not measured on GPU.** {report['reason']}",
            "",
            f"Setup (when run on a CUDA GPU): {report['setup']}",
            "",
            f"Environment of this run: {env['date']}, {env['platform']}, {versions}.",
            "",
            "Run `python benchmarks/qlora_memory.py` on a machine with one CUDA GPU to fill in this table.",
        ]
        return "\n".join(lines) + "\n"
    if report.get("smoke"):
        lines += [f"**CPU smoke run, not a measurement.** {report['reason']}", ""]
    lines += [
        f"Date {env['date']}; {env.get('gpu') or env['platform']}; {versions}.",
        "",
        f"Setup: {report['setup']}",
        "",
        "| trainer | n | tokens / step | median step (s) | tokens / s | peak GPU memory (GiB) |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        peak = "-" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f}"
        lines.append(
            f"| {row['trainer'].upper()} | {row['n']} | {row['tokens_per_step']} | {row['median_step_s']:.3f} | "
            f"{row['tokens_per_s']:.0f} | {peak} |"
        )
    goal_row = next((r for r in report["rows"] if r["trainer"] == "pro" and r["n"] == GOAL_N), None)
    if report["measured"] and goal_row is not None:
        verdict = "meets" if goal_row["peak_memory_gib"] <= GOAL_GIB else "does not meet"
        lines += [
            "",
            f"PRO at n = {GOAL_N} peaks at **{goal_row['peak_memory_gib']:.2f} GiB**: {verdict} the goal "
            f"of <= {GOAL_GIB:.0f} GiB (a 12 GB consumer card).",
        ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Peak memory (with the 12 GiB goal) and tokens/s per configuration, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    labels = [f"{r['trainer'].upper()}\nn={r['n']}" for r in rows]
    colors = ["tab:blue" if r["trainer"] == "pro" else "tab:gray" for r in rows]
    fig, (memory_ax, speed_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
    if all(r["peak_memory_gib"] is not None for r in rows):
        memory_ax.bar(labels, [r["peak_memory_gib"] for r in rows], color=colors)
        memory_ax.axhline(GOAL_GIB, color="tab:red", linestyle="--", label=f"goal: {GOAL_GIB:.0f} GiB at n={GOAL_N}")
        memory_ax.legend(fontsize=8)
    else:
        memory_ax.text(
            0.5, 0.5, "no GPU memory figure\n(CPU smoke run)", ha="center", va="center", transform=memory_ax.transAxes
        )
        memory_ax.set_xticks([])
        memory_ax.set_yticks([])
    memory_ax.set_ylabel("peak GPU memory (GiB)")
    speed_ax.bar(labels, [r["tokens_per_s"] for r in rows], color=colors)
    speed_ax.set_ylabel("tokens / s")
    env = report["environment"]
    kind = "CPU smoke run, not a measurement" if report.get("smoke") else env.get("gpu", "")
    fig.suptitle(f"QLoRA training step, {report['model']}, 4-bit + LoRA: {kind} ({env['date'][:10]})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "qlora_memory"), help="results path without suffix")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="run the pipeline on CPU with a tiny Llama (a check that the script works, no figures)",
    )
    parser.add_argument("--worker", choices=["pro", "dpo"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--model_path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch

    ns, tokens = (SMOKE_NS, SMOKE_TOKENS) if args.smoke else (NS, TOKENS)
    shape = (
        "tiny Llama (2 layers, hidden 64, vocabulary 2048) on CPU, bitsandbytes' CPU backend"
        if args.smoke
        else "LLaMA-7B shape (32 layers, hidden 4096, MLP 11008, vocabulary 32000)"
    )
    setup = (
        f"{shape}, random weights, 4-bit NF4 + double quantization, bf16 compute, LoRA r=64 alpha=16 on all linear "
        f"layers except lm_head, gradient checkpointing, batch 1 prompt, {tokens} prompt + {tokens} completion tokens "
        f"per candidate, n in {list(ns)} (PRO) and n = 2 (DPO, reference = adapters disabled), {args.warmup} warm-up "
        f"+ {args.steps} timed steps" + ("" if args.smoke else "; peak = torch.cuda.max_memory_allocated")
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available() and not args.smoke:
        report = {
            "benchmark": "qlora_memory",
            "measured": False,
            "reason": "No CUDA GPU on the machine that ran this script; no number is reported.",
            "setup": setup,
            "environment": environment("cpu"),
            "rows": [],
        }
    else:
        rows = []
        with tempfile.TemporaryDirectory(prefix="qlora-memory-model-") as folder:
            save_model("tiny" if args.smoke else "llama7b-qlora", Path(folder))
            for trainer, n in [("pro", n) for n in ns] + [("dpo", 2)]:
                command = [
                    sys.executable,
                    __file__,
                    "--worker",
                    trainer,
                    "--n",
                    str(n),
                    "--model_path",
                    folder,
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                ] + ["--smoke"] * args.smoke
                result = subprocess.run(command, capture_output=True, text=True)
                if result.returncode != 0:
                    raise RuntimeError(f"{trainer} n={n} failed:\n{result.stderr[-4000:]}")
                rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
                if not rows[-1]["loaded_in_4bit"]:
                    raise RuntimeError(f"{trainer} n={n}: the model was not loaded in 4-bit")
                print(
                    f"{trainer} n={n}: {rows[-1]['peak_memory_gib'] or 0:.2f} GiB, "
                    f"{rows[-1]['tokens_per_s']:.0f} tok/s",
                    file=sys.stderr,
                )
        report = {
            "benchmark": "qlora_memory",
            "measured": not args.smoke,
            "smoke": args.smoke,
            "setup": setup,
            "model": "tiny Llama" if args.smoke else "LLaMA-7B shape",
            "environment": environment("cpu" if args.smoke else "cuda"),
            "rows": rows,
        }
        if args.smoke:
            report["reason"] = "A check that this script's pipeline runs; CPU timings say nothing about a GPU."
        plot(report, output.with_suffix(".png"))
    output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
