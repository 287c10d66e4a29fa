"""Download the wheels that `benchmarks/gpu_check.py` installs on a GPU machine that has no network (not a test).

The GPU machine has Python 3.12 with torch 2.11 (CUDA 13), triton 3.6, transformers 5.17, peft, accelerate 1.15,
huggingface-hub 1.33, pandas, pyarrow, pytest and hypothesis, but not trl, datasets, bitsandbytes or liger-kernel,
and nothing can be installed there from a registry. This script downloads them here, for CPython 3.12 on manylinux
x86_64, `--no-deps`, each pinned (PINS below says why each version), into a git-ignored folder beside it,
`benchmarks/gpu_wheels/`, with a `manifest.json`. What travels to the GPU machine (the repository's tracked files
and this folder) must fit in 64 MiB: if the wheels do not fit, bitsandbytes is left out (gpu_check's QLoRA part
then reports "skipped: no bitsandbytes wheel").

Roles: a "package" wheel is always installed by gpu_check; a "dependency" wheel only where the machine lacks that
distribution or has a version that the installed package wheels do not accept (gpu_check reads their Requires-Dist).
Where several versions of one package are here (datasets), gpu_check installs the newest whose requirements the
machine meets.

    python benchmarks/gpu_wheels.py            # download (pip), check the size, write the manifest
    python benchmarks/gpu_wheels.py --list     # what is in the folder, against PINS; downloads nothing
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path


HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WHEELS_DIR = HERE / "gpu_wheels"
TRAVEL_LIMIT = 64 * 2**20  # the working tree that travels to the GPU machine, wheels included
TRAVEL_MARGIN = 2 * 2**20  # files a session adds before it runs the check (results, notes)
PYTHON_VERSION = "3.12"
# pip matches manylinux tags exactly: bitsandbytes 0.50.2 is tagged manylinux_2_24, the others are pure or 2_17
PLATFORMS = (
    "manylinux2014_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_28_x86_64",
)


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    role: str  # "package": always installed; "dependency": installed where the machine lacks it or has a wrong one
    why: str
    droppable: bool = False  # left out when the wheels do not fit the travel limit


PINS = (
    Pin(
        "trl",
        "1.16.0",
        "package",
        "trl_pro pins trl>=1.16,<1.17 (pyproject). trl 1.16.0 requires accelerate>=1.10.1, datasets>=4.7.0, "
        "transformers>=4.56.2, huggingface_hub>=0.34.0, pandas>=2.1.1, pyarrow>=21.0.0, psutil, jinja2, pyyaml, "
        "numpy: the machine's transformers 5.17 and accelerate 1.15 satisfy it; datasets comes from here",
    ),
    Pin(
        "datasets",
        "5.2.0",
        "package",
        "the version CI runs here; requires pyarrow>=24.0.0, huggingface-hub>=1.31.0,<3.0 (the machine: 1.33), "
        "fsspec>=2023.1.0,<=2026.9.0, dill>=0.3.0,<0.4.2, multiprocess<0.70.20, xxhash, pandas, tqdm, pyyaml, "
        "filelock, packaging, numpy",
    ),
    Pin(
        "datasets",
        "5.0.1",
        "package",
        "fallback for a machine whose pyarrow is older than 24 (pyarrow is too large to carry): requires "
        "pyarrow>=21.0.0, huggingface-hub>=0.25.0,<2.0, fsspec[http]<=2026.6.0, requests, httpx<1.0.0, "
        "dill<0.4.2, multiprocess<0.70.20",
    ),
    Pin("dill", "0.4.1", "dependency", "datasets: dill>=0.3.0,<0.4.2; multiprocess 0.70.19: dill>=0.4.1"),
    Pin("multiprocess", "0.70.19", "dependency", "datasets: multiprocess<0.70.20 (a py312 wheel)"),
    Pin("xxhash", "4.1.0", "dependency", "datasets: xxhash (the machine's image lists it; carried in case)"),
    Pin(
        "fsspec",
        "2026.6.0",
        "dependency",
        "datasets 5.2.0: fsspec<=2026.9.0, 5.0.1: <=2026.6.0; torch brings fsspec, so this one is installed only "
        "where the machine's is newer than the chosen datasets accepts (2026.6.0 satisfies both caps)",
    ),
    Pin(
        "liger-kernel",
        "0.8.5",
        "package",
        "the Liger peer of benchmarks/loss_core.py (pyproject: liger-kernel>=0.8); requires torch>=2.1.2, "
        "triton>=2.3.1",
    ),
    Pin(
        "bitsandbytes",
        "0.50.2",
        "package",
        "QLoRA (pyproject: bitsandbytes>=0.45); requires torch>=2.4,<3, numpy, packaging; ships "
        "libbitsandbytes_cuda130.so for torch 2.11+cu130",
        droppable=True,
    ),
)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_wheel_name(filename: str) -> tuple[str, str] | None:
    """(normalized distribution name, version) of a wheel file name, None if it is not one."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[:-4].split("-")
    if len(parts) < 5:
        return None
    return normalize(parts[0]), parts[1]


def wheel_requirements(path: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        text = archive.read(name).decode("utf-8", "replace")
    headers = text.split("\n\n", 1)[0]
    return [line.split(":", 1)[1].strip() for line in headers.splitlines() if line.startswith("Requires-Dist:")]


def pin_for(name: str, version: str) -> Pin | None:
    return next((p for p in PINS if normalize(p.name) == name and p.version == version), None)


def listing(folder: Path = WHEELS_DIR) -> dict:
    """The wheels in `folder` against PINS: present (with sizes), missing, unexpected; total size."""
    present, unexpected = [], []
    files = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    for path in files:
        parsed = parse_wheel_name(path.name)
        pin = pin_for(*parsed) if parsed else None
        entry = {"file": path.name, "size": path.stat().st_size}
        if pin is None:
            unexpected.append(entry)
        else:
            present.append({**entry, "name": pin.name, "version": pin.version, "role": pin.role})
    have = {(normalize(p["name"]), p["version"]) for p in present}
    missing = [asdict(p) for p in PINS if (normalize(p.name), p.version) not in have]
    return {
        "folder": str(folder),
        "present": present,
        "missing": missing,
        "unexpected": unexpected,
        "total_bytes": sum(e["size"] for e in present + unexpected),
    }


def tracked_bytes() -> int:
    """Size of the repository's tracked files (they travel with the wheels); 0 without git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum((REPO / f).stat().st_size for f in out.split("\0") if f and (REPO / f).is_file())


def download(folder: Path, pins=PINS) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for pin in pins:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--no-deps",
            "--python-version",
            PYTHON_VERSION,
            "--implementation",
            "cp",
            *[arg for platform in PLATFORMS for arg in ("--platform", platform)],
            "-d",
            str(folder),
            f"{pin.name}=={pin.version}",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            errors.append(f"{pin.name}=={pin.version}: {result.stderr.strip().splitlines()[-1:]}")
        print(f"{pin.name}=={pin.version}: {'ok' if result.returncode == 0 else 'FAILED'}", flush=True)
    return errors


def write_manifest(folder: Path, info: dict) -> None:
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, folder / "manifest.json")


def show(info: dict) -> None:
    for entry in info["present"]:
        print(f"  {entry['file']:<70} {entry['size'] / 2**20:7.2f} MiB  ({entry['role']})")
    for entry in info["unexpected"]:
        print(f"  {entry['file']:<70} {entry['size'] / 2**20:7.2f} MiB  (not in PINS: remove it)")
    for pin in info["missing"]:
        print(f"  missing: {pin['name']}=={pin['version']}")
    print(f"  total {info['total_bytes'] / 2**20:.2f} MiB in {info['folder']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default=str(WHEELS_DIR), help="the wheel folder (default: benchmarks/gpu_wheels)")
    parser.add_argument("--list", action="store_true", help="list the folder against PINS, download nothing")
    args = parser.parse_args(argv)
    folder = Path(args.dest)
    if args.list:
        show(listing(folder))
        return 0
    errors = download(folder)
    info = listing(folder)
    # Unexpected wheels (older pins) would travel too, and two versions of one dependency confuse the install
    for entry in info["unexpected"]:
        (folder / entry["file"]).unlink()
    info = listing(folder)
    repo_bytes = tracked_bytes()
    room = TRAVEL_LIMIT - TRAVEL_MARGIN - repo_bytes
    dropped = []
    if info["total_bytes"] > room:
        for entry in info["present"]:
            pin = pin_for(normalize(entry["name"]), entry["version"])
            if pin and pin.droppable:
                (folder / entry["file"]).unlink()
                dropped.append(entry["file"])
        info = listing(folder)
    info.update(
        python=PYTHON_VERSION,
        platforms=list(PLATFORMS),
        tracked_repo_bytes=repo_bytes,
        travel_limit_bytes=TRAVEL_LIMIT,
        fits=info["total_bytes"] + repo_bytes + TRAVEL_MARGIN <= TRAVEL_LIMIT,
        dropped_to_fit=dropped,
        download_errors=errors,
        pins=[asdict(p) for p in PINS],
    )
    write_manifest(folder, info)
    show(info)
    print(
        f"  repository (tracked files) {repo_bytes / 2**20:.2f} MiB; together "
        f"{(info['total_bytes'] + repo_bytes) / 2**20:.2f} MiB of the {TRAVEL_LIMIT / 2**20:.0f} MiB that travel"
        + (f"; left out to fit: {', '.join(dropped)}" if dropped else "")
    )
    return 1 if errors or not info["fits"] else 0


if __name__ == "__main__":
    sys.exit(main())
