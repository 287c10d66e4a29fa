"""`benchmarks/kernel_resources.py`: the occupancy calculator against hand-computed cases, and the script's smoke mode
(compiles for sm_80/sm_90 on CPU with Triton's bundled ptxas) writing the occupancy and spill columns and sections."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load():
    spec = importlib.util.spec_from_file_location("kernel_resources", BENCHMARKS / "kernel_resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # stdlib imports only at module level
    return module


kr = _load()


def _check(result, blocks, warps, occupancy, limited_by):
    assert (result["blocks_per_sm"], result["active_warps_per_sm"]) == (blocks, warps)
    assert result["occupancy"] == pytest.approx(occupancy)
    assert result["limited_by"] == limited_by
    assert result["fits"] == (blocks > 0)


def test_registers_128_per_thread_256_threads_sm90_is_25_percent():
    # 8 warps per block; 128 * 32 = 4096 registers per warp; 65536 / (128 * 256) = 2 blocks -> 16 warps of 64
    result = kr.occupancy(90, registers=128, shared_bytes=0, num_warps=8)
    assert result["warps_per_block"] == 8 and result["registers_per_warp"] == 4096
    assert result["blocks_by_registers"] == 2 and result["blocks_by_warps"] == 8 and result["blocks_by_blocks"] == 32
    _check(result, 2, 16, 0.25, "registers")


def test_full_occupancy_ties_registers_and_warps():
    # 32 regs -> 1024 per warp -> 64 warps fit the register file; 64 / 4 = 16 blocks by warps as well
    _check(kr.occupancy(80, registers=32, shared_bytes=0, num_warps=4), 16, 64, 1.0, "registers+warps")


def test_shared_memory_limit_differs_between_a100_and_h100():
    # 48 KiB + 1 KiB reserved = 50176 B per block: 167936 // 50176 = 3 blocks on sm_80, 233472 // 50176 = 4 on sm_90;
    # registers: 64 * 32 = 2048 per warp -> 8 warps per sub-partition -> 32 warps -> 4 blocks of 8 warps
    a100 = kr.occupancy(80, registers=64, shared_bytes=48 * 1024, num_warps=8)
    assert a100["shared_alloc_bytes"] == 50176 and a100["blocks_by_shared"] == 3 and a100["blocks_by_registers"] == 4
    _check(a100, 3, 24, 0.375, "shared")
    _check(kr.occupancy(90, registers=64, shared_bytes=48 * 1024, num_warps=8), 4, 32, 0.5, "registers+shared")


def test_register_allocation_granularity_and_sub_partitions():
    # 100 regs * 32 = 3200 -> rounded up to 3328 (13 x 256); 16384 // 3328 = 4 warps per sub-partition -> 16 warps,
    # not 65536 // 3328 = 19: one-warp blocks, 16 of them
    result = kr.occupancy(80, registers=100, shared_bytes=0, num_warps=1)
    assert result["registers_per_warp"] == 3328
    _check(result, 16, 16, 0.25, "registers")
    # 129 regs -> 4128 -> 4352 per warp; 16384 // 4352 = 3 per sub-partition -> 12 warps -> 3 blocks of 4 warps
    _check(kr.occupancy(90, registers=129, shared_bytes=0, num_warps=4), 3, 12, 0.1875, "registers")


def test_block_limit_binds_for_small_blocks():
    # 1 warp, 16 regs: registers allow 128 blocks, warps 64, the 32-block limit binds -> 32 warps
    _check(kr.occupancy(90, registers=16, shared_bytes=0, num_warps=1), 32, 32, 0.5, "blocks")


def test_255_registers_eight_warps_is_one_block():
    # 255 * 32 = 8160 -> 8192 per warp: 2 warps per sub-partition -> 8 warps -> one 8-warp block, 12.5%
    _check(kr.occupancy(80, registers=255, shared_bytes=12288, num_warps=8), 1, 8, 0.125, "registers")
    # 16 warps of 8192 registers exceed the 65536 registers of a block: the launch would fail
    _check(kr.occupancy(80, registers=255, shared_bytes=0, num_warps=16), 0, 0, 0.0, "does not fit")


@pytest.mark.parametrize("arch, per_block", [(80, 163 * 1024), (90, 227 * 1024)])
def test_shared_memory_per_block_maximum(arch, per_block):
    # The per-block maximum plus the 1 KiB reservation is the whole SM: one block; one byte more does not launch
    _check(kr.occupancy(arch, registers=32, shared_bytes=per_block, num_warps=4), 1, 4, 4 / 64, "shared")
    _check(kr.occupancy(arch, registers=32, shared_bytes=per_block + 1, num_warps=4), 0, 0, 0.0, "does not fit")


def test_more_than_1024_threads_does_not_fit():
    _check(kr.occupancy(90, registers=16, shared_bytes=0, num_warps=64), 0, 0, 0.0, "does not fit")


def test_arch_limits():
    for arch, shared_kib in ((80, 164), (90, 228)):
        limits = kr.ARCH_LIMITS[arch]
        assert limits["registers_per_sm"] == 65536 and limits["max_warps_per_sm"] == 64
        assert limits["max_blocks_per_sm"] == 32 and limits["register_alloc_unit"] == 256
        assert limits["shared_per_sm"] == shared_kib * 1024
        assert limits["shared_per_block"] == (shared_kib - 1) * 1024


def _assert_report(report, text):
    rows = report["kernels"]
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    for r in rows:
        occ = r["occupancy"]
        arch = int(r["arch"][3:])
        assert occ["registers_per_thread"] == r.get("cubin_registers", r["registers"])
        assert occ["shared_bytes"] >= r["triton_shared_bytes"]
        assert occ == {
            "registers_per_thread": occ["registers_per_thread"],
            "shared_bytes": occ["shared_bytes"],
            **kr.occupancy(arch, occ["registers_per_thread"], occ["shared_bytes"], r["num_warps"]),
        }
        assert occ["fits"] and 0 < occ["occupancy"] <= 1
    summary = report["occupancy_default_tiles"]
    kernels = {entry["kernel"] for entry in summary}
    assert {"_lse_forward_kernel", "_grad_logits_kernel", "_finalize_kernel", "_ranking_kernel"} <= kernels
    bf16 = [e for e in summary if e["config"].startswith("bf16, bias=False")]
    assert {e["kernel"] for e in bf16} == {"_lse_forward_kernel", "_grad_logits_kernel"}
    for entry in summary:
        for arch in ("sm_80", "sm_90"):
            assert 0 < entry[arch]["min"] <= entry[arch]["max"] <= 1
    spills = report["spilling_configurations"]
    assert spills["autotuned"] is False and spills["runtime_choices"]
    spilling_rows = [r for r in rows if r["spill_stores_bytes"] or r["spill_loads_bytes"]]
    assert len(spills["default_tiles"]) == len(spilling_rows)

    assert "| blocks/SM | warps/SM | occupancy | limited by |" in text
    assert "## Occupancy at the default tiles" in text and "| kernel | configuration | sm_80 occupancy |" in text
    assert "## Spilling configurations the autotuner could pick" in text
    assert "No kernel is autotuned" in text and "Spilling at the default tiles" in text
    assert "- Occupancy at the default tiles, bf16 without bias: _lse_forward_kernel " in text
    table = [line for line in text.splitlines() if line.startswith("| _") and line.count("|") == 15]
    assert len(table) == len(rows)
    for line, r in zip(table, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[-4:] == [
            str(r["occupancy"]["blocks_per_sm"]),
            str(r["occupancy"]["active_warps_per_sm"]),
            f"{100 * r['occupancy']['occupancy']:.1f}%",
            r["occupancy"]["limited_by"],
        ]


def test_smoke_mode_writes_occupancy_and_spill_sections(tmp_path):
    pytest.importorskip("triton")
    pytest.importorskip("matplotlib")
    pytest.importorskip("triton.backends.nvidia.compiler")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "kernel_resources.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TRITON_INTERPRET": "0"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "loss_core_kernels_static_smoke.json").read_text())
    text = (tmp_path / "loss_core_kernels_static_smoke.md").read_text()
    assert report["meta"]["smoke"] and report["tile_candidates"] == [] and "smoke run" in text
    # bf16 logits-tile kernels, the finalize kernel, one ranking variant, each for sm_80 and sm_90
    assert len(report["kernels"]) == 8
    _assert_report(report, text)
    assert (tmp_path / "loss_core_kernels_static_smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "loss_core_kernels_static.json").exists()


def test_committed_report_has_occupancy_and_spill_sections():
    base = BENCHMARKS / "results" / "loss_core_kernels_static"
    report = json.loads(base.with_suffix(".json").read_text())
    assert not report["meta"]["smoke"]
    _assert_report(report, base.with_suffix(".md").read_text())
    assert report["tile_candidates"] and sum(c["default"] for c in report["tile_candidates"]) == 1
