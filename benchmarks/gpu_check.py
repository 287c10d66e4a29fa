"""GPU check: one command that spends a short GPU window (an H100 or H200, at most 8 minutes) on every GPU figure this
project reports, each part in its own time-limited subprocess, and writes one report (not a test).

The GPU machine has no network and lacks trl, datasets, bitsandbytes and liger-kernel: `benchmarks/gpu_wheels.py`
downloads their wheels beforehand into `benchmarks/gpu_wheels/`, and this script installs only those
(`pip install --no-index --no-deps --target <site>`), choosing per package the newest wheel whose requirements the
machine meets and a dependency wheel only where the machine lacks a fitting version; <site> goes first on the
PYTHONPATH of every part. Then, in order, each part with its time budget (a part still running at its budget is
killed with all its processes, recorded as "timed out after N s", and the check goes on; time a part leaves unused
passes to the next; the budgets sum to 8 minutes):

    install        the wheels above
    environment    device name, driver, CUDA, versions, what imports; a measured bf16 GEMM rate (8192^3, cuBLAS)
    gpu_tests      the GPU test tier: python -m pytest -q -m gpu tests/gpu
    loss_core      LLaMA-7B's shape (n = 4, 512 tokens per candidate, vocab 32000, hidden 4096, bf16, one ranking,
                   trainable and frozen head): the fused core against the eager authors'-style loss, TRL's chunked
                   log-probs and Liger's fused-linear SimPO (benchmarks/loss_core.py), time and peak CUDA memory, and
                   the core's matmul throughput (LM-head GEMMs forward + backward / time) as a fraction of the card's
                   dense bf16 peak (NVIDIA's datasheet numbers) and of the measured GEMM rate
    shared_prompt  the shared-prompt step against the plain step at n = 2, 4, 8 (benchmarks/shared_prompt.py's
                   rankings, batches and step, on CUDA): the 50M Llama of that script and a LLaMA-shaped 1B
    train_step     PRO on rankings of 4 (plain and shared layouts) against TRL's DPOTrainer over the 3 adjacent
                   pairs, time per ranking (benchmarks/train_step.py's rankings and pairs, on CUDA, the 1B model)
    qlora_memory   QLoRA peak memory of a LLaMA-7B-shaped model built from its config with random weights (nothing
                   downloaded) at n = 2 and 4, with benchmarks/qlora_memory.py's worker (the recipe's settings)

Writes benchmarks/results/gpu_check_<device>.md and .json (device, driver, CUDA, versions, each part's status,
figures and wall time), atomically, after every part, so a failed or killed part leaves the others' figures.

    python benchmarks/gpu_check.py                       # on the GPU machine
    python benchmarks/gpu_check.py --copy-to "$OUT"      # also copy the two report files there after each part
    python benchmarks/gpu_check.py --parts loss_core     # re-run chosen parts (the report names only those)
    python benchmarks/gpu_check.py --dry-run             # on a CPU machine: plan and validate everything, < 60 s
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path


HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
THIS = Path(__file__).resolve()
sys.path.insert(0, str(HERE))  # gpu_wheels here; the benchmark scripts in the workers

import gpu_wheels  # noqa: E402  (standard library only)


TOTAL_BUDGET_S = 480
KILL_GRACE_S = 3  # SIGTERM, then SIGKILL this long after
DEFAULT_SITE = Path(tempfile.gettempdir()) / "trl_pro_gpu_site"
# The loss core's point: LLaMA-7B's LM head, one ranking of 4 candidates x 512 tokens, bf16
LLAMA7B_POINT = dict(n=4, tokens=512, vocab=32000, hidden=4096, prompts=1, dtype="bf16")
# A LLaMA-shaped 1B (the shared-prompt and train-step parts): wide enough that the GPU, not Python, sets the step time
LLAMA_1B = dict(
    hidden_size=2048,
    intermediate_size=5504,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=32000,
)
# Dense bf16 Tensor Core peaks (TFLOP/s, without sparsity), most specific name first
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
)
PEAK_SOURCE = (
    "NVIDIA's datasheets (dense bf16 Tensor Core, half the 'with sparsity' figure): H100 SXM and H200 SXM 989 "
    "TFLOP/s, H100 NVL and H200 NVL 835, H100 PCIe 756, A100 312"
)
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_DISABLED": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}
# The distributions whose versions the report names (and that the environment part looks up)
VERSIONS = (
    "torch",
    "triton",
    "transformers",
    "trl",
    "datasets",
    "peft",
    "accelerate",
    "bitsandbytes",
    "liger-kernel",
    "huggingface-hub",
    "pyarrow",
    "fsspec",
    "dill",
    "multiprocess",
    "xxhash",
    "numpy",
    "pandas",
    "pytest",
)
IMPORTS = ("trl", "datasets", "peft", "bitsandbytes", "liger_kernel.chunked_loss", "trl_pro")


@dataclass(frozen=True)
class Part:
    name: str
    budget_s: int
    title: str


PARTS = (
    Part("install", 30, "install the carried wheels"),
    Part("environment", 20, "device, driver, CUDA, versions, imports, measured bf16 GEMM rate"),
    Part("gpu_tests", 100, "GPU test tier: pytest -q -m gpu tests/gpu"),
    Part("loss_core", 60, "loss core at LLaMA-7B's shape vs eager, TRL chunked, Liger SimPO"),
    Part("shared_prompt", 50, "shared-prompt vs plain step, n = 2/4/8"),
    Part("train_step", 85, "PRO (n = 4) vs DPO over the 3 adjacent pairs, per ranking"),
    Part("qlora_memory", 135, "QLoRA peak memory, LLaMA-7B shape, n = 2 and 4"),
)
PART_NAMES = tuple(p.name for p in PARTS)
assert sum(p.budget_s for p in PARTS) <= TOTAL_BUDGET_S


# === Running a part: its own process group, killed at its budget =====================================================


def _own_group() -> dict:
    """Popen arguments that put the child in a process group of its own (not a session of its own: a machine that
    ends a command's processes when it returns also ends these)."""
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_budgeted(argv, budget_s: float, *, env=None, cwd=REPO, log_path=None, tail_chars: int = 4000) -> dict:
    """Run `argv` in a process group of its own; at `budget_s` SIGTERM the whole group, SIGKILL it KILL_GRACE_S
    later. Whatever it left running is killed when it returns (or when this process is interrupted). The status is
    "ok", "failed (exit N)" or "timed out after N s"."""
    budget_s = max(float(budget_s), 0.1)
    log = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()
    start = time.monotonic()
    timed_out = False
    try:
        try:
            proc = subprocess.Popen(
                [str(a) for a in argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **_own_group(),
            )
        except OSError as error:
            return dict(
                status=f"failed ({error.__class__.__name__}: {error})",
                returncode=None,
                timed_out=False,
                wall_s=0.0,
                budget_s=round(budget_s, 1),
                output_tail="",
            )
        try:
            returncode = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                returncode = proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                returncode = proc.wait()
        finally:
            _kill_group(proc.pid, signal.SIGKILL)  # what the part left behind (data loaders, workers)
        wall = time.monotonic() - start
        log.flush()
        log.seek(0, os.SEEK_END)
        size = log.tell()
        log.seek(max(0, size - tail_chars * 4))
        tail = log.read().decode("utf-8", "replace")[-tail_chars:]
    finally:
        log.close()
    if timed_out:
        status = f"timed out after {budget_s:.0f} s"
    else:
        status = "ok" if returncode == 0 else f"failed (exit {returncode})"
    return dict(
        status=status,
        returncode=returncode,
        timed_out=timed_out,
        wall_s=round(wall, 1),
        budget_s=round(budget_s, 1),
        output_tail=tail,
    )


def child_env(site: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real kernels on the GPU
    paths = ([str(site)] if site else []) + [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(OFFLINE_ENV)
    return env


# === Results: JSON and Markdown, written atomically ==================================================================


def _fmt(value, spec: str = ".2f", none: str = "n/a") -> str:
    if value is None:
        return none
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def device_slug(name: str | None) -> str:
    if not name:
        return "unknown_gpu"
    name = re.sub(r"^NVIDIA\s+", "", name.strip(), flags=re.I)
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "unknown_gpu"


def write_report(report: dict, out_dir: Path, copy_to: Path | None = None) -> tuple[Path, Path]:
    """Write gpu_check_<device>.json and .md into `out_dir` (and copies into `copy_to`), each atomically."""
    stem = report.get("meta", {}).get("stem") or f"gpu_check_{device_slug(report.get('device', {}).get('name'))}"
    paths = (Path(out_dir) / f"{stem}.json", Path(out_dir) / f"{stem}.md")
    texts = (json.dumps(report, indent=1, default=str) + "\n", markdown(report))
    for path, text in zip(paths, texts):
        _atomic_write(path, text)
        if copy_to:
            _atomic_write(Path(copy_to) / path.name, text)
    return paths


def markdown(report: dict) -> str:
    device, meta = report.get("device", {}), report.get("meta", {})
    versions = report.get("versions", {})
    lines = [
        f"# GPU check: {device.get('name') or 'unknown device'}",
        "",
        f"- Date: {meta.get('date')}; host {meta.get('host')}; command `{meta.get('command')}`",
        f"- Device: {device.get('name')}, compute capability {device.get('capability')}, "
        f"{_fmt(device.get('memory_gib'), '.1f')} GiB, {device.get('multiprocessors')} SMs; driver "
        f"{device.get('driver')}; CUDA (torch) {device.get('cuda')}; cuDNN {device.get('cudnn')}",
        "- Versions: " + (", ".join(f"{k} {v}" for k, v in versions.items()) or "not read (environment part)"),
        f"- Wheels installed: {', '.join(report.get('wheels', {}).get('install', [])) or 'none'}",
        f"- Budget: {meta.get('total_budget_s')} s for the parts below; wall time used "
        f"{_fmt(report.get('total_wall_s'), '.0f')} s. A part past its budget is killed and reported as timed out.",
        "",
        "| part | status | wall (s) | budget (s) | result |",
        "|---|---|---|---|---|",
    ]
    for name, part in report.get("parts", {}).items():
        lines.append(
            f"| {name} | {part.get('status')} | {_fmt(part.get('wall_s'), '.1f', '-')} | "
            f"{_fmt(part.get('budget_s'), '.0f', '-')} | {part.get('summary', '')} |"
        )
    unmet = report.get("wheels", {}).get("unmet", [])
    if unmet:
        lines += ["", "Requirements of the installed wheels that the machine does not meet: " + "; ".join(unmet)]
    for name, part in report.get("parts", {}).items():
        section = RENDERERS.get(name)
        body = section(part.get("figures") or {}) if section and part.get("figures") else []
        failed = not str(part.get("status", "")).startswith(("ok", "skipped"))
        if not body and not failed:
            continue
        lines += ["", f"## {name}: {part.get('title', '')}", ""] + body
        if failed and part.get("output_tail"):
            tail = "\n".join(part["output_tail"].splitlines()[-25:])
            lines += ["", f"Last lines of its output ({part['status']}):", "", "```", tail, "```"]
    return "\n".join(lines) + "\n"


def _render_environment(f: dict) -> list[str]:
    lines = ["- Imports: " + ", ".join(f"{k} {v}" for k, v in f.get("imports", {}).items())]
    if f.get("matmul_tflops"):
        lines.append(
            f"- Measured bf16 GEMM (8192^3, cuBLAS, mean of 10 after 3 warm-ups): {f['matmul_tflops']:.0f} TFLOP/s "
            f"= {_fmt(f.get('matmul_fraction_of_peak'))} of the {_fmt(f.get('peak_bf16_tflops'), '.0f')} TFLOP/s "
            f"datasheet peak"
        )
    lines.append(f"- Peak source: {f.get('peak_source', PEAK_SOURCE)}")
    return lines


def _render_tests(f: dict) -> list[str]:
    counts = ", ".join(f"{f[k]} {k}" for k in ("passed", "failed", "errors", "skipped") if f.get(k) is not None)
    lines = [f"- {counts or 'no counts'}; pytest: `{f.get('summary_line', '')}`"]
    lines += [f"- FAILED {name}" for name in f.get("failures", [])[:30]]
    return lines


def _render_loss_core(f: dict) -> list[str]:
    lines = [
        f"Shape: {f.get('shape')}. Best of the timed steps; peak = CUDA allocator peak above the memory allocated "
        "before the step.",
        "",
        "| LM head | method | time (ms) | peak memory (MiB) | time / fused | memory / fused |",
        "|---|---|---|---|---|---|",
    ]
    for head, methods in f.get("heads", {}).items():
        fused = methods.get("fused", {})
        for method, row in methods.items():
            t, m = row.get("time_ms"), row.get("peak_mem_mb")
            ft, fm = fused.get("time_ms"), fused.get("peak_mem_mb")
            lines.append(
                f"| {head} | {row.get('label', method)} | {_fmt(t, '.2f', row.get('status', 'n/a'))} | {_fmt(m, '.1f')} "
                f"| {_fmt(t / ft if t and ft else None)} | {_fmt(m / fm if m and fm else None)} |"
            )
    lines.append("")
    for head, g in f.get("goals", {}).items():
        lines.append(
            f"- {head} head: fused memory {_fmt(g.get('mem_vs_eager'), '.3f')} x eager (goal <= 0.125), time "
            f"{_fmt(g.get('time_vs_eager'))} x eager (goal <= 0.5), {_fmt(g.get('time_vs_trl'))} x TRL (goal <= 1.0), "
            f"{_fmt(g.get('time_vs_liger'))} x Liger; LM-head GEMMs {_fmt(g.get('tflops'), '.0f')} TFLOP/s = "
            f"**{_fmt(g.get('fraction_of_peak'))}** of the {_fmt(g.get('peak_tflops'), '.0f')} TFLOP/s bf16 peak, "
            f"{_fmt(g.get('fraction_of_measured'))} of the measured GEMM rate"
        )
    lines.append(f"- FLOPs counted: {f.get('flops_note')}. Peak source: {f.get('peak_source')}")
    if f.get("note"):
        lines.append(f"- {f['note']}")
    return lines


def _render_shared_prompt(f: dict) -> list[str]:
    lines = [
        f"Setup: {f.get('setup')}",
        "",
        "| model | n | plain step (ms) | shared step (ms) | speedup | plain peak (MiB) | shared peak (MiB) "
        "| memory shared / plain | tokens shared / plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in f.get("pairs", []):
        lines.append(
            f"| {r['model']} | {r['n']} | {_fmt(r.get('plain_ms'), '.1f')} | {_fmt(r.get('shared_ms'), '.1f')} | "
            f"{_fmt(r.get('speedup'))} | {_fmt(r.get('plain_peak_mb'), '.0f')} | {_fmt(r.get('shared_peak_mb'), '.0f')}"
            f" | {_fmt(r.get('mem_ratio'))} | {_fmt(r.get('tokens_ratio'))} |"
        )
    lines += [""] + [f"- {v}" for v in f.get("verdicts", [])]
    return lines


def _render_train_step(f: dict) -> list[str]:
    lines = [
        f"Setup: {f.get('setup')}",
        "",
        "| trainer | status | median step (s) | s / ranking | time / PRO plain | peak memory (GiB) | policy tokens / ranking |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in f.get("rows", {}).items():
        lines.append(
            f"| {r.get('label', name)} | {r.get('status')} | {_fmt(r.get('median_step_s'), '.4f')} | "
            f"{_fmt(r.get('seconds_per_ranking'), '.4f')} | {_fmt(r.get('time_vs_pro_plain'))} | "
            f"{_fmt(r.get('peak_memory_gib'))} | {_fmt(r.get('policy_tokens_per_ranking'), '.0f')} |"
        )
    if f.get("pro_over_dpo") is not None:
        lines += ["", f"- PRO (plain) / DPO (3 adjacent pairs) time per ranking: **{f['pro_over_dpo']:.3f}**"]
    return lines


def _render_qlora(f: dict) -> list[str]:
    lines = [
        f"Setup: {f.get('setup')}",
        "",
        "| n | status | peak GPU memory (GiB) | median step (s) | tokens / s | 4-bit |",
        "|---|---|---|---|---|---|",
    ]
    for r in f.get("rows", []):
        lines.append(
            f"| {r.get('n')} | {r.get('status')} | {_fmt(r.get('peak_memory_gib'))} | "
            f"{_fmt(r.get('median_step_s'), '.3f')} | {_fmt(r.get('tokens_per_s'), '.0f')} | {r.get('loaded_in_4bit')} |"
        )
    if f.get("verdict"):
        lines += ["", f"- {f['verdict']}"]
    return lines


RENDERERS = {
    "environment": _render_environment,
    "gpu_tests": _render_tests,
    "loss_core": _render_loss_core,
    "shared_prompt": _render_shared_prompt,
    "train_step": _render_train_step,
    "qlora_memory": _render_qlora,
}


# === Wheels: which to install on this machine ========================================================================


def installed_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            out.setdefault(gpu_wheels.normalize(name), dist.version)
    return out


def plan_install(folder: Path, installed: dict[str, str]) -> dict:
    """Which wheels of `folder` to install here: per package the newest wheel whose requirements the machine (plus
    the carried wheels) meets; a dependency wheel only where a chosen wheel needs it and the machine lacks a fitting
    version. Returns {install (file names), decisions, unmet, listing}."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    listing = gpu_wheels.listing(folder)
    wheels = {}
    for entry in listing["present"]:
        wheels.setdefault(gpu_wheels.normalize(entry["name"]), []).append(entry)
    for entries in wheels.values():
        entries.sort(key=lambda e: Version(e["version"]), reverse=True)

    def requirements(entry) -> list:
        out = []
        for line in gpu_wheels.wheel_requirements(folder / entry["file"]):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                out.append(req)
        return out

    def fits(version: str | None, req) -> bool:
        if version is None:
            return False
        try:
            return req.specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            return False

    def satisfiable(req) -> bool:
        name = gpu_wheels.normalize(req.name)
        return fits(installed.get(name), req) or any(fits(w["version"], req) for w in wheels.get(name, []))

    chosen, decisions = {}, []
    for name in dict.fromkeys(gpu_wheels.normalize(p.name) for p in gpu_wheels.PINS if p.role == "package"):
        candidates = wheels.get(name, [])
        if not candidates:
            decisions.append(f"{name}: no wheel here")
            continue
        lacking = {e["file"]: [str(r) for r in requirements(e) if not satisfiable(r)] for e in candidates}
        entry = next((e for e in candidates if not lacking[e["file"]]), None)
        for other in candidates[: candidates.index(entry) if entry else 0]:
            decisions.append(
                f"{name} {other['version']}: not chosen, the machine lacks {'; '.join(lacking[other['file']])}"
            )
        if entry:
            decisions.append(f"{name} {entry['version']}: install")
        else:  # none fits: the newest, and the unmet requirements are reported
            entry = candidates[0]
            decisions.append(
                f"{name} {entry['version']}: install, though the machine lacks {'; '.join(lacking[entry['file']])}"
            )
        chosen[name] = entry
    dependencies = list(dict.fromkeys(gpu_wheels.normalize(p.name) for p in gpu_wheels.PINS if p.role == "dependency"))
    for _ in range(len(dependencies) + 1):  # a dependency may need another (multiprocess -> dill)
        changed = False
        for name in dependencies:
            if name in chosen:
                continue
            reqs = [r for e in chosen.values() for r in requirements(e) if gpu_wheels.normalize(r.name) == name]
            if not reqs or all(fits(installed.get(name), r) for r in reqs):
                continue
            fitting = [w for w in wheels.get(name, []) if all(fits(w["version"], r) for r in reqs)]
            if fitting:
                chosen[name] = fitting[0]
                have = installed.get(name)
                decisions.append(
                    f"{name} {fitting[0]['version']}: install (the machine has {have or 'none'}; needed: "
                    f"{', '.join(str(r) for r in reqs)})"
                )
                changed = True
        if not changed:
            break
    for name in dependencies:
        if name not in chosen and name in wheels:
            decisions.append(f"{name}: not installed (the machine has {installed.get(name) or 'none'}, which fits)")
    unmet = []
    for name, entry in chosen.items():
        for req in requirements(entry):
            dep = gpu_wheels.normalize(req.name)
            version = chosen[dep]["version"] if dep in chosen else installed.get(dep)
            if not fits(version, req):
                unmet.append(f"{name} {entry['version']} needs {req}, the machine has {version or 'none'}")
    return {
        "install": [chosen[n]["file"] for n in chosen],
        "decisions": decisions,
        "unmet": unmet,
        "present": [f"{e['file']} ({e['size'] / 2**20:.2f} MiB)" for e in listing["present"]],
        "missing": [f"{m['name']}=={m['version']}" for m in listing["missing"]],
        "total_mib": round(listing["total_bytes"] / 2**20, 2),
        "bitsandbytes": "bitsandbytes" in chosen,
        "liger": "liger-kernel" in chosen,
    }


def install_wheels(plan: dict, folder: Path, site: Path, budget_s: float) -> dict:
    """pip install --no-index --no-deps --target `site` the planned wheels; unpacks them if pip is not there."""
    files = sorted(plan["install"])
    stamp = site / ".gpu_check_wheels"
    if not files:
        return dict(status="skipped: no wheel to install", wall_s=0.0, budget_s=budget_s, summary="nothing to install")
    if stamp.is_file() and stamp.read_text().split() == files:
        return dict(status="ok", wall_s=0.0, budget_s=budget_s, summary=f"already installed in {site}")
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--upgrade",
        "--target",
        str(site),
        *[str(folder / f) for f in files],
    ]
    result = run_budgeted(command, budget_s)
    if result["status"] != "ok" and not result["timed_out"]:  # no pip: a wheel is a zip archive
        import zipfile

        try:
            for f in files:
                with zipfile.ZipFile(folder / f) as archive:
                    archive.extractall(site)
            result["status"] = "ok"
            result["summary"] = f"pip failed; {len(files)} wheels unpacked into {site}"
        except (OSError, zipfile.BadZipFile) as error:
            result["summary"] = f"pip failed, and unpacking too: {error}"
    if result["status"] == "ok":
        stamp.write_text("\n".join(files) + "\n")
        result.setdefault("summary", f"{len(files)} wheels into {site}")
    result["command"] = " ".join(command[:14]) + " <wheels>"
    return result


# === Parts: commands, and what each reports ==========================================================================


def pytest_command(junit: Path | None) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"]
    return command + ([f"--junitxml={junit}"] if junit else [])


def loss_core_command(out: Path, liger: bool) -> list[str]:
    p = LLAMA7B_POINT
    methods = ["eager", "trl", "fused"] + (["liger"] if liger else [])
    return [
        sys.executable,
        str(HERE / "loss_core.py"),
        "--device",
        "cuda",
        "--n",
        str(p["n"]),
        "--tokens",
        str(p["tokens"]),
        "--vocab",
        str(p["vocab"]),
        "--hidden",
        str(p["hidden"]),
        "--prompts",
        str(p["prompts"]),
        "--dtype",
        p["dtype"],
        "--methods",
        *methods,
        "--heads",
        "trainable",
        "frozen",
        "--warmup",
        "2",
        "--repeats",
        "5",
        "--out",
        str(out),
    ]


def worker_command(worker: str, result: Path, scratch: Path | None = None, *extra: str) -> list[str]:
    command = [sys.executable, str(THIS), "--worker", worker, "--result", str(result)]
    return command + (["--scratch", str(scratch)] if scratch else []) + list(extra)


def shared_prompt_command(result: Path) -> list[str]:
    return worker_command(
        "shared_prompt", result, None, "--models", "small-50M", "llama-1B", "--n", "2", "4", "8", "--repeats", "4"
    )


def train_step_command(result: Path, scratch: Path) -> list[str]:
    return worker_command(
        "train_step", result, scratch, "--trainers", "pro-plain", "dpo-adjacent", "pro-shared", "--steps", "6"
    )


def train_step_trainer_command(trainer: str, result: Path, scratch: Path, model: Path, rankings: Path, args) -> list:
    return worker_command(
        "train_step_trainer",
        result,
        scratch,
        "--trainer",
        trainer,
        "--model_path",
        str(model),
        "--rankings_path",
        str(rankings),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--rankings_per_step",
        str(args.rankings_per_step),
        "--max_length",
        str(args.max_length),
        "--device",
        args.device,
    )


def qlora_command(result: Path, scratch: Path) -> list[str]:
    return worker_command("qlora_memory", result, scratch, "--n", "2", "4", "--steps", "2", "--warmup", "1")


def qlora_worker_command(model: Path, n: int, steps: int, warmup: int) -> list[str]:
    # benchmarks/qlora_memory.py's own worker: 4-bit NF4 + double quantization, bf16 compute, LoRA r=64 all-linear,
    # gradient checkpointing, 1 prompt x n candidates x 512 tokens; peak = torch.cuda.max_memory_allocated
    return [
        sys.executable,
        str(HERE / "qlora_memory.py"),
        "--worker",
        "pro",
        "--n",
        str(n),
        "--model_path",
        str(model),
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
    ]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def peak_tflops(name: str | None, override: float | None = None) -> float | None:
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS:
        if name and all(word.lower() in name.lower() for word in key.split()):
            return value
    return None


def collect_environment(result: dict | None) -> tuple[dict, str]:
    if not result:
        return {}, "no result"
    figures = dict(result)
    imports = result.get("imports", {})
    broken = [k for k, v in imports.items() if v != "ok"]
    device = result.get("device", {})
    summary = (
        f"{device.get('name') or 'no CUDA device'}, driver {device.get('driver')}, CUDA {device.get('cuda')}; "
        f"GEMM {_fmt(result.get('matmul_tflops'), '.0f')} TFLOP/s"
        + (f"; not importable: {', '.join(broken)}" if broken else "")
    )
    return figures, summary


def collect_tests(junit: Path, tail: str) -> tuple[dict, str]:
    figures: dict = {}
    try:
        root = ElementTree.parse(junit).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        figures.update(
            passed=total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            failed=total["failures"],
            errors=total["errors"],
            skipped=total["skipped"],
        )
        figures["failures"] = [
            f"{case.get('classname')}::{case.get('name')}"
            for case in root.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        ]
    except (OSError, ElementTree.ParseError):
        # No report (killed): count the progress characters of `-q` (. passed, F failed, E error, s skipped)
        progress = "".join(
            re.sub(r"\s*\[\s*\d+%\]$", "", line)
            for line in tail.splitlines()
            if re.fullmatch(r"[.FEsxX]+(\s*\[\s*\d+%\])?", line.strip())
        )
        if progress:
            figures.update(
                passed=progress.count("."),
                failed=progress.count("F"),
                errors=progress.count("E"),
                skipped=progress.count("s"),
                partial=True,
            )
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    summary_line = next(
        (line for line in reversed(lines) if re.search(r"\d+ (passed|failed|error|skipped)", line)), ""
    )
    figures["summary_line"] = summary_line.strip("= ")
    counts = ", ".join(f"{figures[k]} {k}" for k in ("passed", "failed", "errors", "skipped") if figures.get(k))
    return figures, (counts or figures["summary_line"] or "no test result") + (
        " (partial)" if figures.get("partial") else ""
    )


# benchmarks/loss_core.py's labels and FLOP count (`LABELS`, `gemm_flops`), here because this process cannot import
# it (trl_pro needs trl, which only the parts' PYTHONPATH has); the dry run checks that the two agree
LOSS_CORE_LABELS = {
    "eager": "(a) eager, authors' style",
    "trl": "(b) TRL chunked + torch cascade",
    "fused": "(c) fused core",
    "liger": "(d) Liger fused-linear SimPO (pairs)",
}


def lm_head_gemm_flops(row: dict) -> float:
    """Executed LM-head GEMM work of the fused core: forward logits, backward recompute, d hidden, d weight (trainable)."""
    per_gemm = 2.0 * row["num_tokens"] * row["vocab"] * row["hidden"]
    return per_gemm * (4 if row["head"] == "trainable" else 3)


def collect_loss_core(folder: Path, environment: dict, override: float | None) -> tuple[dict, str]:
    data = _read_json(folder / "loss_core_cuda.json")
    if not data:
        return {}, "no result file"
    name = environment.get("device", {}).get("name") or data["meta"].get("hardware")
    peak = peak_tflops(name, override)
    measured = environment.get("matmul_tflops")
    heads: dict = {}
    for row in data["results"]:
        heads.setdefault(row["head"], {})[row["method"]] = {
            "label": LOSS_CORE_LABELS.get(row["method"], row["method"]),
            "status": row["status"],
            "time_ms": row.get("time_ms"),
            "median_ms": row.get("median_ms"),
            "peak_mem_mb": row.get("peak_mem_mb"),
        }
    goals = {}
    for row in data["results"]:
        if row["method"] != "fused" or row["status"] != "ok" or not row.get("time_ms"):
            continue
        methods = heads[row["head"]]
        tflops = lm_head_gemm_flops(row) / (row["time_ms"] * 1e-3) / 1e12
        liger = methods.get("liger", {}).get("time_ms")
        goals[row["head"]] = {
            "mem_vs_eager": row.get("mem_vs_eager"),
            "time_vs_eager": row.get("time_vs_eager"),
            "time_vs_trl": row.get("time_vs_trl"),
            "time_vs_liger": row["time_ms"] / liger if liger else None,
            "tflops": tflops,
            "peak_tflops": peak,
            "fraction_of_peak": tflops / peak if peak else None,
            "fraction_of_measured": tflops / measured if measured else None,
        }
    figures = {
        "shape": data["meta"].get("grid"),
        "heads": heads,
        "goals": goals,
        "peak_source": PEAK_SOURCE if peak and not override else ("--peak-tflops" if override else "unknown device"),
        "flops_note": "2 T V H per GEMM; forward logits, backward recompute, d hidden, and d weight for a trainable "
        f"head (4 GEMMs; 3 frozen); T = {LLAMA7B_POINT['n'] * LLAMA7B_POINT['tokens']}",
        "note": None
        if "liger" in {r["method"] for r in data["results"]}
        else "Liger: not run (liger_kernel does not import)",
        "raw": data,
    }
    g = goals.get("trainable") or next(iter(goals.values()), {})
    summary = (
        f"trainable head: fused {_fmt(g.get('time_vs_eager'))}x eager time, {_fmt(g.get('mem_vs_eager'), '.3f')}x "
        f"memory, {_fmt(g.get('time_vs_trl'))}x TRL, {_fmt(g.get('fraction_of_peak'))} of bf16 peak"
        if g
        else "fused core: no timing"
    )
    return figures, summary


def collect_shared_prompt(result: dict | None) -> tuple[dict, str]:
    if not result:
        return {}, "no result"
    pairs = []
    for model in dict.fromkeys(r["model"] for r in result.get("rows", [])):
        for n in dict.fromkeys(r["n"] for r in result["rows"] if r["model"] == model):
            rows = {r["layout"]: r for r in result["rows"] if r["model"] == model and r["n"] == n}
            plain, shared = rows.get("plain"), rows.get("shared")
            if not plain or not shared:
                continue
            pairs.append(
                {
                    "model": model,
                    "n": n,
                    "plain_ms": plain["median_step_s"] * 1e3,
                    "shared_ms": shared["median_step_s"] * 1e3,
                    "speedup": plain["median_step_s"] / shared["median_step_s"],
                    "plain_peak_mb": plain.get("peak_mem_mb"),
                    "shared_peak_mb": shared.get("peak_mem_mb"),
                    "mem_ratio": shared["peak_mem_mb"] / plain["peak_mem_mb"] if plain.get("peak_mem_mb") else None,
                    "tokens_ratio": shared["tokens_per_step"] / plain["tokens_per_step"],
                }
            )
    goals = result.get("goals", {})
    verdicts = []
    for p in pairs:
        goal = goals.get(str(p["n"]))
        if goal is not None:
            met = p["speedup"] >= goal and p["mem_ratio"] is not None and p["mem_ratio"] <= 1.0
            verdicts.append(
                f"{p['model']}, n = {p['n']}: shared {p['speedup']:.2f}x faster (goal >= {goal}x), memory "
                f"{_fmt(p['mem_ratio'])}x plain (goal <= 1): **{'met' if met else 'NOT met'}**"
            )
    figures = {"setup": result.get("setup"), "pairs": pairs, "verdicts": verdicts, "raw": result}
    big = [p for p in pairs if p["model"] == "llama-1B"] or pairs
    summary = ", ".join(f"n={p['n']} {p['speedup']:.2f}x" for p in big) or "no pair measured"
    return figures, (f"{big[0]['model']}: shared speedup " if big else "") + summary


def collect_train_step(result: dict | None) -> tuple[dict, str]:
    if not result:
        return {}, "no result"
    figures = dict(result)
    rows = result.get("rows", {})
    pro, dpo = rows.get("pro-plain", {}), rows.get("dpo-adjacent", {})
    if pro.get("seconds_per_ranking") and dpo.get("seconds_per_ranking"):
        figures["pro_over_dpo"] = pro["seconds_per_ranking"] / dpo["seconds_per_ranking"]
        summary = f"PRO / DPO (3 adjacent pairs) time per ranking {figures['pro_over_dpo']:.3f}"
        shared = rows.get("pro-shared", {}).get("seconds_per_ranking")
        if shared:
            summary += f"; PRO shared / DPO {shared / dpo['seconds_per_ranking']:.3f}"
        return figures, summary
    return figures, "; ".join(f"{k}: {v.get('status')}" for k, v in rows.items()) or "no trainer finished"


def collect_qlora(result: dict | None) -> tuple[dict, str]:
    if not result:
        return {}, "no result"
    figures = dict(result)
    rows = result.get("rows", [])
    goal_gib, goal_n = result.get("goal_gib"), result.get("goal_n")
    at_goal = next((r for r in rows if r.get("n") == goal_n and r.get("peak_memory_gib") is not None), None)
    if at_goal and goal_gib:
        met = "meets" if at_goal["peak_memory_gib"] <= goal_gib else "does NOT meet"
        figures["verdict"] = (
            f"PRO at n = {goal_n} peaks at {at_goal['peak_memory_gib']:.2f} GiB: {met} the <= {goal_gib:.0f} GiB goal"
        )
    summary = ", ".join(f"n={r['n']} {_fmt(r.get('peak_memory_gib'))} GiB" for r in rows if r.get("peak_memory_gib"))
    return figures, summary or "; ".join(
        f"n={r.get('n')}: {r.get('status')}" for r in rows
    ) or "no configuration finished"


# === Workers (each runs in a part's subprocess, on the GPU) ==========================================================


def _write_result(path: Path, data: dict) -> None:
    _atomic_write(Path(path), json.dumps(data, indent=1, default=str) + "\n")


def environment_worker(args) -> None:
    from importlib import metadata

    import torch

    result: dict = {"python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname()}
    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    result["versions"] = versions
    imports = {}
    for module in IMPORTS:
        try:
            __import__(module)
            imports[module] = "ok"
        except Exception as error:  # noqa: BLE001  (any import failure is a finding)
            imports[module] = f"{error.__class__.__name__}: {str(error)[:200]}"
    result["imports"] = imports
    device: dict = {"cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    try:
        smi = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=15,
        )
        fields = [f.strip() for f in smi.stdout.splitlines()[0].split(",")]
        device.update(
            smi_name=fields[0], driver=fields[1], smi_memory=fields[2], max_sm_clock=fields[3], power_limit=fields[4]
        )
    except (OSError, IndexError, subprocess.SubprocessError):
        device["driver"] = "nvidia-smi not available"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        device.update(
            name=torch.cuda.get_device_name(0),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            memory_gib=props.total_memory / 2**30,
            multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
            count=torch.cuda.device_count(),
        )
    result["device"] = device
    _write_result(args.result, result)  # what is known so far, in case the GEMM below hangs
    if torch.cuda.is_available():
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            a @ b
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1e3 / 10
        result["matmul_tflops"] = 2 * 8192**3 / seconds / 1e12
        peak = peak_tflops(device.get("name"), args.peak_tflops)
        result.update(
            peak_bf16_tflops=peak,
            peak_source=PEAK_SOURCE if not args.peak_tflops else "--peak-tflops",
            matmul_fraction_of_peak=result["matmul_tflops"] / peak if peak else None,
        )
    _write_result(args.result, result)


def _to_device(batch: dict, device) -> dict:
    import torch

    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class _Memory:
    """Synchronize and read the CUDA allocator's peak; on CPU (the smoke check of `--device cpu`) no-ops and zeros."""

    def __init__(self, device: str):
        import torch

        self.torch, self.cuda = torch, device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset(self) -> int:
        """Synchronize, reset the peak, and return the bytes allocated now."""
        if not self.cuda:
            return 0
        self.torch.cuda.synchronize()
        self.torch.cuda.reset_peak_memory_stats()
        return self.torch.cuda.memory_allocated()

    def peak(self) -> int:
        if not self.cuda:
            return 0
        self.torch.cuda.synchronize()
        return self.torch.cuda.max_memory_allocated()

    def release(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()


def _llama_1b_config(tiny: bool):
    """LLaMA-7B's config (train_step.py) narrowed to the 1B above; `tiny`: the tiny Llama's shape (CPU smoke)."""
    from train_step import llama7b_config

    from trl_pro.assets import load_tiny_tokenizer

    config = llama7b_config()
    shape = LLAMA_1B
    if tiny:  # the tiny Llama of trl_pro.assets: its shape and the tokenizer's vocabulary
        shape = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(load_tiny_tokenizer()),
        )
    for key, value in shape.items():
        setattr(config, key, value)
    return config


def _autocast_step(sp, model, optimizer, batch, device_type: str) -> None:
    import torch

    with torch.autocast(device_type, dtype=torch.bfloat16):
        sp.step(model, optimizer, batch)  # forward, backward, AdamW step (benchmarks/shared_prompt.py)


def shared_prompt_worker(args) -> None:
    """benchmarks/shared_prompt.py's comparison on CUDA: the same rankings, collated batches and step (forward,
    backward, AdamW) in both layouts, alternating step by step, bf16 autocast over fp32 weights, sdpa."""
    import gc

    import shared_prompt as sp
    import torch
    from transformers import LlamaForCausalLM

    from trl_pro.loss_core.head import add_ranking_loss_head

    device, memory = torch.device(args.device), _Memory(args.device)
    result = {
        "setup": f"{args.rankings_per_step} rankings per step from the vendored HH-RLHF slice (max_length 512, "
        f"max_prompt_length 384), {args.batches} distinct batches per n, {args.warmup} warm-up + {args.repeats} "
        "timed steps per (model, n, layout), layouts alternating; fp32 weights, bf16 autocast, sdpa attention, AdamW; "
        f"peak = CUDA allocator peak of one step above the memory before it; models: {', '.join(args.models)} "
        f"(llama-1B: {LLAMA_1B})",
        "device": args.device,
        "goals": {str(k): v for k, v in sp.GOALS.items()},
        "rows": [],
    }
    for name in args.models:
        torch.manual_seed(0)
        if name == "llama-1B":
            with device:
                model = LlamaForCausalLM(_llama_1b_config(tiny=False))
            model.config._attn_implementation = "sdpa"
            add_ranking_loss_head(model)
            model.train()
        else:
            model = sp.build_model(name).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        parameters = sum(p.numel() for p in model.parameters())
        for n in args.n:
            batches = sp.make_batches(n, args.batches, args.rankings_per_step)
            on_device = {layout: [_to_device(b, device) for b in batches[layout]] for layout in sp.LAYOUTS}
            times = {layout: [] for layout in sp.LAYOUTS}
            for repeat in range(args.warmup + args.repeats):
                order = sp.LAYOUTS if repeat % 2 == 0 else sp.LAYOUTS[::-1]
                for layout in order:
                    memory.sync()
                    start = time.perf_counter()
                    _autocast_step(sp, model, optimizer, on_device[layout][repeat % args.batches], device.type)
                    memory.sync()
                    if repeat >= args.warmup:
                        times[layout].append(time.perf_counter() - start)
            for layout in sp.LAYOUTS:
                gc.collect()
                before = memory.reset()
                _autocast_step(sp, model, optimizer, on_device[layout][0], device.type)
                counts = [sp.batch_tokens(b) for b in batches[layout]]
                result["rows"].append(
                    {
                        "model": name,
                        "parameters": parameters,
                        "n": n,
                        "layout": layout,
                        "rankings_per_step": args.rankings_per_step,
                        "tokens_per_step": statistics.mean(c["tokens"] for c in counts),
                        "padded_tokens_per_step": statistics.mean(c["padded_tokens"] for c in counts),
                        "scored_tokens_per_step": statistics.mean(c["scored_tokens"] for c in counts),
                        "step_times_s": times[layout],
                        "median_step_s": statistics.median(times[layout]),
                        "peak_mem_mb": (memory.peak() - before) / 2**20 if memory.cuda else None,
                    }
                )
            _write_result(args.result, result)
            print(f"{name} n={n} done", flush=True)
        del model, optimizer
        gc.collect()
        memory.release()


def train_step_worker(args) -> None:
    """PRO on rankings of 4 against DPO over their 3 adjacent pairs, one trainer per process (train_step.py's
    rankings and pairs), on CUDA with the LLaMA-shaped 1B."""
    import torch
    from train_step import RANKING_LABELS, hh_rankings
    from transformers import LlamaForCausalLM

    from trl_pro.assets import load_tiny_tokenizer

    scratch = Path(args.scratch)
    model_path, rankings_path = scratch / "model", scratch / "rankings.json"
    tiny = args.device == "cpu"
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(_llama_1b_config(tiny)).to(torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_path)
    load_tiny_tokenizer().save_pretrained(model_path)
    del model
    _Memory(args.device).release()
    rankings_path.write_text(json.dumps(hh_rankings(args.rankings_per_step * (args.warmup + args.steps) * 4)))
    result = {
        "setup": f"LLaMA-shaped 1B ({parameters / 1e9:.2f}B parameters, {LLAMA_1B}), random weights, full "
        f"fine-tuning, fp32 weights + bf16 autocast, AdamW, no gradient checkpointing; {args.rankings_per_step} "
        f"rankings of 4 per step (HH-RLHF lengths, max_length {args.max_length}); DPO: the {args.rankings_per_step * 3} "
        f"adjacent pairs of those rankings per step, beta 0.1, reference = a frozen copy; {args.warmup} warm-up + "
        f"{args.steps} timed steps, one process per trainer; peak = torch.cuda.max_memory_allocated during training",
        "device": args.device,
        "rows": {},
    }
    for trainer in args.trainers:
        out = scratch / f"{trainer}.json"
        command = train_step_trainer_command(trainer, out, scratch, model_path, rankings_path, args)
        proc = subprocess.run(command, capture_output=True, text=True)
        row = _read_json(out) if proc.returncode == 0 else None
        if row is None:
            row = {"status": f"failed (exit {proc.returncode})", "output_tail": proc.stderr[-3000:]}
        else:
            row["status"] = "ok"
        row["label"] = RANKING_LABELS.get(trainer, trainer)
        result["rows"][trainer] = row
        base = result["rows"].get("pro-plain", {}).get("seconds_per_ranking")
        for r in result["rows"].values():
            if base and r.get("seconds_per_ranking"):
                r["time_vs_pro_plain"] = r["seconds_per_ranking"] / base
        _write_result(args.result, result)
        print(f"{trainer}: {row['status']}", flush=True)


def train_step_trainer_worker(args) -> None:
    import torch
    from datasets import Dataset
    from train_step import ranking_pairs
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from trl_pro.assets import load_tiny_tokenizer
    from trl_pro.trainers.pro_config import PROConfig
    from trl_pro.trainers.pro_trainer import PROTrainer

    torch.manual_seed(0)
    memory = _Memory(args.device)
    rankings = json.loads(Path(args.rankings_path).read_text())
    n = len(rankings[0]["completions"])
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            memory.sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            memory.sync()
            times.append(time.perf_counter() - self.t0)

    kind, variant = args.trainer.split("-")
    common = dict(
        output_dir=tempfile.mkdtemp(prefix=f"gpu-check-{args.trainer}-", dir=args.scratch),
        max_steps=args.warmup + args.steps,
        learning_rate=1e-5,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        max_length=args.max_length,
        gradient_checkpointing=False,
        bf16=memory.cuda,
        use_cpu=not memory.cuda,
        dataloader_num_workers=0,
        model_init_kwargs={"dtype": "float32"},
    )
    tokenizer = load_tiny_tokenizer()
    if kind == "pro":
        config = PROConfig(
            **common, per_device_train_batch_size=args.rankings_per_step, shared_prompt=variant == "shared"
        )
        trainer = PROTrainer(
            args.model_path, config, train_dataset=Dataset.from_list(rankings), processing_class=tokenizer
        )
        if variant == "shared":
            tokens = [len(r["prompt_ids"]) + sum(map(len, r["completion_ids"])) for r in trainer.train_dataset]
        else:
            tokens = [
                len(r["prompt_ids"]) * len(r["completion_ids"]) + sum(map(len, r["completion_ids"]))
                for r in trainer.train_dataset
            ]
        tokens_per_ranking = statistics.mean(tokens)
        layout = trainer.data_collator.shared_prompt
    else:
        pairs = (n - 1) if variant == "adjacent" else n * (n - 1) // 2
        config = DPOConfig(
            **common, per_device_train_batch_size=args.rankings_per_step * pairs, beta=0.1, truncation_mode="keep_end"
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
        tokens_per_ranking = statistics.mean(tokens) * pairs
        layout = None
    trainer.add_callback(StepTimer())
    memory.reset()
    trainer.train()
    measured = times[args.warmup :]
    median = statistics.median(measured)
    _write_result(
        args.result,
        {
            "trainer": args.trainer,
            "shared_prompt_layout": layout,
            "step_times_s": measured,
            "median_step_s": median,
            "rankings_per_step": args.rankings_per_step,
            "seconds_per_ranking": median / args.rankings_per_step,
            "policy_tokens_per_ranking": tokens_per_ranking,
            "peak_memory_gib": memory.peak() / 2**30 if memory.cuda else None,
        },
    )


def qlora_worker(args) -> None:
    """A LLaMA-7B-shaped model from its config with random weights (train_step.save_model), then qlora_memory.py's
    worker once per n, each in its own process. `--device cpu`: the tiny Llama and that worker's `--smoke` mode."""
    import qlora_memory
    from train_step import save_model

    smoke = args.device == "cpu"
    result = {
        "setup": "LLaMA-7B shape (32 layers, hidden 4096, MLP 11008, vocabulary 32000), random weights saved in bf16, "
        "loaded in 4-bit NF4 + double quantization, bf16 compute, LoRA r=64 alpha=16 on every linear layer but "
        f"lm_head, gradient checkpointing, 1 prompt x n candidates x {2 * qlora_memory.TOKENS} tokens "
        f"({qlora_memory.TOKENS} prompt + {qlora_memory.TOKENS} completion), {args.warmup} warm-up + {args.steps} "
        "timed steps (benchmarks/qlora_memory.py's worker, one process per n); peak = torch.cuda.max_memory_allocated "
        "over training, model weights included",
        "device": args.device,
        "goal_gib": qlora_memory.GOAL_GIB,
        "goal_n": qlora_memory.GOAL_N,
        "rows": [],
    }
    model = Path(args.scratch) / "llama7b"
    start = time.perf_counter()
    save_model("tiny" if smoke else "llama7b-qlora", model)
    result["model_saved_s"] = time.perf_counter() - start
    _write_result(args.result, result)
    for n in args.n:
        command = qlora_worker_command(model, n, args.steps, args.warmup) + ["--smoke"] * smoke
        proc = subprocess.run(command, capture_output=True, text=True)
        try:
            row = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
        except (IndexError, ValueError):
            row = None
        if row is None:
            row = {"n": n, "status": f"failed (exit {proc.returncode})", "output_tail": proc.stderr[-3000:]}
        else:
            row["status"] = "ok" if row.get("loaded_in_4bit") else "ok, but the model was not loaded in 4-bit"
        result["rows"].append(row)
        _write_result(args.result, result)
        print(f"n={n}: {row['status']}", flush=True)


WORKERS = {
    "environment": environment_worker,
    "shared_prompt": shared_prompt_worker,
    "train_step": train_step_worker,
    "train_step_trainer": train_step_trainer_worker,
    "qlora_memory": qlora_worker,
}


# === The check =======================================================================================================


def scratch_root(min_free_gib: float) -> Path:
    """/dev/shm when it has room (the 13.5 GB bf16 checkpoint is written and read at memory speed), else the temp dir."""
    for candidate in ("/dev/shm", tempfile.gettempdir()):
        try:
            stat = os.statvfs(candidate)
            if stat.f_bavail * stat.f_frsize >= min_free_gib * 2**30 and os.access(candidate, os.W_OK):
                return Path(candidate)
        except OSError:
            continue
    return Path(tempfile.gettempdir())


def smi_device_name() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=15
        )
        if out.returncode != 0:
            return None
        return out.stdout.splitlines()[0].strip() or None
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def new_report(args, selected, device_name: str | None = None) -> dict:
    return {
        "benchmark": "gpu_check",
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": socket.gethostname(),
            "command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]]),
            "total_budget_s": args.total_budget,
            "parts": {p.name: p.budget_s for p in selected},
            "python": platform.python_version(),
            "stem": f"gpu_check_{device_slug(device_name)}",
        },
        "device": {"name": device_name} if device_name else {},
        "versions": {},
        "wheels": {},
        "parts": {p.name: {"title": p.title, "status": "pending", "budget_s": p.budget_s} for p in selected},
    }


def run_check(args) -> int:
    selected = [p for p in PARTS if not args.parts or p.name in args.parts]
    scale = args.total_budget / TOTAL_BUDGET_S
    start = time.monotonic()
    report = new_report(args, selected, smi_device_name())
    out_dir, copy_to = Path(args.out), Path(args.copy_to) if args.copy_to else None
    env = child_env(Path(args.site))
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    plan = plan_install(Path(args.wheels), installed_versions())
    report["wheels"] = plan
    environment: dict = {}
    slot_end = start
    end = start + args.total_budget - KILL_GRACE_S  # a part killed at the end still fits the total

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupted)

    def save():
        report["total_wall_s"] = round(time.monotonic() - start, 1)
        write_report(report, out_dir, copy_to)

    for part in selected:
        slot_end += part.budget_s * scale  # unused time of earlier parts passes on
        budget = min(slot_end, end) - time.monotonic()
        entry = report["parts"][part.name]
        entry["budget_s"] = round(budget, 1)
        skip = None
        if budget < 5:
            skip = "skipped: no time left"
        elif part.name == "gpu_tests" and not (REPO / "tests" / "gpu").is_dir():
            skip = "skipped: tests/gpu not found"
        elif part.name == "qlora_memory" and not plan["bitsandbytes"] and "bitsandbytes" not in installed_versions():
            skip = "skipped: no bitsandbytes wheel"
        if skip:
            entry.update(status=skip, summary="", wall_s=0.0)
            save()
            continue
        entry["status"] = "running"
        print(f"[{time.monotonic() - start:5.0f} s] {part.name} (budget {budget:.0f} s) ...", flush=True)
        try:
            run, figures, summary = _run_part(part, args, budget, plan, environment, report, work, env)
        except KeyboardInterrupt as error:  # SIGTERM or Ctrl-C: the part's processes are gone (run_budgeted)
            entry.update(status=f"interrupted ({error or 'Ctrl-C'})", wall_s=None)
            save()
            signal.signal(signal.SIGTERM, previous)
            print(f"interrupted during {part.name}; the report holds the parts before it", flush=True)
            return 130
        except Exception as error:  # noqa: BLE001  (the check goes on to the next part)
            run = dict(status=f"failed (check error: {error.__class__.__name__}: {error})", wall_s=None)
            figures, summary = {}, ""
        if part.name == "environment":
            environment = figures
        entry.update(
            status=run["status"],
            wall_s=run["wall_s"],
            summary=summary,
            figures=figures,
            output_tail=run.get("output_tail", "") if run["status"] != "ok" else "",
        )
        print(f"[{time.monotonic() - start:5.0f} s] {part.name}: {run['status']} - {summary}", flush=True)
        save()
    signal.signal(signal.SIGTERM, previous)
    save()
    shutil.rmtree(work, ignore_errors=True)
    paths = write_report(report, out_dir, copy_to)
    print(markdown(report))
    print(f"wrote {paths[0]} and {paths[1]}")
    bad = [n for n, p in report["parts"].items() if not str(p["status"]).startswith(("ok", "skipped"))]
    return 1 if bad else 0


def _run_part(part: Part, args, budget: float, plan: dict, environment: dict, report: dict, work: Path, env: dict):
    """Run one part (its subprocess, with `budget`) and read what it measured: (run, figures, summary)."""
    entry = report["parts"][part.name]
    folder, site = Path(args.wheels), Path(args.site)
    log = work / f"{part.name}.log"
    result_path = work / f"{part.name}.json"
    scratch = None
    figures, summary = {}, ""
    if part.name == "install":
        run = install_wheels(plan, folder, site, budget)
        summary = run.get("summary", "")
    else:
        if part.name == "environment":
            command = worker_command("environment", result_path)
            if args.peak_tflops:
                command += ["--peak-tflops", str(args.peak_tflops)]
        elif part.name == "gpu_tests":
            command = pytest_command(work / "gpu_tests.xml")
        elif part.name == "loss_core":
            imports = environment.get("imports")
            liger = imports.get("liger_kernel.chunked_loss") == "ok" if imports else plan["liger"]
            command = loss_core_command(work / "loss_core", liger)
        elif part.name == "shared_prompt":
            command = shared_prompt_command(result_path)
        elif part.name == "train_step":
            scratch = Path(tempfile.mkdtemp(prefix="gpu_check_train_step_", dir=scratch_root(20)))
            command = train_step_command(result_path, scratch)
        else:
            scratch = Path(tempfile.mkdtemp(prefix="gpu_check_qlora_", dir=scratch_root(40)))
            command = qlora_command(result_path, scratch)
        entry["command"] = " ".join(str(c) for c in command).replace(sys.executable, "python")
        run = run_budgeted(command, budget, env=env, log_path=log)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        try:
            if part.name == "environment":
                figures, summary = collect_environment(_read_json(result_path))
                report["device"] = {**report["device"], **figures.get("device", {})}
                report["device"].setdefault("name", report["device"].get("smi_name"))
                report["versions"] = {
                    k: v for k, v in figures.get("versions", {}).items() if k in VERSIONS[:9] or v != "not installed"
                }
            elif part.name == "gpu_tests":
                figures, summary = collect_tests(work / "gpu_tests.xml", run["output_tail"])
            elif part.name == "loss_core":
                figures, summary = collect_loss_core(work / "loss_core", environment, args.peak_tflops)
            elif part.name == "shared_prompt":
                figures, summary = collect_shared_prompt(_read_json(result_path))
            elif part.name == "train_step":
                figures, summary = collect_train_step(_read_json(result_path))
            else:
                figures, summary = collect_qlora(_read_json(result_path))
        except Exception as error:  # noqa: BLE001  (a part's odd output must not stop the check)
            summary = f"could not read its results: {error.__class__.__name__}: {error}"
    return run, figures, summary


# === Dry run: plan and validate on a CPU machine =====================================================================


class _Parsed(Exception):
    pass


def parsed_arguments(main, argv: list[str], script: str, via_sys_argv: bool = False) -> dict:
    """Run a script's `main` up to its `parse_args` (the exact command line, fully validated), and stop there."""
    import argparse as argparse_module

    original = argparse_module.ArgumentParser.parse_args
    captured = {}

    def patched(self, args=None, namespace=None):
        captured["namespace"] = original(self, args, namespace)
        raise _Parsed

    saved_argv = sys.argv
    argparse_module.ArgumentParser.parse_args = patched
    try:
        if via_sys_argv:
            sys.argv = [script, *argv]
            main()
        else:
            main(argv)
    except _Parsed:
        return vars(captured["namespace"])
    except SystemExit as error:
        raise ValueError(f"{script} rejects {' '.join(argv)} (exit {error.code})") from None
    finally:
        argparse_module.ArgumentParser.parse_args = original
        sys.argv = saved_argv
    raise ValueError(f"{script}: main() returned without parsing its arguments")


def _load_module(name: str, path: Path):
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def dry_run(args) -> int:
    start = time.monotonic()
    problems: list[str] = []
    selected = [p for p in PARTS if not args.parts or p.name in args.parts]
    print(f"gpu_check dry run: python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    # The GPU tier's collection runs beside the rest (it imports torch and trl_pro on its own)
    collect = None
    if (REPO / "tests" / "gpu").is_dir():
        collect = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "--collect-only",
                "-q",
                "-m",
                "gpu",
                "tests/gpu",
                "-p",
                "no:cacheprovider",
            ],
            cwd=REPO,
            env={**child_env(None), "CUDA_VISIBLE_DEVICES": ""},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **_own_group(),
        )

    print("\nParts (each in its own subprocess, killed at its budget; unused time passes on):")
    total = sum(p.budget_s for p in selected)
    for p in selected:
        print(f"  {p.name:<14} {p.budget_s:>4} s  {p.title}")
    print(f"  {'total':<14} {total:>4} s  (limit {args.total_budget} s)")
    if total > args.total_budget or args.total_budget > TOTAL_BUDGET_S:
        problems.append(f"budgets sum to {total} s, over {min(args.total_budget, TOTAL_BUDGET_S)} s")

    print(f"\nWheels in {args.wheels}:")
    plan = plan_install(Path(args.wheels), installed_versions())
    for line in plan["present"]:
        print(f"  {line}")
    for line in plan["missing"]:
        print(f"  MISSING {line} (run python benchmarks/gpu_wheels.py)")
    print(f"  total {plan['total_mib']} MiB; repository (tracked) {gpu_wheels.tracked_bytes() / 2**20:.2f} MiB")
    print("  install plan against THIS machine's packages (the GPU machine decides again at run time):")
    for line in plan["decisions"]:
        print(f"    {line}")
    if not plan["bitsandbytes"]:
        print("  qlora_memory will report 'skipped: no bitsandbytes wheel' unless the GPU machine has bitsandbytes")

    print("\nImports of every script it runs:")
    sys.path.insert(0, str(REPO))
    modules = {}
    for name in ("loss_core", "shared_prompt", "train_step", "qlora_memory"):
        try:
            t = time.monotonic()
            modules[name] = _load_module(name, HERE / f"{name}.py")
            print(f"  benchmarks/{name}.py: ok ({time.monotonic() - t:.1f} s)")
        except Exception as error:  # noqa: BLE001
            problems.append(f"benchmarks/{name}.py does not import: {error.__class__.__name__}: {error}")
            print(f"  benchmarks/{name}.py: FAILED {error}")
    for module in IMPORTS:
        try:
            __import__(module)
            print(f"  {module}: ok")
        except Exception as error:  # noqa: BLE001  (bitsandbytes / liger may be absent on CI: carried as wheels)
            print(f"  {module}: not importable here ({error.__class__.__name__}); carried as a wheel")

    print("\nCommands, each parsed by its script's own argument parser:")
    work = Path(tempfile.gettempdir()) / "gpu_check_dry_run"
    scratch, result = work / "scratch", work / "result.json"
    parser = build_parser()
    commands = [
        ("loss_core", loss_core_command(work / "loss_core", True), "loss_core"),
        ("shared_prompt", shared_prompt_command(result), None),
        ("train_step", train_step_command(result, scratch), None),
        (
            "train_step (each trainer)",
            train_step_trainer_command(
                "pro-plain",
                result,
                scratch,
                scratch / "model",
                scratch / "r.json",
                parser.parse_args(["--steps", "6"]),
            ),
            None,
        ),
        ("qlora_memory", qlora_command(result, scratch), None),
        ("qlora_memory (each n)", qlora_worker_command(scratch / "llama7b", 4, 2, 1), "qlora_memory"),
        ("environment", worker_command("environment", result), None),
    ]
    for label, command, script in commands:
        try:
            if script is None:  # this script's own worker: show what differs from the defaults
                defaults = vars(parser.parse_args([]))
                namespace = {k: v for k, v in vars(parser.parse_args(command[2:])).items() if v != defaults[k]}
            else:
                main = modules[script].main
                namespace = parsed_arguments(
                    main, command[2:], f"benchmarks/{script}.py", via_sys_argv=script == "loss_core"
                )
            shown = {
                k: v
                for k, v in namespace.items()
                if v not in (None, False)
                and k not in ("out", "output", "result", "scratch", "model_path", "rankings_path")
            }
            print(f"  {label}: ok {shown}")
        except (ValueError, KeyError, SystemExit) as error:
            problems.append(f"{label}: {error}")
            print(f"  {label}: FAILED {error}")
    print(f"  gpu_tests: {' '.join(pytest_command(None)[1:])}")
    print(f"  install: python -m pip install --no-index --no-deps --no-compile --target {args.site} <planned wheels>")

    print("\nShapes:")
    p = LLAMA7B_POINT
    tokens = p["n"] * p["tokens"] * p["prompts"]
    per_gemm = 2.0 * tokens * p["vocab"] * p["hidden"]
    print(
        f"  loss core: n={p['n']} x {p['tokens']} tokens = T {tokens}, vocab {p['vocab']}, hidden {p['hidden']}, "
        f"{p['dtype']}: hidden [{tokens}, {p['hidden']}], LM head [{p['vocab']}, {p['hidden']}], eager logits "
        f"[{p['tokens']}, {p['vocab']}] per candidate; LM-head GEMMs {4 * per_gemm / 1e12:.2f} TFLOP per step "
        f"(trainable), {3 * per_gemm / 1e12:.2f} (frozen)"
    )
    try:
        import torch
        from train_step import llama7b_config
        from transformers import LlamaForCausalLM

        config = llama7b_config()
        with torch.device("meta"):
            seven = sum(t.numel() for t in LlamaForCausalLM(config).parameters())
        for key, value in LLAMA_1B.items():
            setattr(config, key, value)
        with torch.device("meta"):
            one = sum(t.numel() for t in LlamaForCausalLM(config).parameters())
        print(
            f"  QLoRA model: LLaMA-7B config, {seven / 1e9:.2f}B parameters (bf16 checkpoint {seven * 2 / 2**30:.1f} GiB)"
        )
        print(f"  shared_prompt / train_step model: LLaMA-shaped 1B, {one / 1e9:.2f}B parameters")
        if not 6.6e9 < seven < 6.8e9:
            problems.append(f"the LLaMA-7B config has {seven} parameters")
    except Exception as error:  # noqa: BLE001
        problems.append(f"model configs: {error.__class__.__name__}: {error}")
    for name, value in (("H100 80GB HBM3", 989.4), ("H200", 989.4), ("A100-SXM4-80GB", 312.0), ("H100 PCIe", 756.0)):
        if peak_tflops(f"NVIDIA {name}") != value:
            problems.append(f"peak table: NVIDIA {name} gives {peak_tflops(f'NVIDIA {name}')}, not {value}")
    if "loss_core" in modules:
        row = dict(num_tokens=tokens, vocab=p["vocab"], hidden=p["hidden"])
        for head in ("trainable", "frozen"):
            if modules["loss_core"].gemm_flops({**row, "head": head}) != lm_head_gemm_flops({**row, "head": head}):
                problems.append("the FLOP count differs from benchmarks/loss_core.py's gemm_flops")
        if modules["loss_core"].LABELS != LOSS_CORE_LABELS:
            problems.append("the method labels differ from benchmarks/loss_core.py's LABELS")
    print(f"  bf16 peaks: {dict(PEAK_BF16_TFLOPS)} TFLOP/s ({PEAK_SOURCE})")

    print("\nOutputs:")
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out_dir, prefix=".gpu_check_probe_", delete=True)
        probe.close()
        print(
            f"  {out_dir}/gpu_check_<device>.md and .json (<device> from the GPU's name, e.g. "
            f"{device_slug('NVIDIA H200')}, {device_slug('NVIDIA H100 80GB HBM3')}): writable"
        )
    except OSError as error:
        problems.append(f"{out_dir} is not writable: {error}")
    with tempfile.TemporaryDirectory() as tmp:
        sample = new_report(args, selected)
        sample["parts"]["install"].update(status="failed (exit 1)", wall_s=0.1, output_tail="dry run")
        json_path, md_path = write_report(sample, Path(tmp))
        json.loads(json_path.read_text())
        print(f"  the writer: ok ({json_path.name}, {md_path.name} in a temporary folder)")
    print(f"  part scratch: {scratch_root(40)} for the 7B checkpoint when it has 40 GiB free (else the temp dir)")
    if args.copy_to:
        print(f"  copies into {args.copy_to}")

    if collect is not None:
        try:
            output, _ = collect.communicate(timeout=max(5.0, 50 - (time.monotonic() - start)))
            lines = [line for line in output.splitlines() if line.strip()]
            print(f"\nGPU tier (tests/gpu, collected here without a GPU): {lines[-1] if lines else 'no output'}")
            if collect.returncode not in (0, 5):
                problems.append(f"pytest --collect-only tests/gpu exited {collect.returncode}: {lines[-5:]}")
        except subprocess.TimeoutExpired:
            _kill_group(collect.pid, signal.SIGKILL)
            collect.wait()
            print("\nGPU tier (tests/gpu): collection did not finish in time here (not fatal)")
    else:
        print("\nGPU tier: tests/gpu not found; the part will report 'skipped: tests/gpu not found'")

    print(f"\nPlanned parts: {', '.join(p.name for p in selected)}")
    if problems:
        print("PROBLEMS:\n  " + "\n  ".join(problems))
    print(f"dry run {'FAILED' if problems else 'ok'} in {time.monotonic() - start:.1f} s")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="plan and validate on any machine, run nothing")
    parser.add_argument("--parts", nargs="+", choices=PART_NAMES, help="run only these parts (default: all)")
    parser.add_argument("--out", default=str(RESULTS), help="folder of gpu_check_<device>.md/.json")
    parser.add_argument("--copy-to", help="also copy the two report files into this folder after each part")
    parser.add_argument("--wheels", default=str(gpu_wheels.WHEELS_DIR), help="the carried wheels")
    parser.add_argument("--site", default=str(DEFAULT_SITE), help="where the wheels are installed (--target)")
    parser.add_argument("--total-budget", type=int, default=TOTAL_BUDGET_S, help="seconds for all parts (scaled)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of a GPU not in the table")
    # The workers' options (internal)
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help=argparse.SUPPRESS)  # cpu: smoke
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["small-50M", "llama-1B"],
        choices=["tiny", "small-50M", "llama-1B"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--n", type=int, nargs="+", default=[2, 4, 8], help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=6, help=argparse.SUPPRESS)
    parser.add_argument(
        "--trainers",
        nargs="+",
        default=["pro-plain", "dpo-adjacent", "pro-shared"],
        choices=["pro-plain", "pro-shared", "dpo-adjacent", "dpo-all"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--trainer", choices=["pro-plain", "pro-shared", "dpo-adjacent", "dpo-all"], help=argparse.SUPPRESS
    )
    parser.add_argument("--model_path", help=argparse.SUPPRESS)
    parser.add_argument("--rankings_path", help=argparse.SUPPRESS)
    parser.add_argument("--rankings_per_step", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--max_length", type=int, default=512, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        WORKERS[args.worker](args)
        return 0
    if args.total_budget > TOTAL_BUDGET_S:
        raise SystemExit(f"--total-budget is at most {TOTAL_BUDGET_S} s (8 minutes)")
    return dry_run(args) if args.dry_run else run_check(args)


if __name__ == "__main__":
    sys.exit(main())
