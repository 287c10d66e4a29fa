"""Train-step benchmark: PROTrainer against TRL's DPOTrainer on the same pairwise data and the same model.

PRO needs no reference model: one forward/backward over the candidates per step, where DPO also runs the reference
model forward (a frozen copy, or the base with the adapters disabled under PEFT). This script measures the median
optimizer-step time and the peak memory of both, and their ratio, from one run.

- CPU (default when no GPU): the tiny Llama of `trl_pro.assets` (also `--model small`, a larger CPU model), the
  vendored HH-RLHF slice (raw chosen/rejected pairs, which both trainers take as is), fp32, no gradient checkpointing.
  Peak memory is the peak resident set size of the process while it trains (sampled every 5 ms), minus the resident
  size right before training: the memory training adds, not counting Python, the libraries and the dataset.
- GPU (`--model llama7b-qlora`, the default on CUDA): a LLaMA-7B-shaped model with random weights (nothing is
  downloaded), loaded in 4-bit NF4 with LoRA on every linear layer but the LM head, gradient checkpointing, bf16,
  synthetic pairs of exactly 512 tokens per candidate. Peak memory is `torch.cuda.max_memory_allocated`.
- `--model tiny-qlora` (CPU): the GPU path's setup (4-bit NF4, LoRA, gradient checkpointing, synthetic pairs) on the
  tiny Llama with bitsandbytes' CPU backend. A check that the QLoRA path runs (the tests use it), not a measurement:
  its timings say nothing about the GPU goal.

Each trainer runs in its own process (`--repeats` times, alternating, the step times pooled), so that neither sees
the other's memory or caches. Results go to `benchmarks/results/train_step_<device>.json` and `.md`, stamped with the
hardware, the library versions and the date.

    python benchmarks/train_step.py                      # CPU: tiny model
    python benchmarks/train_step.py --model llama7b-qlora  # one CUDA GPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 0.75  # PRO step time <= 0.75 x DPO step time
QLORA_MODELS = ("llama7b-qlora", "tiny-qlora")  # 4-bit NF4 + LoRA + gradient checkpointing on synthetic pairs


# --- Models and data ----------------------------------------------------------------------------------------------


def llama7b_config(vocab_size: int = 32000):
    """LLaMA-7B's shape (Touvron et al. 2023): 32 layers, 4096 hidden, 32 heads, 11008 MLP, 32000 vocabulary."""
    from transformers import LlamaConfig

    from trl_pro.assets import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def save_model(kind: str, folder: Path, seed: int = 0) -> Path:
    """Write a randomly initialised model and the tiny tokenizer to `folder` (both trainers load it from there)."""
    import torch

    from trl_pro.assets import build_tiny_llama, load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    if kind in ("tiny", "tiny-qlora"):
        model = build_tiny_llama(seed)
    elif kind == "small":  # big enough that compute, not Python overhead, dominates a CPU step
        model = build_tiny_llama(
            seed,
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
        )
    elif kind == "small-50M":  # benchmarks/shared_prompt.py's 52M Llama: 10 layers of width 640
        model = build_tiny_llama(
            seed,
            hidden_size=640,
            intermediate_size=1728,
            num_hidden_layers=10,
            num_attention_heads=10,
            num_key_value_heads=10,
        )
    elif kind == "llama7b-qlora":
        from transformers import LlamaForCausalLM

        torch.manual_seed(seed)
        with torch.device("cuda"):  # random init on the GPU is fast; saved in bf16, quantized when loaded
            model = LlamaForCausalLM(llama7b_config()).to(torch.bfloat16)
        model.save_pretrained(folder, max_shard_size="4GB")
        del model
        torch.cuda.empty_cache()
        tokenizer.save_pretrained(folder)
        return folder
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def synthetic_pairs(num_rows: int, prompt_tokens: int, completion_tokens: int, seed: int = 0):
    """Pairs whose prompt and completions tokenize to exactly `prompt_tokens` and `completion_tokens` (EOS included)
    with the tiny tokenizer: words that are single tokens, each with its leading space."""
    from datasets import Dataset

    from trl_pro.assets import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    words = sorted(w[1:] for w in tokenizer.get_vocab() if w.startswith("Ġ") and w[1:].isalpha() and len(w) > 3)
    rng = random.Random(seed)

    def text(n: int) -> str:
        return "".join(" " + rng.choice(words) for _ in range(n))

    rows = [
        {"prompt": text(prompt_tokens), "chosen": text(completion_tokens - 1), "rejected": text(completion_tokens - 1)}
        for _ in range(num_rows)
    ]
    check = tokenizer(rows[0]["prompt"] + rows[0]["chosen"] + tokenizer.eos_token, add_special_tokens=False)
    assert len(check["input_ids"]) == prompt_tokens + completion_tokens, len(check["input_ids"])
    return Dataset.from_list(rows)


def hh_pairs():
    from trl_pro.assets import load_hh_rlhf_slice
    from trl_pro.data.formats import PAIRWISE, to_ranking

    dataset = load_hh_rlhf_slice("train")

    def valid(example, index):  # the 4 rows with an empty chosen response: PRO rejects them, DPO would train on them
        try:
            to_ranking(example, index, PAIRWISE, expect_scores=False)
        except ValueError:
            return False
        return True

    return dataset.filter(valid, with_indices=True)


def loaded_in_4bit(model) -> bool:
    """Whether the (possibly PEFT-wrapped) model the trainer trains has 4-bit weights: the result files say it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False))


# --- Worker: one trainer, one process -------------------------------------------------------------------------------


class _RssSampler:
    """Peak resident set size of this process, sampled in a thread."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.process, self.interval, self.peak, self._stop = psutil.Process(), interval, 0, threading.Event()

    def __enter__(self):
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def worker(args) -> dict:
    import torch
    from transformers import BitsAndBytesConfig, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from trl_pro.assets import load_tiny_tokenizer
    from trl_pro.trainers.pro_config import PROConfig
    from trl_pro.trainers.pro_trainer import PROTrainer

    cuda = args.model == "llama7b-qlora"
    qlora = args.model in QLORA_MODELS
    if cuda and not torch.cuda.is_available():
        raise SystemExit("llama7b-qlora needs a CUDA GPU")
    torch.manual_seed(0)
    if qlora:
        half = args.max_length // 2
        dataset = synthetic_pairs(args.batch_size * (args.warmup + args.steps) + 8, half, half)
    else:
        dataset = hh_pairs()

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            if cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)

    common = dict(
        output_dir=tempfile.mkdtemp(prefix=f"bench-{args.worker}-"),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        learning_rate=1e-5,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        max_length=args.max_length,
        gradient_checkpointing=qlora,
        bf16=cuda,
        use_cpu=not cuda,
        dataloader_num_workers=0,
    )
    model_kwargs = {}
    quantization_config = peft_config = None
    if qlora:
        from peft import LoraConfig

        quantization_config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        peft_config = LoraConfig(
            r=64, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        model_kwargs = {"dtype": "bfloat16", "device_map": {"": 0}} if cuda else {"dtype": "bfloat16"}
    tokenizer = load_tiny_tokenizer()
    if args.worker == "pro":
        config = PROConfig(
            **common, max_prompt_length=args.max_length // 2 if qlora else 384, model_init_kwargs=model_kwargs or None
        )
        trainer = PROTrainer(
            args.model_path,
            config,
            train_dataset=dataset,
            processing_class=tokenizer,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        lengths = [
            len(r["prompt_ids"]) * len(r["completion_ids"]) + sum(map(len, r["completion_ids"]))
            for r in trainer.train_dataset
        ]
    else:
        config = DPOConfig(**common, beta=0.1, truncation_mode="keep_end", model_init_kwargs=model_kwargs or None)
        trainer = DPOTrainer(
            args.model_path,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        lengths = [
            2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in trainer.train_dataset
        ]
    trainer.add_callback(StepTimer())

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        trainer.train()
        peak, peak_note = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated during training"
        memory = {"peak_mb": peak / 2**20, "before_training_mb": base / 2**20}
    else:
        with _RssSampler() as rss:
            trainer.train()
        memory = {
            "peak_mb": (rss.peak - rss.start) / 2**20,
            "before_training_mb": rss.start / 2**20,
            "peak_process_rss_mb": rss.peak / 2**20,
        }
        peak_note = "peak RSS while training minus RSS before training (sampled every 5 ms)"
    measured = times[args.warmup :]
    return {
        "trainer": args.worker,
        "step_times_s": measured,
        "median_step_s": statistics.median(measured),
        "tokens_per_step_mean": statistics.mean(lengths) * args.batch_size,
        "memory": memory,
        "memory_note": peak_note,
        "loaded_in_4bit": loaded_in_4bit(trainer.model),
    }


# --- Driver ---------------------------------------------------------------------------------------------------------


def environment(device: str) -> dict:
    import accelerate
    import datasets
    import peft
    import torch
    import transformers
    import trl

    import trl_pro

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "trl_pro": trl_pro.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
    }
    try:
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        pass
    return info


def run_worker(args, trainer: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        trainer,
        "--model",
        args.model,
        "--model_path",
        str(args.model_path),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch_size",
        str(args.batch_size),
        "--max_length",
        str(args.max_length),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{trainer} worker failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    env, pro, dpo = report["environment"], report["pro"], report["dpo"]
    memory_unit = "GPU MiB" if env["device"] == "cuda" else "MiB added to RSS"
    lines = [
        f"# Train step: PROTrainer vs DPOTrainer ({report['model']}, {env['device']})",
        "",
        f"Date {env['date']}; {env.get('gpu') or env.get('cpu_model') or env['cpu']} ({env['cpu_count']} CPU "
        f"threads); torch {env['torch']}, transformers {env['transformers']}, trl {env['trl']}, trl-pro "
        f"{env['trl_pro']}, peft {env['peft']}.",
        "",
        f"Setup: {report['setup']}",
        "",
        f"| trainer | median step (s) | median of each run (s) | tokens / step | tokens / s | peak memory "
        f"({memory_unit}) | steps timed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in (("PRO", pro), ("DPO", dpo)):
        runs = ", ".join(f"{t:.4f}" for t in row.get("run_medians_s", [row["median_step_s"]]))
        lines.append(
            f"| {name} | {row['median_step_s']:.4f} | {runs} | {row['tokens_per_step_mean']:.0f} | "
            f"{row['tokens_per_step_mean'] / row['median_step_s']:.0f} | {row['memory']['peak_mb']:.1f} | "
            f"{len(row['step_times_s'])} |"
        )
    ratio, memory_ratio = report["step_time_ratio_pro_over_dpo"], report["peak_memory_ratio_pro_over_dpo"]
    verdict = "meets" if ratio <= GOAL else "does not meet"
    goal = (
        "" if report["model"] == "tiny-qlora" else f" ({verdict} the goal of <= {GOAL})"
    )  # a check, not a measurement
    lines += [
        "",
        f"PRO / DPO median step time: **{ratio:.3f}**{goal}. PRO / DPO peak memory: **{memory_ratio:.3f}**.",
        "",
        f"Memory: {pro['memory_note']}.",
        "",
        "Both trainers see the same rows, model, batch size and maximum length; DPO also runs its reference model "
        "forward each step, PRO has none. Step time is from `on_step_begin` to `on_step_end` (forward, backward, "
        "optimizer step), data loading excluded; the first steps are warm-up and not timed. Tokens / step counts "
        "the policy's tokens (prompt once per candidate); the two trainers truncate long prompts differently (PRO "
        "keeps the last `max_prompt_length` prompt tokens, DPO `keep_end`), hence slightly different counts. The gap "
        "is not only the reference forward: TRL's DPO materializes the full [tokens, vocabulary] logits of the policy "
        "and of the reference, where PRO's loss core streams the LM head in chunks.",
    ]
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        choices=["tiny", "small", "small-50M", "llama7b-qlora", "tiny-qlora"],
        default=None,
        help="default: llama7b-qlora on CUDA, tiny otherwise (tiny-qlora: CPU check of the QLoRA path)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 30 CPU, 10 GPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="runs per trainer, alternating PRO and DPO")
    parser.add_argument("--batch_size", type=int, default=None, help="pairs per step (default 8 CPU, 1 GPU)")
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--output", default=None, help="results path without suffix")
    parser.add_argument(
        "--compare",
        choices=["rankings"],
        help="rankings: PRO (plain and shared-prompt layouts) and list DPO (reference on the fly and precomputed) "
        "vs DPO over the 3 adjacent / all 6 pairs of rankings of 4, time per ranking and peak memory (CPU)",
    )
    parser.add_argument("--rankings_per_step", type=int, default=2, help="--compare rankings: rankings per step")
    parser.add_argument("--threads", type=int, default=1, help="--compare rankings: torch threads per worker")
    parser.add_argument("--rankings_path", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["pro", "dpo", *RANKING_WORKERS], help=argparse.SUPPRESS)
    parser.add_argument("--model_path", help=argparse.SUPPRESS)
    # RRHF section: PRO, RRHF and DPO at ranking lengths 2 and 4 (see `ranking_lengths_main`)
    parser.add_argument(
        "--ranking_lengths",
        action="store_true",
        help="compare PRO, RRHF and DPO at ranking lengths 2 and 4 on the same ranked rows (CPU)",
    )
    parser.add_argument("--ranking_worker", choices=RANKING_TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--ranking_length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ranking_lengths or args.ranking_worker:
        args.model = args.model or "tiny"
        if args.ranking_worker:
            print(json.dumps(lengths_worker(args)))
        else:
            ranking_lengths_main(args)
        return

    import torch

    if args.model is None:
        args.model = "llama7b-qlora" if torch.cuda.is_available() else "tiny"
    cuda, qlora = args.model == "llama7b-qlora", args.model in QLORA_MODELS
    args.steps = args.steps or (10 if cuda else 30)
    args.batch_size = args.batch_size or (1 if qlora else 8)
    if args.worker in RANKING_WORKERS:
        print(json.dumps(ranking_worker(args)))
        return
    if args.compare == "rankings":
        compare_rankings(args)
        return
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--model llama7b-qlora needs a CUDA GPU")
    device = "cuda" if cuda else "cpu"

    with tempfile.TemporaryDirectory(prefix="bench-model-") as folder:
        args.model_path = save_model(args.model, Path(folder))
        runs = {"pro": [], "dpo": []}
        for _ in range(args.repeats):
            for trainer in ("pro", "dpo"):
                runs[trainer].append(run_worker(args, trainer))
                print(f"{trainer}: median step {runs[trainer][-1]['median_step_s']:.4f} s", file=sys.stderr)

    def pooled(results: list[dict]) -> dict:
        times = [t for r in results for t in r["step_times_s"]]
        peak = max(results, key=lambda r: r["memory"]["peak_mb"])["memory"]
        return {
            **results[0],
            "step_times_s": times,
            "median_step_s": statistics.median(times),
            "memory": peak,
            "run_medians_s": [r["median_step_s"] for r in results],
        }

    pro, dpo = pooled(runs["pro"]), pooled(runs["dpo"])
    data = (
        f"synthetic pairs, {args.max_length} tokens per candidate"
        if qlora
        else "vendored HH-RLHF slice (1196 valid raw pairs)"
    )
    report = {
        "benchmark": "train_step",
        "model": args.model,
        "setup": f"model {args.model}, data {data}, batch {args.batch_size} pairs, max_length {args.max_length}, "
        f"{args.warmup} warm-up + {args.steps} timed steps per run, {args.repeats} runs per trainer, "
        + (
            "4-bit NF4 + LoRA r=64 all-linear, gradient checkpointing, " + ("bf16" if cuda else "on CPU")
            if qlora
            else "fp32, no gradient checkpointing, full fine-tuning (DPO's reference model is a frozen copy)"
        ),
        "environment": environment(device),
        "pro": pro,
        "dpo": dpo,
        "step_time_ratio_pro_over_dpo": pro["median_step_s"] / dpo["median_step_s"],
        "peak_memory_ratio_pro_over_dpo": pro["memory"]["peak_mb"] / dpo["memory"]["peak_mb"],
        "goal": f"PRO step <= {GOAL} x DPO step",
    }
    if args.model == "tiny-qlora":
        report["note"] = (
            "A CPU check that the QLoRA path of this script runs (tiny Llama in 4-bit with bitsandbytes' CPU "
            "backend), not a measurement: these timings say nothing about the GPU goal."
        )
    elif not cuda:
        report["note"] = (
            "CPU timings on a shared machine vary from run to run; the ratio comes from interleaved runs in one "
            "invocation. The 7B-shaped QLoRA comparison needs a CUDA GPU (`--model llama7b-qlora`): not measured "
            "on GPU."
        )
    suffix = "" if args.model in ("tiny", "llama7b-qlora") else "_" + args.model.replace("-", "_")
    output = Path(args.output) if args.output else RESULTS / f"train_step_{device}{suffix}"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


# --- Rankings of 4: PRO (plain and shared-prompt layouts) against DPO over their pairs (issue 12) -------------------
#
# A user with rankings of 4 who does not have PRO splits them into DPO pairs: the 3 adjacent pairs (1>2, 2>3, 3>4) or
# all 6 ordered pairs. `--compare rankings` times one optimizer step per `--rankings_per_step` rankings for each,
# same model, same rankings, one run (each trainer in its own process, alternating), and reports the time per ranking
# and the peak memory. List DPO (`ListDPOTrainer`, Plackett-Luce, shared prompt) runs beside them, with the reference
# log-probs computed on the fly and precomputed: its goal is <= 1/3 of DPO's time per ranking over the adjacent pairs.

RANKING_WORKERS = ("pro-plain", "pro-shared", "list_dpo-shared", "list_dpo-precomputed", "dpo-adjacent", "dpo-all")
RANKING_LABELS = {
    "pro-plain": "PRO, plain layout",
    "pro-shared": "PRO, shared prompt",
    "list_dpo-shared": "list DPO, shared prompt, reference on the fly",
    "list_dpo-precomputed": "list DPO, shared prompt, reference precomputed",
    "dpo-adjacent": "DPO, 3 adjacent pairs",
    "dpo-all": "DPO, all 6 pairs",
}
#: The baseline of the list DPO goal: list DPO per ranking of 4 at <= 1/3 of TRL DPO's time over the adjacent pairs
LIST_DPO_GOAL = 1 / 3


def hh_rankings(count: int, n: int = 4, seed: int = 0) -> list[dict]:
    """Rankings of `n` with HH-RLHF prompt and response lengths: one row's prompt, `n` responses (chosen or rejected)
    of random rows, ordered best to worst by random scores."""
    from trl.data_utils import extract_prompt

    from trl_pro.assets import load_hh_rlhf_slice

    rows = [extract_prompt(r) for r in load_hh_rlhf_slice("train")]
    rows = [r for r in rows if r["chosen"].strip() and r["rejected"].strip()]
    rng = random.Random(seed)
    rankings = []
    for _ in range(count):
        completions = [rng.choice(rows)[rng.choice(("chosen", "rejected"))] for _ in range(n)]
        scores = sorted((rng.gauss(0, 1) for _ in range(n)), reverse=True)
        rankings.append({"prompt": rng.choice(rows)["prompt"], "completions": completions, "scores": scores})
    return rankings


def ranking_pairs(rankings: list[dict], which: str) -> list[dict]:
    """DPO rows of each ranking, kept together: adjacent pairs (i, i+1) or all pairs (i < j), better one chosen."""
    rows = []
    for ranking in rankings:
        n = len(ranking["completions"])
        pairs = (
            [(i, i + 1) for i in range(n - 1)]
            if which == "adjacent"
            else [(i, j) for i in range(n) for j in range(i + 1, n)]
        )
        rows += [
            {"prompt": ranking["prompt"], "chosen": ranking["completions"][i], "rejected": ranking["completions"][j]}
            for i, j in pairs
        ]
    return rows


def ranking_worker(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from trl_pro.assets import load_tiny_tokenizer
    from trl_pro.trainers.pro_config import PROConfig
    from trl_pro.trainers.pro_trainer import PROTrainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rankings = json.loads(Path(args.rankings_path).read_text())
    n = len(rankings[0]["completions"])
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.t0)

    trainer_kind, variant = args.worker.split("-")
    pairs_per_ranking = (n - 1) if variant == "adjacent" else n * (n - 1) // 2
    common = dict(
        output_dir=tempfile.mkdtemp(prefix=f"bench-{args.worker}-"),
        max_steps=args.warmup + args.steps,
        learning_rate=1e-5,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        max_length=args.max_length,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    tokenizer = load_tiny_tokenizer()
    precompute_s: list[float] = []
    if trainer_kind == "list_dpo":
        from trl_pro.trainers.list_dpo_config import ListDPOConfig
        from trl_pro.trainers.list_dpo_trainer import ListDPOTrainer

        precompute = ListDPOTrainer._with_ref_logps

        def timed_precompute(self, *a, **k):  # the one-off reference pass over the dataset, before training
            start = time.perf_counter()
            result = precompute(self, *a, **k)
            precompute_s.append(time.perf_counter() - start)
            return result

        ListDPOTrainer._with_ref_logps = timed_precompute
        config = ListDPOConfig(
            **common,
            per_device_train_batch_size=args.rankings_per_step,
            shared_prompt=True,
            loss_type="plackett_luce",
            beta=0.1,
            precompute_ref_log_probs=variant == "precomputed",
        )
        trainer = ListDPOTrainer(
            args.model_path, args=config, train_dataset=Dataset.from_list(rankings), processing_class=tokenizer
        )
        assert trainer.data_collator.shared_prompt
        assert ("ref_logps" in trainer.train_dataset.column_names) == (variant == "precomputed")
        tokens = [len(r["prompt_ids"]) + sum(map(len, r["completion_ids"])) for r in trainer.train_dataset]
        tokens_per_ranking = statistics.mean(tokens)
    elif trainer_kind == "pro":
        config = PROConfig(
            **common, per_device_train_batch_size=args.rankings_per_step, shared_prompt=variant == "shared"
        )
        trainer = PROTrainer(
            args.model_path, config, train_dataset=Dataset.from_list(rankings), processing_class=tokenizer
        )
        assert trainer.data_collator.shared_prompt == (variant == "shared")
        if variant == "shared":
            tokens = [len(r["prompt_ids"]) + sum(map(len, r["completion_ids"])) for r in trainer.train_dataset]
        else:
            tokens = [
                len(r["prompt_ids"]) * len(r["completion_ids"]) + sum(map(len, r["completion_ids"]))
                for r in trainer.train_dataset
            ]
        tokens_per_ranking = statistics.mean(tokens)
    else:
        config = DPOConfig(
            **common,
            per_device_train_batch_size=args.rankings_per_step * pairs_per_ranking,
            beta=0.1,
            truncation_mode="keep_end",
        )
        trainer = DPOTrainer(
            args.model_path,
            args=config,
            train_dataset=Dataset.from_list(ranking_pairs(rankings, variant)),
            processing_class=tokenizer,
        )
        tokens = [
            2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in trainer.train_dataset
        ]
        tokens_per_ranking = statistics.mean(tokens) * pairs_per_ranking  # policy tokens; the reference sees them too
    trainer.add_callback(StepTimer())
    with _RssSampler() as rss:
        trainer.train()
    measured = times[args.warmup :]
    return {
        "trainer": args.worker,
        "step_times_s": measured,
        "median_step_s": statistics.median(measured),
        "rankings_per_step": args.rankings_per_step,
        "policy_tokens_per_ranking": tokens_per_ranking,
        "memory": {
            "peak_mb": (rss.peak - rss.start) / 2**20,
            "before_training_mb": rss.start / 2**20,
            "peak_process_rss_mb": rss.peak / 2**20,
        },
        # list DPO with precomputed reference log-probs: the one-off pass over every row of the dataset
        "precompute_s": sum(precompute_s) if precompute_s else None,
        "precomputed_rankings": len(rankings) if precompute_s else None,
    }


def compare_rankings(args) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-model-") as folder:
        args.model_path = save_model(args.model, Path(folder))
        rankings_path = Path(folder) / "rankings.json"
        rankings_path.write_text(json.dumps(hh_rankings(args.rankings_per_step * (args.warmup + args.steps) * 4)))
        runs = {w: [] for w in RANKING_WORKERS}
        load_start = " ".join(open("/proc/loadavg").read().split()[:3])
        for repeat in range(args.repeats):
            order = RANKING_WORKERS if repeat % 2 == 0 else RANKING_WORKERS[::-1]
            for worker in order:
                command = [
                    sys.executable,
                    __file__,
                    "--worker",
                    worker,
                    "--model",
                    args.model,
                    "--model_path",
                    str(args.model_path),
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                    "--max_length",
                    str(args.max_length),
                    "--rankings_per_step",
                    str(args.rankings_per_step),
                    "--rankings_path",
                    str(rankings_path),
                    "--threads",
                    str(args.threads),
                ]
                result = subprocess.run(command, capture_output=True, text=True)
                if result.returncode != 0:
                    raise RuntimeError(f"{worker} worker failed:\n{result.stderr[-4000:]}")
                runs[worker].append(json.loads(result.stdout.strip().splitlines()[-1]))
                print(f"{worker}: median step {runs[worker][-1]['median_step_s']:.4f} s", file=sys.stderr)
        load_end = " ".join(open("/proc/loadavg").read().split()[:3])
    rows = {}
    for worker, results in runs.items():
        times = [t for r in results for t in r["step_times_s"]]
        median = statistics.median(times)
        rows[worker] = {
            "label": RANKING_LABELS[worker],
            "step_times_s": times,
            "median_step_s": median,
            "run_medians_s": [r["median_step_s"] for r in results],
            "seconds_per_ranking": median / args.rankings_per_step,
            "policy_tokens_per_ranking": results[0]["policy_tokens_per_ranking"],
            "memory": max((r["memory"] for r in results), key=lambda m: m["peak_mb"]),
            "precompute_s_per_ranking": (
                statistics.median(r["precompute_s"] / r["precomputed_rankings"] for r in results)
                if results[0].get("precompute_s") is not None
                else None
            ),
        }
    dpo_adjacent = rows["dpo-adjacent"]
    for row in rows.values():
        row["time_vs_pro_plain"] = row["seconds_per_ranking"] / rows["pro-plain"]["seconds_per_ranking"]
        row["time_vs_pro_shared"] = row["seconds_per_ranking"] / rows["pro-shared"]["seconds_per_ranking"]
        row["time_vs_dpo_adjacent"] = row["seconds_per_ranking"] / dpo_adjacent["seconds_per_ranking"]
        row["memory_vs_dpo_adjacent"] = row["memory"]["peak_mb"] / dpo_adjacent["memory"]["peak_mb"]
    busy = float(load_start.split()[0]) > (os.cpu_count() or 1)
    report = {
        "benchmark": "train_step_rankings",
        "model": args.model,
        "environment": environment("cpu"),
        "setup": f"model {args.model}, {args.rankings_per_step} rankings of 4 per step (HH-RLHF lengths, "
        f"{args.rankings_per_step * 3} / {args.rankings_per_step * 6} DPO pairs per step), max_length "
        f"{args.max_length}, {args.warmup} warm-up + {args.steps} timed steps per run, {args.repeats} runs per "
        f"trainer (alternating order), {args.threads} torch thread(s), fp32, full fine-tuning (DPO's reference model "
        "is a frozen copy)",
        "load_average_start_end": [load_start, load_end],
        "machine_note": "Other processes were running on the machine (load above the CPU count): the ratios come "
        "from alternating runs in one invocation, absolute times are inflated."
        if busy
        else "",
        "rows": rows,
        "list_dpo_goal": f"list DPO time per ranking of 4 <= {LIST_DPO_GOAL:.3f} x TRL DPO's over the 3 adjacent pairs",
        "list_dpo_over_dpo_adjacent": {
            variant: rows[f"list_dpo-{variant}"]["time_vs_dpo_adjacent"] for variant in ("shared", "precomputed")
        },
    }
    output = Path(args.output) if args.output else RESULTS / f"train_step_rankings_cpu_{args.model}"
    output.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(report, indent=2) + "\n"), (".md", ranking_markdown(report))):
        tmp = output.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, output.with_suffix(suffix))
    ranking_plot(report, output.with_suffix(".png"))
    print(ranking_markdown(report))


def ranking_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# Train step per ranking of 4: PRO vs DPO over its pairs ({report['model']}, cpu)",
        "",
        f"Date {env['date']}; {env.get('cpu_model') or env['cpu']} ({env['cpu_count']} CPU threads); torch "
        f"{env['torch']}, transformers {env['transformers']}, trl {env['trl']}.",
        "",
        f"Setup: {report['setup']}. Load average at start / end: {' / '.join(report['load_average_start_end'])}. "
        f"{report['machine_note']}",
        "",
        "| trainer | median step (s) | median of each run (s) | s / ranking | policy tokens / ranking "
        "| peak memory (MiB added to RSS) | time vs PRO plain | time vs PRO shared | time vs DPO adjacent "
        "| memory vs DPO adjacent |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"].values():
        runs = ", ".join(f"{t:.3f}" for t in row["run_medians_s"])
        memory = row.get("memory")
        lines.append(
            f"| {row['label']} | {row['median_step_s']:.3f} | {runs} | {row['seconds_per_ranking']:.3f} | "
            f"{row['policy_tokens_per_ranking']:.0f} | {memory['peak_mb']:.0f} | {row['time_vs_pro_plain']:.2f} | "
            f"{row['time_vs_pro_shared']:.2f} | {row['time_vs_dpo_adjacent']:.3f} | "
            f"{row['memory_vs_dpo_adjacent']:.2f} |"
        )
    lines += [""]
    for variant, name in (("shared", "reference on the fly"), ("precomputed", "reference precomputed")):
        ratio = report["list_dpo_over_dpo_adjacent"][variant]
        verdict = "meets" if ratio <= LIST_DPO_GOAL else "does not meet"
        lines.append(
            f"- list DPO ({name}) / DPO over the 3 adjacent pairs, time per ranking: **{ratio:.3f}** ({verdict} the "
            f"goal of <= 1/3)."
        )
    precompute = report["rows"]["list_dpo-precomputed"]["precompute_s_per_ranking"]
    if precompute is not None:
        lines.append(
            f"- The one-off precomputation of the reference log-probs, before training: {precompute:.3f} s per "
            "ranking (not in the step times)."
        )
    lines += [
        "",
        "Each step covers the same number of rankings: PRO and list DPO take them whole, DPO their 3 adjacent or 6 "
        "pairs (the batch holds all pairs of those rankings' size; TRL shuffles rows, so a DPO step's pairs come "
        "from several rankings, the same ones on average). DPO runs the reference model forward on every pair; list "
        "DPO (Plackett-Luce, `ListDPOTrainer`) once per ranking, through the same fused token-level core without "
        "grad, or not at all with `precompute_ref_log_probs` (the reference is then the initial policy, before "
        "training: no frozen copy is kept). Policy tokens per ranking count the prompt once per candidate row "
        "(plain, DPO) or once per ranking (shared). Peak memory: peak RSS while training minus RSS before training "
        "(sampled every 5 ms).",
    ]
    return "\n".join(lines) + "\n"


def ranking_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(report["rows"].values())
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(
        [r["label"].replace(", reference", ",\nreference") for r in rows],
        [r["seconds_per_ranking"] for r in rows],
        color=["tab:blue", "tab:green", "tab:purple", "tab:pink", "tab:orange", "tab:red"][: len(rows)],
    )
    for i, r in enumerate(rows):
        ax.text(i, r["seconds_per_ranking"], f"{r['time_vs_dpo_adjacent']:.2f}x", ha="center", va="bottom")
    ax.set_ylabel("median step time per ranking (s)")
    ax.set_title(f"Rankings of 4, {report['model']} Llama, CPU (labels: time vs DPO adjacent)", fontsize=9)
    plt.setp(ax.get_xticklabels(), fontsize=7, rotation=20, ha="right")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


# === RRHF: PRO, RRHF and DPO at ranking lengths 2 and 4 on the same ranked rows (`--ranking_lengths`) ================
# Kept in this one section (plus two dispatch lines in `main`) so that it merges apart from the pairwise comparison.

RANKING_TRAINERS = ("pro", "rrhf", "dpo")
RANKING_LENGTHS = (2, 4)


def synthetic_rankings(num_rows: int, n: int, prompt_tokens: int, completion_tokens: int, seed: int = 0):
    """Ranked rows (`prompt`, `completions` best to worst, distinct descending `scores`) whose prompt and completions
    tokenize to exactly `prompt_tokens` and `completion_tokens` (EOS included) with the tiny tokenizer."""
    from datasets import Dataset

    from trl_pro.assets import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    words = sorted(w[1:] for w in tokenizer.get_vocab() if w.startswith("Ġ") and w[1:].isalpha() and len(w) > 3)
    rng = random.Random(seed)

    def text(count: int) -> str:
        return "".join(" " + rng.choice(words) for _ in range(count))

    rows = [
        {
            "prompt": text(prompt_tokens),
            "completions": [text(completion_tokens - 1) for _ in range(n)],
            "scores": sorted((rng.uniform(-2, 2) for _ in range(n)), reverse=True),
        }
        for _ in range(num_rows)
    ]
    check = tokenizer(rows[0]["prompt"] + rows[0]["completions"][0] + tokenizer.eos_token, add_special_tokens=False)
    assert len(check["input_ids"]) == prompt_tokens + completion_tokens, len(check["input_ids"])
    return Dataset.from_list(rows)


def adjacent_pairs(rankings):
    """The pairs a DPO user trains on from rankings: every adjacent pair (1 > 2, 2 > 3, ...), n - 1 per prompt."""
    from datasets import Dataset

    pairs = [
        {"prompt": row["prompt"], "chosen": better, "rejected": worse}
        for row in rankings
        for better, worse in zip(row["completions"][:-1], row["completions"][1:])
    ]
    return Dataset.from_list(pairs)


def lengths_worker(args) -> dict:
    """One trainer at one ranking length, in its own process: (step times, peak memory, tokens per step)."""
    import torch
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from trl_pro.assets import load_tiny_tokenizer
    from trl_pro.trainers.pro_config import PROConfig
    from trl_pro.trainers.pro_trainer import PROTrainer
    from trl_pro.trainers.rrhf_config import RRHFConfig
    from trl_pro.trainers.rrhf_trainer import RRHFTrainer

    trainer_name, n = args.ranking_worker, args.ranking_length
    torch.manual_seed(0)
    half = args.max_length // 2
    num_rows = args.batch_size * (args.warmup + args.steps) + 8
    # The same rows for every trainer and length: rankings of 4, cut to their best n
    rankings = synthetic_rankings(num_rows, max(RANKING_LENGTHS), half, half)
    rankings = rankings.map(lambda row: {"completions": row["completions"][:n], "scores": row["scores"][:n]})

    times: list[float] = []
    cpu_times: list[float] = []

    class StepTimer(TrainerCallback):
        # Wall time, and the CPU time of this process (every thread): on a machine shared with other jobs, the CPU time
        # of a step is far less disturbed by them than its wall time
        def on_step_begin(self, *_, **__):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.t0)
            cpu_times.append(time.process_time() - self.c0)

    common = dict(
        output_dir=tempfile.mkdtemp(prefix=f"bench-{trainer_name}{n}-"),
        max_steps=args.warmup + args.steps,
        learning_rate=1e-5,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        max_length=args.max_length,
        gradient_checkpointing=False,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    tokenizer = load_tiny_tokenizer()
    if trainer_name == "dpo":
        # One step covers the same prompts as a PRO/RRHF step: batch_size prompts x (n - 1) adjacent pairs
        config = DPOConfig(
            **common, per_device_train_batch_size=args.batch_size * (n - 1), beta=0.1, truncation_mode="keep_end"
        )
        trainer = DPOTrainer(
            args.model_path, args=config, train_dataset=adjacent_pairs(rankings), processing_class=tokenizer
        )
        tokens = [
            2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in trainer.train_dataset
        ]
        tokens_per_step = statistics.mean(tokens) * args.batch_size * (n - 1)
    else:
        config_class, trainer_class = (PROConfig, PROTrainer) if trainer_name == "pro" else (RRHFConfig, RRHFTrainer)
        config = config_class(**common, per_device_train_batch_size=args.batch_size, max_prompt_length=half)
        trainer = trainer_class(args.model_path, config, train_dataset=rankings, processing_class=tokenizer)
        tokens = [
            len(r["prompt_ids"]) * len(r["completion_ids"]) + sum(map(len, r["completion_ids"]))
            for r in trainer.train_dataset
        ]
        tokens_per_step = statistics.mean(tokens) * args.batch_size
    trainer.add_callback(StepTimer())
    with _RssSampler() as rss:
        trainer.train()
    measured = times[args.warmup :]
    return {
        "trainer": trainer_name,
        "ranking_length": n,
        "step_times_s": measured,
        "median_step_s": statistics.median(measured),
        "step_cpu_times_s": cpu_times[args.warmup :],
        "median_step_cpu_s": statistics.median(cpu_times[args.warmup :]),
        "tokens_per_step_mean": tokens_per_step,
        "memory": {
            "peak_mb": (rss.peak - rss.start) / 2**20,
            "before_training_mb": rss.start / 2**20,
            "peak_process_rss_mb": rss.peak / 2**20,
        },
    }


def run_lengths_worker(args, trainer: str, n: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--ranking_worker",
        trainer,
        "--ranking_length",
        str(n),
        "--model",
        args.model,
        "--model_path",
        str(args.model_path),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch_size",
        str(args.batch_size),
        "--max_length",
        str(args.max_length),
    ]
    # One thread per worker: the machine's cores are shared with other jobs, and an OpenMP team that spins while it
    # waits for a busy core inflates both the wall time and the CPU time of a step by whatever the other jobs do
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{trainer} (n={n}) worker failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def lengths_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# Train step: PRO, RRHF and DPO at ranking lengths 2 and 4 ({report['model']}, {env['device']})",
        "",
        f"Date {env['date']}; {env.get('cpu_model') or env['cpu']} ({env['cpu_count']} CPU threads); torch "
        f"{env['torch']}, transformers {env['transformers']}, trl {env['trl']}, trl-pro {env['trl_pro']}.",
        "",
        f"Setup: {report['setup']}",
        "",
        "| n | trainer | median step (s) | median of each run (s) | step time / PRO | median step CPU time (s) | "
        "CPU time / PRO | peak memory (MiB added to RSS) | memory / PRO | tokens / step | steps timed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        runs = ", ".join(f"{t:.4f}" for t in row["run_medians_s"])
        lines.append(
            f"| {row['ranking_length']} | {row['trainer'].upper()} | {row['median_step_s']:.4f} | {runs} | "
            f"{row['step_time_ratio_over_pro']:.3f} | {row['median_step_cpu_s']:.4f} | "
            f"{row['cpu_time_ratio_over_pro']:.3f} | {row['memory']['peak_mb']:.1f} | "
            f"{row['peak_memory_ratio_over_pro']:.3f} | {row['tokens_per_step_mean']:.0f} | "
            f"{len(row['step_times_s'])} |"
        )
    lines += [
        "",
        "Every trainer sees the same ranked rows (rankings of 4 cut to their best n) and the same model; a step "
        "covers the same prompts. PRO and RRHF score all n candidates of a prompt in one forward/backward through "
        "the same fused loss core (they differ only in the ranking objective); DPO trains on the adjacent pairs "
        "(n - 1 per prompt: 1 > 2, 2 > 3, 3 > 4, what a user would train DPO on from a ranking), so its batch holds "
        "n - 1 pairs per prompt, and it also runs its reference model (a frozen copy) forward. Step time is from "
        "`on_step_begin` to `on_step_end` (wall time; CPU time: `time.process_time` of the worker, all its threads); "
        "the first steps are warm-up. Memory: peak RSS while training minus RSS before training (sampled every 5 ms). "
        "Ratios are against PRO at the same n.",
        "",
        "CPU timings on a shared machine vary from run to run (other jobs take the cores: compare the medians of each "
        "run); the ratios come from interleaved runs in one invocation, and the CPU-time ratios are the steadier "
        "ones. Not measured on GPU.",
    ]
    return "\n".join(lines) + "\n"


def lengths_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    width = 0.25
    for j, trainer in enumerate(RANKING_TRAINERS):
        rows = [r for r in report["rows"] if r["trainer"] == trainer]
        x = [RANKING_LENGTHS.index(r["ranking_length"]) + (j - 1) * width for r in rows]
        axes[0].bar(x, [r["median_step_s"] for r in rows], width, label=trainer.upper())
        axes[1].bar(x, [r["median_step_cpu_s"] for r in rows], width, label=trainer.upper())
        axes[2].bar(x, [r["memory"]["peak_mb"] for r in rows], width, label=trainer.upper())
    for ax, label in (
        (axes[0], "median step time (s)"),
        (axes[1], "median step CPU time (s)"),
        (axes[2], "peak memory (MiB added to RSS)"),
    ):
        ax.set_xticks(range(len(RANKING_LENGTHS)), [f"n = {n}" for n in RANKING_LENGTHS])
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"Train step, {report['model']} on CPU - {report['environment']['date'][:10]}")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def ranking_lengths_main(args) -> None:
    """`--ranking_lengths`: PRO, RRHF and DPO at n = 2 and 4, interleaved runs, one report."""
    args.steps = args.steps or 20
    args.batch_size = args.batch_size or 4
    if args.model not in ("tiny", "small"):
        raise SystemExit("--ranking_lengths runs on CPU with --model tiny or small")
    configs = [(trainer, n) for n in RANKING_LENGTHS for trainer in RANKING_TRAINERS]
    with tempfile.TemporaryDirectory(prefix="bench-model-") as folder:
        args.model_path = save_model(args.model, Path(folder))
        runs = {config: [] for config in configs}
        for _ in range(args.repeats):
            for trainer, n in configs:
                runs[(trainer, n)].append(run_lengths_worker(args, trainer, n))
                print(f"{trainer} n={n}: median step {runs[(trainer, n)][-1]['median_step_s']:.4f} s", file=sys.stderr)
    rows = []
    for (_trainer, _n), results in runs.items():
        times = [t for r in results for t in r["step_times_s"]]
        cpu_times = [t for r in results for t in r["step_cpu_times_s"]]
        peak = max(results, key=lambda r: r["memory"]["peak_mb"])["memory"]
        rows.append(
            {
                **results[0],
                "step_times_s": times,
                "median_step_s": statistics.median(times),
                "step_cpu_times_s": cpu_times,
                "median_step_cpu_s": statistics.median(cpu_times),
                "memory": peak,
                "run_medians_s": [r["median_step_s"] for r in results],
            }
        )
    for row in rows:
        pro = next(r for r in rows if r["trainer"] == "pro" and r["ranking_length"] == row["ranking_length"])
        row["step_time_ratio_over_pro"] = row["median_step_s"] / pro["median_step_s"]
        row["cpu_time_ratio_over_pro"] = row["median_step_cpu_s"] / pro["median_step_cpu_s"]
        row["peak_memory_ratio_over_pro"] = row["memory"]["peak_mb"] / pro["memory"]["peak_mb"]
    report = {
        "benchmark": "train_step_ranking_lengths",
        "model": args.model,
        "setup": f"model {args.model}, synthetic ranked rows ({args.max_length // 2} prompt + {args.max_length // 2} "
        f"completion tokens per candidate, distinct reward scores), {args.batch_size} prompts per step, "
        f"{args.warmup} warm-up + {args.steps} timed steps per run, {args.repeats} runs per configuration "
        "(interleaved), one CPU thread per worker, fp32, no gradient checkpointing, full fine-tuning",
        "environment": environment("cpu"),
        "rows": rows,
    }
    output = Path(args.output) if args.output else RESULTS / "train_step_rrhf_cpu"
    output.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(report, indent=2) + "\n"), (".md", lengths_markdown(report))):
        tmp = output.with_suffix(".tmp" + suffix)
        tmp.write_text(text)
        os.replace(tmp, output.with_suffix(suffix))
    lengths_plot(report, output.with_suffix(".png"))
    print(lengths_markdown(report))


if __name__ == "__main__":
    main()
