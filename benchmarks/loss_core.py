"""Benchmark of the PRO loss core: forward + backward time and peak memory (not a test).

Methods, on the same inputs (hidden states of the scored positions [T, H] and an LM head [V, H], bf16, no bias):
    (a) eager     the authors' style: logits in the model dtype and a full fp32 log_softmax, one candidate at a time,
                  every candidate's tensors kept for the backward (`reference.eager_ranking_loss_from_hidden`).
    (b) trl       TRL's chunked fused LM-head log-probs (`trl.kernels.ChunkedLogProbFunction`) + torch cascade.
    (c) fused     this package's core, `ranking_loss_from_hidden(implementation="auto")`: the Triton kernels on CUDA,
                  the torch twin of the same chunked algorithm on CPU.
Each with a trainable and a frozen (LoRA/QLoRA) LM head. Ratios are against (a) and (b) of the same run, on the best
of the timed steps (the machine may be shared; the median is in the JSON too).

On CUDA the full grid runs: n in {2, 4, 8}, tokens per candidate in {512, 2048}, vocab in {32000, 128256},
hidden 4096, bf16. On CPU a reduced grid runs (stated in the output). Peak memory: CUDA, the allocator's peak above
what was allocated before the step; CPU, the peak resident set size above the resident size before the step
(VmHWM, reset through /proc/self/clear_refs), in a child process whose glibc mmap threshold is pinned low so that
freed tensors leave the RSS (the timing runs in the parent, with the allocator's usual caching).

Writes benchmarks/results/loss_core_{cpu,cuda}.{json,md,png}, stamped with the hardware, versions and date.

    python benchmarks/loss_core.py                 # CUDA if present (full grid), else CPU (reduced grid)
    python benchmarks/loss_core.py --device cpu --hidden 256 --repeats 2
"""

import argparse
import datetime
import gc
import json
import os
import platform
import re
import statistics
import subprocess  # noqa: E402
import sys
import time

import torch  # noqa: E402


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from trl_pro.data.layout import RankingLayout  # noqa: E402
from trl_pro.loss_core.dispatch import ranking_loss_from_hidden, trl_ranking_loss_from_hidden  # noqa: E402
from trl_pro.loss_core.reference import eager_ranking_loss_from_hidden  # noqa: E402


METHODS = ("eager", "trl", "fused")
PEERS = ("liger",)  # optional, with --methods: Liger-Kernel's chunked fused-linear preference loss (SimPO), pure torch
LABELS = {
    "eager": "(a) eager, authors' style",
    "trl": "(b) TRL chunked + torch cascade",
    "fused": "(c) fused core",
    "liger": "(d) Liger fused-linear SimPO (pairs)",
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# The real shape of the paper's model on CPU (`--point llama7b`): LLaMA-7B's head, one ranking of 4 x 512 tokens, fp32
# (CPU torch has no fast bf16 matmul)
LLAMA7B_POINT = dict(n=[4], tokens=[512], vocab=[32000], hidden=[4096], prompts=1, dtype="fp32")
# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s), for the matmul-throughput column
BF16_PEAK_TFLOPS = {
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.4,
    "A100": 312.0,
    "L40S": 362.05,
    "L4": 121.0,
    "A10G": 70.0,
    "RTX 4090": 165.2,
}
GPU_GOAL = dict(n=4, tokens=512, vocab=32000, hidden=4096)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = open("/proc/cpuinfo").read()
        model = re.search(r"model name\s*:\s*(.+)", cpuinfo).group(1).strip()
    except (OSError, AttributeError):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


def load_average() -> str:
    # Other jobs on the machine inflate the timings: record how busy it was
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3]) + f" (on {os.cpu_count()} CPUs)"
    except OSError:
        return "unknown"


def versions() -> dict:
    out = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("triton", "trl", "transformers"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out


def make_inputs(n, tokens, vocab, hidden_size, prompts, trainable, device, seed=0, dtype="bf16"):
    g = torch.Generator(device="cpu").manual_seed(seed)
    num_candidates = prompts * n
    token_offsets = torch.arange(num_candidates + 1) * tokens
    ranking_offsets = torch.arange(prompts + 1) * n
    layout = RankingLayout(token_offsets, ranking_offsets, ranking_offsets[:-1].clone()).to(device)
    num_tokens = num_candidates * tokens
    dtype = DTYPES[dtype]
    hidden = torch.randn(num_tokens, hidden_size, generator=g, dtype=dtype).to(device).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=g, dtype=dtype) * hidden_size**-0.5).to(device)
    weight.requires_grad_(trainable)
    targets = torch.randint(0, vocab, (num_tokens,), generator=g).to(device)
    rewards = torch.sort(torch.randn(prompts, n, generator=g), dim=1, descending=True).values.flatten().to(device)
    beta = torch.full((prompts,), 0.05 * (n - 1) ** 2, device=device)
    return dict(
        hidden=hidden, weight=weight, targets=targets, layout=layout, rewards=rewards, beta=beta, n=n, tokens=tokens
    )


def _liger_step(x):
    """Liger-Kernel's chunked fused linear + SimPO loss (mean token log-prob, like PRO's score) on the same hidden
    states as pairs: the n candidates of a ranking as n/2 (chosen, rejected) pairs, `compiled=False` (CPU)."""
    from liger_kernel.chunked_loss import LigerFusedLinearSimPOLoss

    candidates = x["hidden"].shape[0] // x["tokens"]
    if candidates % 2:
        raise ValueError("the Liger peer needs an even number of candidates")
    hidden = x["hidden"].view(candidates, x["tokens"], -1)
    targets = x["targets"].view(candidates, x["tokens"])
    return LigerFusedLinearSimPOLoss(compiled=False)(x["weight"], hidden, targets)


def step(method, x):
    args = (x["hidden"], x["weight"], None, x["targets"], x["layout"], x["rewards"])
    kwargs = dict(sft_weight=x["beta"])
    if method == "eager":
        out = eager_ranking_loss_from_hidden(*args, **kwargs, upcast=False, per_candidate=True)
    elif method == "trl":
        out = trl_ranking_loss_from_hidden(*args, **kwargs)
    elif method == "liger":
        out = _liger_step(x)
    else:
        out = ranking_loss_from_hidden(*args, **kwargs, implementation="auto")
    (out[0] if isinstance(out, tuple) else out.loss).backward()
    x["hidden"].grad = None
    x["weight"].grad = None


def _proc_status(key: str) -> int:
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def peak_memory(method, x, device) -> float:
    """Peak bytes above the memory in use before one forward + backward."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step(method, x)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = _proc_status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")
    step(method, x)
    return _proc_status("VmHWM") - before


def memory_worker(spec: str) -> None:
    """CPU memory pass, in a child process whose glibc returns freed blocks to the OS at once (MALLOC_MMAP_THRESHOLD_
    pinned low, set by the parent), so that the RSS follows the live tensors. Timing runs in the parent, whose
    allocator keeps its usual caching."""
    spec = json.loads(spec)
    device = torch.device("cpu")
    x = make_inputs(
        spec["n"],
        spec["tokens"],
        spec["vocab"],
        spec["hidden"],
        spec["prompts"],
        spec["head"] == "trainable",
        device,
        dtype=spec["dtype"],
    )
    result = {}
    for method in spec["methods"]:
        if spec.get("warmup", True):
            step(method, x)  # warm-up: one-time allocations are not the step's
        result[method] = peak_memory(method, x, device) / 2**20
    print("MEMORY_RESULT " + json.dumps(result), flush=True)


def cpu_peak_memory(cfg, prompts, methods, dtype="bf16") -> dict:
    # The LLaMA-7B point skips the memory warm-up step (minutes on CPU; fp32 on CPU has no one-time allocations)
    spec = json.dumps(dict(cfg, prompts=prompts, methods=list(methods), dtype=dtype, warmup=cfg["hidden"] < 4096))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory-worker", spec], env=env, capture_output=True, text=True
    )
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY_RESULT "):
            return json.loads(line[len("MEMORY_RESULT ") :])
    print(f"memory pass failed for {cfg}:\n{proc.stderr[-2000:]}", file=sys.stderr)
    return {}


def timings(method, x, device, repeats) -> list[float]:
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step(method, x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append((time.perf_counter() - start) * 1e3)
    return out


def gemm_flops(row) -> float:
    # Executed GEMM work of the fused core: forward logits, backward recompute, d hidden, and d weight if trainable
    per_gemm = 2.0 * row["num_tokens"] * row["vocab"] * row["hidden"]
    return per_gemm * (4 if row["head"] == "trainable" else 3)


def run_grid(args, device):
    grid = [
        dict(n=n, tokens=t, vocab=v, hidden=h, head=head)
        for v in args.vocab
        for h in args.hidden
        for t in args.tokens
        for n in args.n
        for head in args.heads
    ]
    rows = []
    for cfg in grid:
        cpu_memory = cpu_peak_memory(cfg, args.prompts, args.methods, args.dtype) if device.type == "cpu" else None
        x = make_inputs(
            cfg["n"],
            cfg["tokens"],
            cfg["vocab"],
            cfg["hidden"],
            args.prompts,
            cfg["head"] == "trainable",
            device,
            dtype=args.dtype,
        )
        for method in args.methods:
            row = dict(cfg, method=method, prompts=args.prompts, num_tokens=args.prompts * cfg["n"] * cfg["tokens"])
            try:
                timings(method, x, device, 0 if args.memory_only else args.warmup)
                if cpu_memory is None:
                    row["peak_mem_mb"] = peak_memory(method, x, device) / 2**20
                else:
                    row["peak_mem_mb"] = cpu_memory.get(method)
                if args.memory_only:  # the LLaMA-7B point on a busy CPU: memory is the goal, a step takes minutes
                    row.update(status="ok", time_ms=None, median_ms=None, times_ms=[])
                else:
                    times = timings(method, x, device, args.repeats)
                    row.update(status="ok", time_ms=min(times), median_ms=statistics.median(times), times_ms=times)
            except torch.OutOfMemoryError:
                row.update(status="OOM", time_ms=None, peak_mem_mb=None)
                x["hidden"].grad = x["weight"].grad = None
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            shown = (
                "OOM"
                if row["status"] != "ok"
                else f"{_fmt(row['time_ms'], '.1f')} ms, {_fmt(row['peak_mem_mb'], '.1f')} MiB"
            )
            print(f"{cfg} {method}: {shown}", flush=True)
        del x
        gc.collect()
    # Ratios against the baselines of the same configuration in this run
    for row in rows:
        same = {
            r["method"]: r for r in rows if all(r[k] == row[k] for k in ("n", "tokens", "vocab", "hidden", "head"))
        }
        for base in ("eager", "trl"):
            b = same.get(base)
            ok = row["status"] == "ok" and b is not None and b["status"] == "ok"
            timed = ok and row["time_ms"] is not None and b["time_ms"] is not None
            row[f"time_vs_{base}"] = row["time_ms"] / b["time_ms"] if timed else None
            mem_ok = ok and row["peak_mem_mb"] is not None and b["peak_mem_mb"]
            row[f"mem_vs_{base}"] = row["peak_mem_mb"] / b["peak_mem_mb"] if mem_ok else None
    return rows


def _fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def bf16_peak(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in BF16_PEAK_TFLOPS.items():
        if all(part in name for part in key.split()):
            return value
    return None


def markdown(meta, rows, device) -> str:
    lines = [
        f"# PRO loss core benchmark ({meta['device']})",
        "",
        f"- Hardware: {meta['hardware']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- Date: {meta['date']}",
        f"- Grid: {meta['grid']}",
        (
            "- Timing: none (--memory-only)"
            if meta.get("memory_only")
            else f"- Timing: best of {meta['repeats']} forward+backward steps after {meta['warmup']} warm-up (median in the "
            f"JSON)"
        )
        + f"; load average at start / end: {meta['load_start']} / {meta.get('load_end')}",
        f"- Peak memory: {meta['memory']}",
        f"- (c) runs the `{meta['fused_implementation']}` implementation here. Ratios are against (a) / (b) of this "
        "run, same configuration.",
        "",
        "| n | tok/cand | vocab | hidden | LM head | method | time (ms) | peak mem (MiB) | time / (a) | time / (b) "
        "| mem / (a) | mem / (b) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['tokens']} | {r['vocab']} | {r['hidden']} | {r['head']} | {LABELS[r['method']]} "
            f"| {_fmt(r['time_ms'], '.1f') if r['status'] == 'ok' else r['status']} | {_fmt(r['peak_mem_mb'], '.1f')} "
            f"| {_fmt(r['time_vs_eager'], '.2f')} | {_fmt(r['time_vs_trl'], '.2f')} "
            f"| {_fmt(r['mem_vs_eager'], '.3f')} | {_fmt(r['mem_vs_trl'], '.3f')} |"
        )
    if meta.get("point") == "llama7b":
        lines += ["", "## Memory goal at LLaMA-7B's shape (measured here: memory is a property of the algorithm)", ""]
        for r in rows:
            if r["method"] == "fused" and r["status"] == "ok":
                ratio = r["mem_vs_eager"]
                verdict = "n/a" if ratio is None else ("met" if ratio <= 1 / 8 else "NOT met")
                lines.append(
                    f"- {r['head']} head: (c) peak memory = {_fmt(ratio, '.3f')} x (a), goal <= 0.125: "
                    f"**{verdict}**; {_fmt(r['mem_vs_trl'], '.3f')} x (b)"
                )
                eager = next((e for e in rows if e["method"] == "eager" and e["head"] == r["head"]), None)
                if r["head"] == "trainable" and eager and eager["peak_mem_mb"] and r["peak_mem_mb"]:
                    # Every method must hand back d(LM head): a [V, H] buffer the size of the head itself, which no
                    # algorithm avoids. Separating it shows what the loss core itself adds
                    floor = r["vocab"] * r["hidden"] * DTYPES[meta.get("dtype", "bf16")].itemsize / 2**20
                    lines.append(
                        f"  - of which the LM head's gradient ([V, H] = [{r['vocab']}, {r['hidden']}] in "
                        f"{meta.get('dtype', 'bf16')}, needed by every method) is {floor:.1f} MiB = "
                        f"{floor / eager['peak_mem_mb']:.3f} x (a): the 1/8 goal cannot be met with a trainable head "
                        f"at this shape. Beyond that buffer, (c) uses {r['peak_mem_mb'] - floor:.1f} MiB and (a) "
                        f"{eager['peak_mem_mb'] - floor:.1f} MiB: "
                        f"{(r['peak_mem_mb'] - floor) / (eager['peak_mem_mb'] - floor):.3f} x."
                    )
        peers = [r for r in rows if r["method"] == "liger"]
        for r in peers:
            if r["status"] == "ok":
                lines.append(f"- {r['head']} head: (d) Liger peak memory = {_fmt(r['mem_vs_eager'], '.3f')} x (a)")
        lines.append(
            "- (d) is Liger-Kernel's chunked fused-linear preference path (`LigerFusedLinearSimPOLoss`, "
            "`compiled=False`: pure torch, so it runs on CPU; its Triton fused-linear cross-entropy kernel needs a "
            "GPU). Liger has no ranking loss: it sees the 4 candidates as 2 (chosen, rejected) pairs, the same "
            "LM-head work. It always computes the LM head's gradient (a [V, H] fp32 buffer), even for a frozen head."
        )
    lines += [
        "",
        "## GPU goals",
        "",
        f"At n={GPU_GOAL['n']}, {GPU_GOAL['tokens']} tokens per candidate, vocab {GPU_GOAL['vocab']}, hidden "
        f"{GPU_GOAL['hidden']}, bf16, on a GPU:",
        "",
    ]
    goal_rows = [r for r in rows if r["method"] == "fused" and all(r[k] == v for k, v in GPU_GOAL.items())]
    goals = [
        ("peak memory <= 1/8 of (a)", "mem_vs_eager", lambda v: v <= 1 / 8, ".3f"),
        ("time <= 0.5x (a)", "time_vs_eager", lambda v: v <= 0.5, ".2f"),
        ("time <= 1.0x (b)", "time_vs_trl", lambda v: v <= 1.0, ".2f"),
    ]
    if device.type != "cuda" or not goal_rows:
        why = "not measured on GPU" if device.type != "cuda" else "configuration not in this run's grid"
        for name, *_ in goals:
            lines.append(f"- {name}: {why}")
        lines.append(f"- matmul throughput of (c) as a fraction of the bf16 peak: {why}")
    else:
        peak = bf16_peak(meta["hardware"], meta.get("peak_tflops"))
        for r in goal_rows:
            for name, key, check, spec in goals:
                value = r[key]
                verdict = "n/a" if value is None else ("met" if check(value) else "NOT met")
                lines.append(f"- {r['head']} head, {name}: {_fmt(value, spec)} ({verdict})")
            tflops = gemm_flops(r) / (r["time_ms"] * 1e-3) / 1e12 if r["time_ms"] else None
            throughput = f"- {r['head']} head, matmul throughput: {_fmt(tflops, '.0f')} TFLOP/s"
            if peak is None:
                lines.append(throughput + " (bf16 peak of this GPU unknown: pass --peak-tflops)")
            else:
                fraction = _fmt(tflops / peak if tflops else None, ".2f")
                lines.append(
                    f"{throughput} = {fraction} of the {peak} TFLOP/s bf16 peak (executed GEMMs: logits, recompute, "
                    "d hidden, d weight if trainable)"
                )
    if device.type != "cuda":
        lines += ["", "No GPU was available for this run; CPU numbers say nothing about the GPU goals."]
    return "\n".join(lines) + "\n"


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = ("n", "tokens", "vocab", "hidden", "head")
    names = {"n": "n={}", "tokens": "{} tok", "vocab": "V={}", "hidden": "H={}", "head": "{}"}
    configs = list(dict.fromkeys(tuple(r[f] for f in fields) for r in rows))
    varying = [i for i, f in enumerate(fields) if len({c[i] for c in configs}) > 1]
    fixed = ", ".join(names[f].format(configs[0][i]) for i, f in enumerate(fields) if i not in varying)
    methods = [m for m in METHODS + PEERS if any(r["method"] == m for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 0.9 * len(configs) + 5), 4.8))
    width = 0.8 / len(methods)
    for ax, key, unit in ((axes[0], "time_ms", "time (ms)"), (axes[1], "peak_mem_mb", "peak memory (MiB)")):
        for j, m in enumerate(methods):
            values = []
            for cfg in configs:
                match = [r for r in rows if r["method"] == m and tuple(r[f] for f in fields) == cfg]
                values.append(match[0][key] if match and match[0][key] is not None else 0.0)
            ax.bar([i + j * width for i in range(len(configs))], values, width, label=LABELS[m])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(configs))])
        ax.set_xticklabels(["\n".join(names[fields[i]].format(c[i]) for i in varying) for c in configs], fontsize=8)
        ax.set_ylabel(unit)
        ax.set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(methods), fontsize=8)
    fig.suptitle(f"{title}\n{fixed}", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--n", type=int, nargs="+")
    parser.add_argument("--tokens", type=int, nargs="+", help="tokens per candidate")
    parser.add_argument("--vocab", type=int, nargs="+")
    parser.add_argument("--hidden", type=int, nargs="+")
    parser.add_argument("--prompts", type=int, default=2, help="prompts (rankings) per step")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + PEERS)
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--heads", nargs="+", default=["trainable", "frozen"], choices=["trainable", "frozen"])
    parser.add_argument("--memory-only", action="store_true", help="peak memory only, no timed steps")
    parser.add_argument(
        "--point",
        choices=["llama7b"],
        help="llama7b: the real shape (H 4096, V 32000, 4 x 512 tokens, fp32, one ranking), with the "
        "Liger peer; written to loss_core_<device>_llama7b.*",
    )
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak of the GPU, if not in the built-in table")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        return memory_worker(args.memory_worker)

    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )
    full = device.type == "cuda"
    stem_suffix = ""
    if args.point == "llama7b":
        for key, value in LLAMA7B_POINT.items():
            setattr(args, key, value)
        args.methods = list(METHODS + PEERS)
        args.warmup = 0 if args.warmup is None else args.warmup
        args.repeats = args.repeats or 1
        full, stem_suffix = True, "_llama7b"  # the real shape, on whatever device this is
    args.n = args.n or ([2, 4, 8] if full else [2, 4])
    args.tokens = args.tokens or ([512, 2048] if full else [128])
    args.vocab = args.vocab or ([32000, 128256] if full else [32000])
    args.hidden = args.hidden or ([4096] if full else [512])
    args.warmup = args.warmup if args.warmup is not None else (2 if full else 1)
    args.repeats = args.repeats or (5 if full else 3)

    grid = (
        f"n {args.n}, tokens/candidate {args.tokens}, vocab {args.vocab}, hidden {args.hidden}, {args.dtype}, "
        f"{args.prompts} prompts per step, LM head {' and '.join(args.heads)}"
    )
    if args.point == "llama7b":
        grid = "LLaMA-7B point: " + grid
    elif not full:
        grid = (
            "REDUCED CPU grid (the full grid is n [2, 4, 8], tokens [512, 2048], vocab [32000, 128256], hidden 4096): "
            + grid
        )
    fused_impl = "triton" if device.type == "cuda" else "torch"
    meta = dict(
        device=device.type,
        hardware=hardware(device),
        versions=versions(),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        grid=grid,
        dtype=args.dtype,
        warmup=args.warmup,
        repeats=args.repeats,
        fused_implementation=fused_impl,
        load_start=load_average(),
        point=args.point,
        memory_only=args.memory_only,
        peak_tflops=args.peak_tflops,
        memory="CUDA allocator peak above the memory allocated before the step"
        if device.type == "cuda"
        else "peak RSS above the RSS before the step (VmHWM reset via /proc/self/clear_refs), measured in a child "
        "process with MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave the RSS; timing in the parent",
    )
    print(json.dumps(meta, indent=1), flush=True)
    rows = run_grid(args, device)
    meta["load_end"] = load_average()

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"loss_core_{device.type}{stem_suffix}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=1)
    md = markdown(meta, rows, device)
    with open(stem + ".md", "w") as f:
        f.write(md)
    plot(rows, stem + ".png", f"PRO loss core, fwd+bwd, {args.dtype} - {meta['hardware']} - {meta['date']}")
    print(md)


if __name__ == "__main__":
    main()
