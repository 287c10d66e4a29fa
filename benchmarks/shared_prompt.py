"""Shared-prompt benchmark: one packed row per ranking against one row per candidate (not a test).

The same rankings, model and loss go through one training step (forward, backward, AdamW step) in both layouts:
- plain: every candidate is a row `prompt + candidate` (the prompt is encoded n times);
- shared: every ranking is a row `[prompt, candidate 1, ..., candidate n]` with the shared-prompt 4D mask
  (`trl_pro.loss_core.shared_prompt`, sdpa backend on CPU).

Rankings of n = 2, 4, 8 candidates are drawn from the vendored HH-RLHF slice: the prompt of one row, and n responses
(chosen or rejected) of random rows as candidates, so prompt and response lengths follow the data; tokenized and
truncated with the trainer's rules (max_length 512, max_prompt_length 384). Models: the tiny Llama of
`trl_pro.assets` and a small (~50M parameters) Llama, fp32.

Timing: both layouts alternate step by step in one process (the machine may be shared), each (model, n, layout)
gets `--repeats` timed steps after a warm-up, on the same batches; medians and their ratio are reported. Peak
memory: peak RSS above the RSS before the step (VmHWM reset through /proc/self/clear_refs), measured in a child
process whose glibc returns freed memory at once (MALLOC_MMAP_THRESHOLD_=65536), as in `loss_core.py`.

Writes benchmarks/results/shared_prompt_cpu.{json,md,png}.

    python benchmarks/shared_prompt.py
    python benchmarks/shared_prompt.py --models tiny --n 2 --repeats 1 --out /tmp/sp   # quick check
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from trl_pro.data.layout import RankingLayout  # noqa: E402


GOALS = {2: 1.3, 4: 2.0}  # shared step at least this many times faster than plain, memory no higher
MODELS = {
    "tiny": {},
    # ~50M parameters: 10 layers of width 640 (the tiny tokenizer's 2048-token vocabulary)
    "small-50M": dict(
        hidden_size=640, intermediate_size=1728, num_hidden_layers=10, num_attention_heads=10, num_key_value_heads=10
    ),
}
LAYOUTS = ("plain", "shared")


def build_model(name: str):
    from trl_pro.assets import build_tiny_llama
    from trl_pro.loss_core.head import add_ranking_loss_head

    model = build_tiny_llama(0, **MODELS[name])
    model.config._attn_implementation = "sdpa"
    add_ranking_loss_head(model)
    return model.train()


def make_rankings(n: int, count: int, seed: int, max_length: int = 512, max_prompt_length: int = 384):
    """`count` tokenized rankings of `n` candidates with HH-RLHF prompt and response lengths."""
    from trl.data_utils import extract_prompt

    from trl_pro.assets import load_hh_rlhf_slice, load_tiny_tokenizer
    from trl_pro.data.formats import rank, to_ranking
    from trl_pro.data.tokenization import tokenize_ranking

    tokenizer = load_tiny_tokenizer()
    rows = [extract_prompt(r) for r in load_hh_rlhf_slice("train")]
    rows = [r for r in rows if r["chosen"].strip() and r["rejected"].strip()]
    rng = random.Random(seed)
    out = []
    for i in range(count):
        prompt = rng.choice(rows)["prompt"]
        completions = [rng.choice(rows)[rng.choice(("chosen", "rejected"))] for _ in range(n)]
        scores = [rng.gauss(0, 1) for _ in range(n)]
        ranking = rank(
            to_ranking({"prompt": prompt, "completions": completions, "scores": scores}, i, "ranked", True), i, None
        )
        tokens = tokenize_ranking(ranking, i, tokenizer, max_length, max_prompt_length)
        out.append({**tokens, "scores": ranking["scores"], "sft_index": ranking["sft_index"]})
    return out


def make_batches(n: int, batches: int, rankings_per_step: int, seed: int = 0) -> dict[str, list[dict]]:
    from trl_pro.data.collator import DataCollatorForRanking

    rankings = make_rankings(n, batches * rankings_per_step, seed=seed + n)
    out = {}
    for layout in LAYOUTS:
        collator = DataCollatorForRanking(pad_token_id=0, shared_prompt=layout == "shared")
        out[layout] = [collator(rankings[b * rankings_per_step : (b + 1) * rankings_per_step]) for b in range(batches)]
    return out


def step(model, optimizer, batch) -> None:
    layout = RankingLayout(batch["token_offsets"], batch["ranking_offsets"], batch["sft_candidate"])
    n = layout.ranking_lengths().float()
    output = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        ranking_inputs={
            "completion_mask": batch["completion_mask"],
            "segment_ids": batch.get("segment_ids"),
            "layout": layout,
            "rewards": batch["rewards"],
            "sft_weight": 0.05 * (n - 1) ** 2,
        },
    )
    output.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def batch_tokens(batch) -> dict:
    """Tokens the model processes (real, and with padding) and tokens scored."""
    return {
        "tokens": int(batch["attention_mask"].sum()),
        "padded_tokens": batch["input_ids"].numel(),
        "scored_tokens": int(batch["token_offsets"][-1]),
    }


def _proc_status(key: str) -> int:
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def memory_worker(spec: str) -> None:
    """Peak RSS of one step per (n, layout), interleaved, in this child process (MALLOC_MMAP_THRESHOLD_ set low)."""
    spec = json.loads(spec)
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = build_model(spec["model"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    result = {}
    for n in spec["n"]:
        batches = make_batches(n, 1, spec["rankings_per_step"])
        for layout in LAYOUTS:  # warm-up: optimizer state and one-time allocations are not the step's
            step(model, optimizer, batches[layout][0])
        for layout in LAYOUTS:
            gc.collect()
            before = _proc_status("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
                f.write("5")
            step(model, optimizer, batches[layout][0])
            result[f"{n}/{layout}"] = (_proc_status("VmHWM") - before) / 2**20
    print("MEMORY_RESULT " + json.dumps(result), flush=True)


def peak_memory(model: str, ns, rankings_per_step: int) -> dict:
    spec = json.dumps(
        {"model": model, "n": list(ns), "rankings_per_step": rankings_per_step, "threads": torch.get_num_threads()}
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory-worker", spec], env=env, capture_output=True, text=True
    )
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY_RESULT "):
            return json.loads(line[len("MEMORY_RESULT ") :])
    raise RuntimeError(f"memory pass failed for {model}:\n{proc.stderr[-3000:]}")


def time_model(name: str, args) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    parameters = sum(p.numel() for p in model.parameters())
    batches = {n: make_batches(n, args.batches, args.rankings_per_step) for n in args.n}
    times = {(n, layout): [] for n in args.n for layout in LAYOUTS}
    for repeat in range(args.warmup + args.repeats):
        for n in args.n:
            batch_index = repeat % args.batches
            # Alternate which layout goes first, so neither always follows the other
            order = LAYOUTS if repeat % 2 == 0 else LAYOUTS[::-1]
            for layout in order:
                start = time.perf_counter()
                step(model, optimizer, batches[n][layout][batch_index])
                if repeat >= args.warmup:
                    times[(n, layout)].append(time.perf_counter() - start)
        print(f"{name}: repetition {repeat + 1}/{args.warmup + args.repeats} done", file=sys.stderr, flush=True)
    memory = peak_memory(name, args.n, args.rankings_per_step)
    rows = []
    for n in args.n:
        for layout in LAYOUTS:
            counts = [batch_tokens(b) for b in batches[n][layout]]
            rows.append(
                {
                    "model": name,
                    "parameters": parameters,
                    "n": n,
                    "layout": layout,
                    "rankings_per_step": args.rankings_per_step,
                    "tokens_per_step": statistics.mean(c["tokens"] for c in counts),
                    "padded_tokens_per_step": statistics.mean(c["padded_tokens"] for c in counts),
                    "scored_tokens_per_step": statistics.mean(c["scored_tokens"] for c in counts),
                    "step_times_s": times[(n, layout)],
                    "median_step_s": statistics.median(times[(n, layout)]),
                    "peak_mem_mb": memory[f"{n}/{layout}"],
                }
            )
    for row in rows:
        plain = next(r for r in rows if r["n"] == row["n"] and r["layout"] == "plain")
        row["speedup_vs_plain"] = plain["median_step_s"] / row["median_step_s"]
        row["tokens_vs_plain"] = row["tokens_per_step"] / plain["tokens_per_step"]
        row["mem_vs_plain"] = row["peak_mem_mb"] / plain["peak_mem_mb"] if plain["peak_mem_mb"] > 0 else None
    return rows


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3]) + f" (on {os.cpu_count()} CPUs)"
    except OSError:
        return "unknown"


def hardware() -> str:
    try:
        model = re.search(r"model name\s*:\s*(.+)", open("/proc/cpuinfo").read()).group(1).strip()
    except (OSError, AttributeError):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


def verdicts(rows) -> list[str]:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for n, goal in GOALS.items():
            row = next((r for r in rows if r["model"] == model and r["n"] == n and r["layout"] == "shared"), None)
            if row is None:
                continue
            fast = row["speedup_vs_plain"] >= goal
            memory = row["mem_vs_plain"] is not None and row["mem_vs_plain"] <= 1.0
            met = "met" if fast and memory else "NOT met"
            out.append(
                f"{model}, n = {n}: shared step {row['speedup_vs_plain']:.2f}x faster (goal >= {goal}x), "
                f"peak memory {row['mem_vs_plain']:.2f}x plain (goal <= 1): **{met}**"
            )
    return out


def markdown(meta, rows) -> str:
    lines = [
        "# Shared-prompt layout vs plain layout, one training step (cpu)",
        "",
        f"- Hardware: {meta['hardware']}",
        f"- Versions: torch {meta['torch']}, transformers {meta['transformers']}, python {meta['python']}",
        f"- Date: {meta['date']}",
        f"- Setup: {meta['setup']}",
        f"- Load average at start / end: {meta['load_start']} / {meta['load_end']}. {meta['machine_note']}",
        "",
        "| model | params | n | layout | tokens / step | padded tokens / step | scored tokens | median step (s) "
        "| speedup vs plain | tokens vs plain | peak mem (MiB) | mem vs plain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['n']} | {r['layout']} | {r['tokens_per_step']:.0f} | "
            f"{r['padded_tokens_per_step']:.0f} | {r['scored_tokens_per_step']:.0f} | {r['median_step_s']:.3f} | "
            f"{r['speedup_vs_plain']:.2f} | {r['tokens_vs_plain']:.2f} | {r['peak_mem_mb']:.1f} | "
            + ("n/a" if r["mem_vs_plain"] is None else f"{r['mem_vs_plain']:.2f}")
            + " |"
        )
    lines += ["", "## Goals", ""] + [f"- {v}" for v in verdicts(rows)]
    lines += [
        "",
        "Both layouts score exactly the same tokens with the same loss and gradients (tests/loss_core/test_shared_prompt.py); "
        "the shared layout processes each prompt once. GPU (flex_attention BlockMask): not measured on GPU.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        shared = [r for r in rows if r["model"] == model and r["layout"] == "shared"]
        xs = [j + i * width for j in range(len(shared))]
        axes[0].bar(xs, [r["speedup_vs_plain"] for r in shared], width, label=model)
        axes[1].bar(xs, [r["mem_vs_plain"] or 0 for r in shared], width, label=model)
        for ax in axes:
            ax.set_xticks(
                [j + width * (len(models) - 1) / 2 for j in range(len(shared))], [f"n={r['n']}" for r in shared]
            )
    for _n, goal in GOALS.items():
        axes[0].axhline(goal, ls="--", lw=0.8, color="gray")
    axes[0].set_ylabel("plain step time / shared step time")
    axes[0].set_title("Speedup of the shared-prompt layout")
    axes[1].axhline(1.0, ls="--", lw=0.8, color="gray")
    axes[1].set_ylabel("shared peak memory / plain")
    axes[1].set_title("Peak memory (RSS) ratio")
    axes[0].legend()
    fig.suptitle("PRO training step on CPU, HH-RLHF lengths (dashed: goals)")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--n", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--rankings_per_step", type=int, default=2)
    parser.add_argument("--batches", type=int, default=3, help="distinct batches per (n), cycled over repetitions")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a machine shared with other jobs, two threads stall at "
        "every op waiting for each other, which swamps the layouts' difference)",
    )
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(args.memory_worker)
        return
    import transformers

    load_start = load_average()
    rows = []
    for name in args.models:
        rows += time_model(name, args)
    busy = float(load_start.split()[0]) > os.cpu_count()
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "hardware": hardware(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_start": load_start,
        "load_end": load_average(),
        "setup": f"{args.threads} torch thread(s), {args.rankings_per_step} rankings per step, {args.batches} distinct batches per n cycled, "
        f"{args.warmup} warm-up + {args.repeats} timed steps per (model, n, layout), the layouts alternating step by "
        "step; fp32, sdpa attention, AdamW, loss core `torch` implementation, max_length 512, max_prompt_length 384",
        "machine_note": "Other processes were running on the machine (load above the CPU count): absolute times are "
        "inflated and noisy; the ratios come from interleaved steps."
        if busy
        else "The machine was otherwise quiet.",
    }
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "shared_prompt_cpu")
    _write(
        base + ".json",
        json.dumps({"benchmark": "shared_prompt", "meta": meta, "results": rows, "goals": verdicts(rows)}, indent=2)
        + "\n",
    )
    _write(base + ".md", markdown(meta, rows))
    plot(rows, base + ".png")
    print(markdown(meta, rows))


if __name__ == "__main__":
    main()
