"""The benchmark scripts run end to end on CPU, so that none rots between the sessions that have a GPU to run them.

Their GPU paths (4-bit NF4 + LoRA + gradient checkpointing, one process per configuration) are exercised through the
CPU check modes (`qlora_memory.py --smoke`, `train_step.py --model tiny-qlora`: the tiny Llama in 4-bit with
bitsandbytes' CPU backend), and `loss_core.py` on a one-point grid. These tests check the pipelines and the result
files, never the figures: CPU timings are not measurements of anything here.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest


pytest.importorskip("bitsandbytes")
pytest.importorskip("matplotlib")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]


def _positive_times(times):
    return times and all(math.isfinite(t) and t > 0 for t in times)


@pytest.mark.slow
def test_qlora_memory_smoke_runs_every_configuration_in_4bit(tmp_path):
    _run("qlora_memory.py", "--smoke", "--steps", "1", "--warmup", "1", "--output", str(tmp_path / "qlora"))
    report = json.loads((tmp_path / "qlora.json").read_text())
    assert report["smoke"] and not report["measured"]
    rows = report["rows"]
    assert [(r["trainer"], r["n"]) for r in rows] == [("pro", 2), ("pro", 3), ("dpo", 2)]
    for row in rows:
        assert row["loaded_in_4bit"]
        assert row["peak_memory_gib"] is None  # no GPU, no memory figure
        assert row["tokens_per_step"] == row["n"] * 64 and _positive_times(row["step_times_s"])
    text = (tmp_path / "qlora.md").read_text()
    assert "CPU smoke run, not a measurement" in text and "goal" not in text
    assert sum(line.startswith(("| PRO |", "| DPO |")) for line in text.splitlines()) == 3
    assert (tmp_path / "qlora.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_qlora_memory_without_gpu_reports_nothing(tmp_path):
    _run("qlora_memory.py", "--output", str(tmp_path / "qlora"))
    report = json.loads((tmp_path / "qlora.json").read_text())
    assert not report["measured"] and report["rows"] == []
    assert "Not measured on GPU" in (tmp_path / "qlora.md").read_text()
    assert not (tmp_path / "qlora.png").exists()


@pytest.mark.slow
def test_train_step_qlora_path_runs_on_cpu(tmp_path):
    _run(
        "train_step.py",
        "--model",
        "tiny-qlora",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--batch_size",
        "2",
        "--max_length",
        "64",
        "--output",
        str(tmp_path / "step"),
    )
    report = json.loads((tmp_path / "step.json").read_text())
    for trainer in ("pro", "dpo"):
        assert report[trainer]["loaded_in_4bit"] and _positive_times(report[trainer]["step_times_s"])
    assert report["step_time_ratio_pro_over_dpo"] > 0
    text = (tmp_path / "step.md").read_text()
    assert "not a measurement" in text and "the goal of" not in text


@pytest.mark.slow
def test_loss_core_one_point_grid(tmp_path):
    _run(
        "loss_core.py",
        "--device",
        "cpu",
        "--n",
        "2",
        "--tokens",
        "16",
        "--vocab",
        "1000",
        "--hidden",
        "32",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--out",
        str(tmp_path),
    )
    report = json.loads((tmp_path / "loss_core_cpu.json").read_text())
    rows = report["results"]
    assert all(r["status"] == "ok" for r in rows)
    methods = {(r["method"], r["head"]) for r in rows}
    assert len(methods) == 6  # (a), (b), (c) with a frozen and a trainable LM head
    assert all(math.isfinite(r["time_ms"]) and r["time_ms"] > 0 for r in rows)
    text = (tmp_path / "loss_core_cpu.md").read_text()
    assert "not measured on GPU" in text
    assert (tmp_path / "loss_core_cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_shared_prompt_benchmark_tiny_grid(tmp_path):
    _run(
        "shared_prompt.py",
        "--models",
        "tiny",
        "--n",
        "2",
        "--batches",
        "1",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--out",
        str(tmp_path),
    )
    report = json.loads((tmp_path / "shared_prompt_cpu.json").read_text())
    rows = {r["layout"]: r for r in report["results"]}
    assert set(rows) == {"plain", "shared"}
    # Same scored tokens, fewer processed tokens (the prompt once per ranking)
    assert rows["plain"]["scored_tokens_per_step"] == rows["shared"]["scored_tokens_per_step"]
    assert rows["shared"]["tokens_per_step"] < rows["plain"]["tokens_per_step"]
    assert all(_positive_times(r["step_times_s"]) and r["peak_mem_mb"] is not None for r in rows.values())
    assert "n = 2" in (tmp_path / "shared_prompt_cpu.md").read_text()
    assert (tmp_path / "shared_prompt_cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_core_liger_peer_fp32(tmp_path):
    pytest.importorskip("liger_kernel")
    _run(
        "loss_core.py",
        "--device",
        "cpu",
        "--n",
        "2",
        "--tokens",
        "16",
        "--vocab",
        "1000",
        "--hidden",
        "32",
        "--dtype",
        "fp32",
        "--methods",
        "eager",
        "fused",
        "liger",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--out",
        str(tmp_path),
    )
    rows = json.loads((tmp_path / "loss_core_cpu.json").read_text())["results"]
    assert {r["method"] for r in rows} == {"eager", "fused", "liger"} and all(r["status"] == "ok" for r in rows)


@pytest.mark.slow
def test_train_step_rankings_comparison_runs(tmp_path):
    _run(
        "train_step.py",
        "--compare",
        "rankings",
        "--model",
        "tiny",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--rankings_per_step",
        "1",
        "--max_length",
        "128",
        "--output",
        str(tmp_path / "rk"),
    )
    rows = json.loads((tmp_path / "rk.json").read_text())["rows"]
    assert list(rows) == [
        "pro-plain",
        "pro-shared",
        "list_dpo-shared",
        "list_dpo-precomputed",
        "dpo-adjacent",
        "dpo-all",
    ]
    assert all(_positive_times(r["step_times_s"]) for r in rows.values())
    tokens = {name: r["policy_tokens_per_ranking"] for name, r in rows.items()}
    assert tokens["pro-shared"] < tokens["pro-plain"] < tokens["dpo-adjacent"] < tokens["dpo-all"]
    assert tokens["list_dpo-shared"] == tokens["list_dpo-precomputed"] == tokens["pro-shared"]
    # the reference pass runs before training only when precomputed
    assert rows["list_dpo-precomputed"]["precompute_s_per_ranking"] > 0
    assert rows["list_dpo-shared"]["precompute_s_per_ranking"] is None
    assert rows["dpo-adjacent"]["time_vs_dpo_adjacent"] == 1.0 and all(r["memory"] for r in rows.values())
    assert (tmp_path / "rk.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_build_rankings_smoke(tmp_path):
    _run("build_rankings.py", "--smoke", "--output", str(tmp_path / "rankings"))
    report = json.loads((tmp_path / "rankings.json").read_text())
    assert report["smoke"] and "not a measurement" in report["note"]
    for part in ("scoring", "generation"):
        assert _positive_times(report[part]["batched_s"]) and _positive_times(report[part]["one_at_a_time_s"])
    rounds = report["bootstrap"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(0 < r["generation_share"] < 1 for r in rounds)
    assert (tmp_path / "rankings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_step_ranking_lengths_worker_and_report(tmp_path):
    """`train_step.py --ranking_lengths` pieces in-process on the tiny model (the full run starts 6 processes per
    repeat): RRHF and DPO workers at n = 4 (DPO on the 3 adjacent pairs of each prompt), then the report files."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_step", BENCHMARKS / "train_step.py")
    train_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_step)
    rankings = train_step.synthetic_rankings(3, 4, 8, 8)
    pairs = train_step.adjacent_pairs(rankings)
    assert len(pairs) == 9 and pairs[1]["chosen"] == rankings[0]["completions"][1]
    args = argparse.Namespace(
        model="tiny",
        steps=1,
        warmup=1,
        batch_size=2,
        max_length=32,
        ranking_length=4,
        model_path=str(train_step.save_model("tiny", tmp_path / "model")),
    )
    rows = []
    for trainer in ("rrhf", "dpo"):
        args.ranking_worker = trainer
        rows.append(train_step.lengths_worker(args))
        assert rows[-1]["ranking_length"] == 4 and _positive_times(rows[-1]["step_times_s"])
    # Same prompts per step: DPO's step holds 3 pairs per prompt (the prompt twice each), RRHF's the 4 candidates
    assert rows[1]["tokens_per_step_mean"] == pytest.approx(1.5 * rows[0]["tokens_per_step_mean"], rel=0.1)
    for row in rows:
        assert _positive_times(row["step_cpu_times_s"])
        row.update(
            run_medians_s=[row["median_step_s"]],
            step_time_ratio_over_pro=1.0,
            cpu_time_ratio_over_pro=1.0,
            peak_memory_ratio_over_pro=1.0,
        )
    report = {"model": "tiny", "setup": "test", "environment": train_step.environment("cpu"), "rows": rows}
    text = train_step.lengths_markdown(report)
    assert "| 4 | RRHF |" in text and "| 4 | DPO |" in text and "Not measured on GPU" in text
    train_step.lengths_plot(report, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_soak_smoke_runs_and_reports_every_step(tmp_path):
    _run("soak.py", "--steps", "3", "--write_every", "2", "--output", str(tmp_path / "soak"))
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["complete"] and report["steps"] == 3 and [row["step"] for row in report["per_step"]] == [1, 2, 3]
    assert report["loss_finite_every_step"] and report["skipped_steps"] == []
    assert all(row["rss_mib"] > 0 and math.isfinite(row["grad_norm"]) for row in report["per_step"])
    assert "Dropped 4 of 1200 rows" in report["rows_dropped_by_data_path"][0]  # the quickstart data's 4 empty rows
    assert "| steps that skipped a batch | 0 |" in (tmp_path / "soak.md").read_text()
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
