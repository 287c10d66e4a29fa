"""benchmarks/gpu_check.py without a GPU: its dry run (the part of it CI can run), the time-budget runner that keeps a
hanging part from eating the GPU window, the report writer with failed parts, the collectors on sample results, and
the choice of wheels to install. The GPU parts themselves only run on a GPU machine."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check")  # standard library (and benchmarks/gpu_wheels.py) only at import


def test_dry_run_plans_and_validates_every_part(tmp_path):
    out, wheels = tmp_path / "out", tmp_path / "no_wheels"
    start = time.monotonic()
    result = subprocess.run(
        # No wheel folder, as on CI (benchmarks/gpu_wheels/ is git-ignored): reported, not fatal
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--dry-run", "--out", str(out), "--wheels", str(wheels)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    out_dir, out = out, result.stdout
    assert result.returncode == 0, out[-5000:] + result.stderr[-3000:]
    planned = next(line for line in out.splitlines() if line.startswith("Planned parts:"))
    assert planned.split(":", 1)[1].strip().split(", ") == list(gpu_check.PART_NAMES)
    assert list(gpu_check.PART_NAMES) == [
        "install",
        "environment",
        "gpu_tests",
        "loss_core",
        "shared_prompt",
        "train_step",
        "qlora_memory",
    ]
    for name in ("loss_core", "shared_prompt", "train_step", "train_step (each trainer)", "qlora_memory (each n)"):
        assert re.search(rf"^  {re.escape(name)}: ok ", out, re.M), name  # its command parsed by its own parser
    for script in ("loss_core", "shared_prompt", "train_step", "qlora_memory"):
        assert f"benchmarks/{script}.py: ok" in out
    assert "n=4 x 512 tokens = T 2048, vocab 32000, hidden 4096, bf16" in out
    assert "MISSING trl==1.16.0" in out and "MISSING bitsandbytes==0.50.2" in out
    assert "skipped: no bitsandbytes wheel" in out
    assert "dry run ok" in out and "PROBLEMS" not in out
    assert not list(out_dir.iterdir())  # a dry run writes no report
    assert elapsed < 120  # < 60 s on an idle machine; CI's may be busy


def test_budgets_fit_eight_minutes():
    assert sum(p.budget_s for p in gpu_check.PARTS) <= gpu_check.TOTAL_BUDGET_S == 480


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return True
        if re.search(r"^State:\s+[ZX]", state, re.M):  # killed, not yet reaped by its new parent
            return True
        time.sleep(0.1)
    return False


def test_runner_kills_a_part_past_its_budget_with_its_children(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(120)\n"
    )
    start = time.monotonic()
    run = gpu_check.run_budgeted([sys.executable, "-c", code], 3, log_path=tmp_path / "part.log")
    elapsed = time.monotonic() - start
    assert run["timed_out"] and run["status"] == "timed out after 3 s"
    assert 3 <= elapsed < 3 + gpu_check.KILL_GRACE_S + 5
    assert "started" in run["output_tail"] and "started" in (tmp_path / "part.log").read_text()
    assert _gone(int(pid_file.read_text()))  # the part's own subprocess went with it


def test_runner_reports_ok_and_failed_parts():
    ok = gpu_check.run_budgeted([sys.executable, "-c", "print('fine')"], 60)
    assert ok["status"] == "ok" and not ok["timed_out"] and "fine" in ok["output_tail"]
    failed = gpu_check.run_budgeted([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], 60)
    assert failed["status"] == "failed (exit 3)" and failed["returncode"] == 3 and "boom" in failed["output_tail"]
    missing = gpu_check.run_budgeted(["/nonexistent/program"], 60)
    assert missing["status"].startswith("failed (")


def _loss_core_rows() -> list[dict]:
    rows = []
    times = {"eager": 9.0, "trl": 5.0, "fused": 2.0, "liger": 6.0}
    memory = {"eager": 4000.0, "trl": 900.0, "fused": 300.0, "liger": 1200.0}
    for head in ("trainable", "frozen"):
        for method in ("eager", "trl", "fused", "liger"):
            rows.append(
                dict(
                    n=4,
                    tokens=512,
                    vocab=32000,
                    hidden=4096,
                    head=head,
                    method=method,
                    prompts=1,
                    num_tokens=2048,
                    status="ok",
                    time_ms=times[method],
                    median_ms=times[method],
                    peak_mem_mb=memory[method],
                    time_vs_eager=times[method] / times["eager"],
                    time_vs_trl=times[method] / times["trl"],
                    mem_vs_eager=memory[method] / memory["eager"],
                    mem_vs_trl=memory[method] / memory["trl"],
                )
            )
    return rows


def test_report_with_failed_and_timed_out_parts_is_written(tmp_path):
    args = gpu_check.build_parser().parse_args([])
    report = gpu_check.new_report(args, gpu_check.PARTS, "NVIDIA H200")
    environment = {
        "device": {"name": "NVIDIA H200", "driver": "580.159.04", "cuda": "13.0"},
        "imports": {"trl": "ok", "bitsandbytes": "ok"},
        "matmul_tflops": 780.0,
        "peak_bf16_tflops": 989.4,
        "matmul_fraction_of_peak": 0.79,
    }
    report["device"] = environment["device"]
    report["parts"]["environment"].update(status="ok", wall_s=4.0, summary="NVIDIA H200", figures=environment)
    report["parts"]["loss_core"].update(
        status="failed (exit 1)", wall_s=3.2, summary="no result file", output_tail="Traceback\nRuntimeError: boom"
    )
    report["parts"]["shared_prompt"].update(status="timed out after 50 s", wall_s=53.0, output_tail="n=2 done")
    report["parts"]["qlora_memory"].update(status="skipped: no bitsandbytes wheel", wall_s=0.0)
    copy = tmp_path / "copy"
    json_path, md_path = gpu_check.write_report(report, tmp_path / "out", copy)
    assert (json_path.name, md_path.name) == ("gpu_check_h200.json", "gpu_check_h200.md")
    data = json.loads(json_path.read_text())
    assert data["parts"]["loss_core"]["status"] == "failed (exit 1)"
    assert data["parts"]["shared_prompt"]["status"] == "timed out after 50 s"
    md = md_path.read_text()
    assert "| loss_core | failed (exit 1) | 3.2 |" in md and "RuntimeError: boom" in md
    assert "| shared_prompt | timed out after 50 s |" in md
    assert "| qlora_memory | skipped: no bitsandbytes wheel |" in md
    assert "| train_step | pending |" in md
    assert "780 TFLOP/s" in md and "driver 580.159.04" in md
    assert (copy / md_path.name).read_text() == md and (copy / json_path.name).read_text() == json_path.read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [json_path.name, md_path.name]  # no temp files


def test_collectors_and_markdown_on_sample_results(tmp_path):
    environment = {"device": {"name": "NVIDIA H100 80GB HBM3"}, "matmul_tflops": 700.0}
    (tmp_path / "loss_core").mkdir()
    (tmp_path / "loss_core" / "loss_core_cuda.json").write_text(
        json.dumps({"meta": {"grid": "n [4] ...", "hardware": "NVIDIA H100 80GB HBM3"}, "results": _loss_core_rows()})
    )
    loss, loss_summary = gpu_check.collect_loss_core(tmp_path / "loss_core", environment, None)
    goal = loss["goals"]["trainable"]
    flops = 4 * 2.0 * 2048 * 32000 * 4096
    assert goal["tflops"] == pytest.approx(flops / 2e-3 / 1e12)
    assert goal["peak_tflops"] == 989.4 and goal["fraction_of_peak"] == pytest.approx(goal["tflops"] / 989.4)
    assert goal["fraction_of_measured"] == pytest.approx(goal["tflops"] / 700.0)
    assert goal["time_vs_liger"] == pytest.approx(2.0 / 6.0)
    assert "of bf16 peak" in loss_summary

    shared_rows = []
    for n in (2, 4, 8):
        for layout, seconds, mem, tokens in (("plain", 0.2, 1000.0, 3000.0), ("shared", 0.1, 800.0, 1500.0)):
            shared_rows.append(
                dict(
                    model="llama-1B",
                    n=n,
                    layout=layout,
                    median_step_s=seconds,
                    peak_mem_mb=mem,
                    tokens_per_step=tokens,
                )
            )
    shared, shared_summary = gpu_check.collect_shared_prompt(
        {"setup": "s", "goals": {"2": 1.3, "4": 2.0}, "rows": shared_rows}
    )
    assert [p["speedup"] for p in shared["pairs"]] == pytest.approx([2.0, 2.0, 2.0])
    assert len(shared["verdicts"]) == 2 and "**met**" in shared["verdicts"][0]
    assert "n=8 2.00x" in shared_summary

    train, train_summary = gpu_check.collect_train_step(
        {
            "setup": "s",
            "rows": {
                "pro-plain": {"status": "ok", "seconds_per_ranking": 0.05, "median_step_s": 0.1},
                "dpo-adjacent": {"status": "ok", "seconds_per_ranking": 0.1, "median_step_s": 0.2},
                "pro-shared": {"status": "failed (exit 1)", "output_tail": "x"},
            },
        }
    )
    assert train["pro_over_dpo"] == pytest.approx(0.5) and "0.500" in train_summary

    qlora, qlora_summary = gpu_check.collect_qlora(
        {
            "setup": "s",
            "goal_gib": 12.0,
            "goal_n": 4,
            "rows": [
                {"n": 2, "status": "ok", "peak_memory_gib": 6.5, "median_step_s": 1.0, "tokens_per_s": 1024},
                {"n": 4, "status": "failed (exit 1)"},
            ],
        }
    )
    assert qlora_summary == "n=2 6.50 GiB" and "verdict" not in qlora

    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.gpu.test_a" name="test_ok"/>'
        '<testcase classname="tests.gpu.test_a" name="test_bad"><failure message="x"/></testcase>'
        "</testsuite></testsuites>"
    )
    tests, tests_summary = gpu_check.collect_tests(junit, "...\n=== 2 passed, 1 failed, 1 skipped in 9.1s ===")
    assert (tests["passed"], tests["failed"], tests["skipped"]) == (2, 1, 1)
    assert tests["failures"] == ["tests.gpu.test_a::test_bad"]
    partial, _ = gpu_check.collect_tests(tmp_path / "absent.xml", "..F.s [ 40%]\n..")
    assert (partial["passed"], partial["failed"], partial["skipped"], partial["partial"]) == (5, 1, 1, True)

    args = gpu_check.build_parser().parse_args([])
    report = gpu_check.new_report(args, gpu_check.PARTS, "NVIDIA H100 80GB HBM3")
    for name, figures, summary in (
        ("environment", environment, "env"),
        ("gpu_tests", tests, tests_summary),
        ("loss_core", loss, loss_summary),
        ("shared_prompt", shared, shared_summary),
        ("train_step", train, train_summary),
        ("qlora_memory", qlora, qlora_summary),
    ):
        report["parts"][name].update(status="ok", wall_s=1.0, summary=summary, figures=figures)
    md = gpu_check.markdown(report)
    assert "## loss_core" in md and "| trainable | (c) fused core | 2.00 |" in md
    assert "| llama-1B | 8 | 200.0 | 100.0 | 2.00 |" in md
    assert "PRO (plain) / DPO (3 adjacent pairs) time per ranking: **0.500**" in md
    assert "FAILED tests.gpu.test_a::test_bad" in md
    json_path, _ = gpu_check.write_report(report, tmp_path / "report")
    assert json_path.name == "gpu_check_h100_80gb_hbm3.json"


def _fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    dist = name.replace("-", "_")
    tag = "py312-none-any" if name == "multiprocess" else "py3-none-any"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(folder / f"{dist}-{version}-{tag}.whl", "w") as archive:
        archive.writestr(f"{dist}-{version}.dist-info/METADATA", metadata + "\n")


@pytest.fixture
def wheel_folder(tmp_path):
    """Wheels with the pinned names and versions and the real requirements that matter here."""
    _fake_wheel(tmp_path, "trl", "1.16.0", ["accelerate>=1.10.1", "datasets>=4.7.0", "transformers>=4.56.2"])
    common = ["dill<0.4.2,>=0.3.0", "multiprocess<0.70.20", "xxhash", 'typing-extensions; python_version < "3.0"']
    _fake_wheel(
        tmp_path,
        "datasets",
        "5.2.0",
        ["pyarrow>=24.0.0", "fsspec[http]<=2026.9.0,>=2023.1.0", "huggingface-hub<3.0,>=1.31.0", *common],
    )
    _fake_wheel(
        tmp_path,
        "datasets",
        "5.0.1",
        ["pyarrow>=21.0.0", "fsspec[http]<=2026.6.0,>=2023.1.0", "huggingface-hub<2.0,>=0.25.0", *common],
    )
    _fake_wheel(tmp_path, "dill", "0.4.1", [])
    _fake_wheel(tmp_path, "multiprocess", "0.70.19", ["dill>=0.4.1"])
    _fake_wheel(tmp_path, "xxhash", "4.1.0", [])
    _fake_wheel(tmp_path, "fsspec", "2026.6.0", ['aiohttp; extra == "http"'])
    _fake_wheel(tmp_path, "liger-kernel", "0.8.5", ["torch>=2.1.2", "triton>=2.3.1"])
    return tmp_path


GPU_MACHINE = {
    "torch": "2.11.0+cu130",
    "triton": "3.6.0",
    "transformers": "5.17.0",
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "fsspec": "2026.9.0",
    "xxhash": "3.6.0",
}


def test_install_plan_on_the_gpu_machine(wheel_folder):
    plan = gpu_check.plan_install(wheel_folder, {**GPU_MACHINE, "pyarrow": "26.0.1"})
    names = sorted(f.split("-")[0] + "-" + f.split("-")[1] for f in plan["install"])
    # trl, the newest datasets, liger, and the missing dill and multiprocess; the machine's fsspec and xxhash fit
    assert names == ["datasets-5.2.0", "dill-0.4.1", "liger_kernel-0.8.5", "multiprocess-0.70.19", "trl-1.16.0"]
    assert plan["unmet"] == [] and not plan["bitsandbytes"] and plan["liger"]
    assert "bitsandbytes==0.50.2" in plan["missing"]


def test_install_plan_falls_back_for_an_older_pyarrow(wheel_folder):
    plan = gpu_check.plan_install(wheel_folder, {**GPU_MACHINE, "pyarrow": "23.0.0", "dill": "0.4.1"})
    assert "datasets-5.0.1-py3-none-any.whl" in plan["install"]
    assert "datasets-5.2.0-py3-none-any.whl" not in plan["install"]
    # datasets 5.0.1 caps fsspec at 2026.6.0: the machine's 2026.9.0 does not fit, the carried one does
    assert "fsspec-2026.6.0-py3-none-any.whl" in plan["install"]
    assert "dill-0.4.1-py3-none-any.whl" not in plan["install"]  # the machine's fits
    assert any("datasets 5.2.0: not chosen" in d and "pyarrow>=24.0.0" in d for d in plan["decisions"])
    assert plan["unmet"] == []


def test_install_plan_reports_what_no_wheel_fixes(wheel_folder):
    plan = gpu_check.plan_install(wheel_folder, {"pyarrow": "26.0.1"})  # no torch, transformers, accelerate
    assert "trl-1.16.0-py3-none-any.whl" in plan["install"]
    assert any(u.startswith("trl 1.16.0 needs accelerate>=1.10.1") for u in plan["unmet"])
    assert any(u.startswith("liger-kernel 0.8.5 needs torch>=2.1.2") for u in plan["unmet"])


def test_install_unpacks_into_the_site_folder_once(wheel_folder, tmp_path):
    plan = gpu_check.plan_install(wheel_folder, {**GPU_MACHINE, "pyarrow": "26.0.1"})
    site = tmp_path / "site"
    first = gpu_check.install_wheels(plan, wheel_folder, site, 120)
    assert first["status"] == "ok", first
    assert (site / "trl-1.16.0.dist-info" / "METADATA").is_file()
    again = gpu_check.install_wheels(plan, wheel_folder, site, 120)
    assert again["status"] == "ok" and again["summary"].startswith("already installed")


def test_child_environment_puts_the_site_first_and_stays_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = gpu_check.child_env(tmp_path)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), str(BENCHMARKS.parent), "/elsewhere"]
    assert "TRITON_INTERPRET" not in env and env["HF_HUB_OFFLINE"] == "1" and env["HF_DATASETS_OFFLINE"] == "1"


def test_peak_table_and_device_names():
    assert gpu_check.peak_tflops("NVIDIA H200") == 989.4
    assert gpu_check.peak_tflops("NVIDIA H200 NVL") == 835.0
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.peak_tflops("NVIDIA L4") is None and gpu_check.peak_tflops("NVIDIA L4", 121.0) == 121.0
    assert gpu_check.device_slug("NVIDIA H100 80GB HBM3") == "h100_80gb_hbm3"
    assert gpu_check.device_slug(None) == "unknown_gpu"


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["shared_prompt", "train_step"])
def test_gpu_workers_run_on_cpu(worker, tmp_path):
    """The GPU parts' own workers (the others run benchmark scripts the other tests cover) on CPU with the tiny
    Llama (`--device cpu`): a check that their pipelines still work, not a measurement."""
    result = tmp_path / "result.json"
    options = {
        "shared_prompt": ["--models", "tiny", "--n", "2", "--warmup", "1", "--repeats", "1"],
        "train_step": ["--scratch", str(tmp_path), "--trainers", "pro-plain", "dpo-adjacent", "--steps", "1"],
    }[worker]
    command = [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--worker", worker, "--device", "cpu"]
    run = gpu_check.run_budgeted(
        command + ["--result", str(result), "--warmup", "1", *options], 300, env=gpu_check.child_env(None)
    )
    assert run["status"] == "ok", run["output_tail"]
    data = json.loads(result.read_text())
    if worker == "shared_prompt":
        figures, summary = gpu_check.collect_shared_prompt(data)
        assert [(p["model"], p["n"]) for p in figures["pairs"]] == [("tiny", 2)]
        assert figures["pairs"][0]["tokens_ratio"] < 1  # the prompt once per ranking
    else:
        figures, summary = gpu_check.collect_train_step(data)
        assert {k: r["status"] for k, r in data["rows"].items()} == {"pro-plain": "ok", "dpo-adjacent": "ok"}
        assert figures["pro_over_dpo"] > 0 and "time per ranking" in summary
