"""`trl-pro compare` treats its methods alike and no method can stall it (issue 18): PPO refuses, in seconds, fewer
train prompts than one rollout batch (TRL 1.12 would wait for a full batch forever); `--method_timeout` ends a PPO run
that takes too long, with its whole process tree, and the other methods still train; every method that has a
before-training evaluation gets the same `--eval_before_training`."""

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.baseline_data import write_ranked_file

from trl_pro.scripts import compare


ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "trl_pro" / "scripts" / "ppo.py"


@pytest.fixture(scope="module")
def ppo_python():
    """The PPO environment (created by tools/install.sh ppo, or reused: the script is idempotent)."""
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "install.sh"), "ppo"], cwd=ROOT, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return ROOT / os.environ.get("PPO_VENV", ".venv-ppo") / "bin" / "python"


def _env():
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # nothing from trl-pro's TRL 1.16
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1", OMP_NUM_THREADS="2")
    return env


def _compare_args(tmp_path, ranked, reward, ppo_python, **changes):
    return compare.CompareArguments(
        dataset_name=str(ranked),
        model_name_or_path="trl-pro/tiny-llama",
        reward_model_name_or_path=str(reward),
        output_dir=str(tmp_path / "compare"),
        test_size=0.25,
        max_steps=1,
        learning_rate=1e-3,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_length=64,
        max_prompt_length=32,
        use_cpu=True,
        ppo_python=str(ppo_python),
        overrides={"all": {"gradient_checkpointing": False, "disable_tqdm": True, "dtype": "float32"}},
        **changes,
    )


def test_ppo_refuses_fewer_prompts_than_one_rollout_batch(
    ppo_python, tiny_policy_dir, tiny_reward_model_dir, tmp_path
):
    from trl_pro.scripts import prepare_data

    ranked = write_ranked_file(tmp_path / "ranked.jsonl", num_rows=4)
    prepare_data.main(
        [
            "--source",
            "ranked",
            "--dataset_name",
            str(ranked),
            "--output_dir",
            str(tmp_path / "views"),
            "--test_size",
            "0.25",
        ]
    )
    flags = [
        "--model_name_or_path",
        str(tiny_policy_dir),
        "--reward_model_path",
        str(tiny_reward_model_dir),
        "--dataset_name",
        str(tmp_path / "views" / "prompts"),
        "--output_dir",
        str(tmp_path / "out"),
        "--dtype",
        "float32",
        "--bf16",
        "false",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        "--response_length",
        "8",
        # 3 train prompts, a rollout batch of 2 x 2 = 4
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "2",
    ]
    start = time.perf_counter()
    # the time-out guards against the hang this checks for (the script's imports alone take a few seconds)
    result = subprocess.run(
        [str(ppo_python), str(SCRIPT), *flags], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("trl_pro/scripts/ppo.py: error: 3 train prompts"), lines[-1]
    assert "(per_device_train_batch_size 2 x gradient_accumulation_steps 2 x 1 process = 4)" in lines[-1]
    assert "more prompts (at least 4)" in lines[-1] and "--gradient_accumulation_steps" in lines[-1]
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "out" / "ppo_summary.json").exists()


def test_a_ppo_run_past_method_timeout_is_reported_and_the_others_train(ppo_python, tmp_path, capsys):
    """PPO runs first here and cannot finish in 2 s (its imports take longer); best-of-n trains after it."""
    ranked = write_ranked_file(tmp_path / "ranked.jsonl", num_rows=8)
    args = _compare_args(
        tmp_path,
        ranked,
        tmp_path / "no_reward_model_needed",
        ppo_python,
        methods=["ppo", "best_of_n"],
        method_timeout=2,
    )
    start = time.perf_counter()
    assert compare.main(args) == 1  # a method that did not finish fails the command
    printed = capsys.readouterr().out
    manifest = json.loads((Path(args.output_dir) / compare.MANIFEST).read_text())
    runs = {run["name"]: run for run in manifest["runs"]}
    assert "timed out after 2 s" in runs["ppo"]["status"], runs["ppo"]["status"]
    assert runs["best_of_n"]["status"] == "trained" and runs["best_of_n"]["steps"] == 1
    assert {system["name"] for system in manifest["systems"]} == {"base", "best_of_n"}
    table = {line.split()[0]: line for line in printed.splitlines() if line.split()[:1] in (["ppo"], ["best_of_n"])}
    assert "timed out after 2 s" in table["ppo"] and " trained " in table["best_of_n"]
    assert time.perf_counter() - start < 120


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, only not reaped yet


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_method_timeout_kills_the_whole_ppo_process_tree(tmp_path):
    """A stand-in for the PPO python that never finishes and has a child of its own (as a dataset map with
    `dataset_num_proc` or a launcher would): at the time-out both are gone."""
    pid_file = tmp_path / "child.pid"
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {pid_file}\nwait\n")
    fake_python.chmod(0o755)
    ranked = write_ranked_file(tmp_path / "ranked.jsonl", num_rows=8)
    args = _compare_args(tmp_path, ranked, tmp_path / "reward", fake_python, methods=["ppo"], method_timeout=1)
    start = time.perf_counter()
    assert compare.main(args) == 1
    assert time.perf_counter() - start < 30
    runs = {run["name"]: run for run in json.loads((Path(args.output_dir) / compare.MANIFEST).read_text())["runs"]}
    assert "timed out after 1 s" in runs["ppo"]["status"], runs["ppo"]["status"]
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the PPO run's child process outlived the time-out"


def test_method_timeout_is_a_flag_with_no_limit_by_default():
    (args,) = compare.make_parser().parse_args_and_config(["--dataset_name", "d", "--model_name_or_path", "m"])
    assert args.method_timeout is None
    (args,) = compare.make_parser().parse_args_and_config(
        ["--dataset_name", "d", "--model_name_or_path", "m", "--method_timeout", "3600"]
    )
    assert args.method_timeout == 3600


def test_every_method_gets_the_same_eval_before_training(tmp_path):
    """The flags compare passes, parsed by each method's own parser as `run_in_process` parses them: every method
    that has a before-training evaluation (trl-pro's ranking scripts) gets the same setting."""
    args = compare.CompareArguments(dataset_name="ranked.jsonl", model_name_or_path="base", use_cpu=True)
    settings = {}
    for name, method in compare.METHODS.items():
        if method.script == "ppo":  # TRL 1.12's PPOConfig: no before-training evaluation
            continue
        flags = compare.method_flags(name, args, "base", tmp_path / "data", tmp_path / "out", {})
        parser = importlib.import_module(method.script).make_parser()
        known = {option for action in parser._actions for option in action.option_strings}
        if "--eval_before_training" not in known:
            continue
        parsed = parser.parse_args_and_config(compare._argv(flags, known))
        settings[name] = next(group.eval_before_training for group in parsed if hasattr(group, "eval_before_training"))
    assert {"pro", "rrhf"} <= set(settings)
    assert len(set(settings.values())) == 1, settings
    # none evaluates before training: the other methods have no such evaluation (trl-pro eval compares them all)
    assert set(settings.values()) == {False}
