"""Ctrl-C: a command stopped by SIGINT (sent to its whole process group, as a terminal does) prints one line saying
what is kept and how a re-run resumes, no traceback from the `trl-pro` launcher nor from the script it launched, and
exits with status 130. TRL_PRO_DEBUG=1 keeps the tracebacks."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers.launching import kill_tree

from trl_pro.cli.errors import INTERRUPTED_STATUS, interrupted_message, interrupted_note


REPO = Path(__file__).resolve().parents[2]
HH_TRAIN = REPO / "trl_pro" / "assets" / "hh_rlhf" / "train.jsonl.gz"
START_TIMEOUT = 120  # s until the command has done some work (two imports of torch and TRL on a busy machine)
STOP_TIMEOUT = 30  # s from Ctrl-C to the exit


def _interrupt(command: list[str], started, tmp_path: Path, env: dict | None = None) -> tuple[int, str]:
    """Run `command` in a process group of its own, send SIGINT to the group once `started()` is true, and return
    (exit status, stderr)."""
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            # Ctrl-C as in a terminal's foreground job: a test session started in the background (`pytest &`)
            # inherits an ignored SIGINT, and an ignored signal stays ignored across exec
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not started():
            if process.poll() is not None:
                pytest.fail(
                    f"`{' '.join(command)}` ended (status {process.returncode}) before it was interrupted:\n"
                    f"{log.read_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"`{' '.join(command)}` did no work in {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        try:
            status = process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_TIMEOUT} s after Ctrl-C:\n{log.read_text()[-3000:]}")
    finally:
        kill_tree(process.pid)
    return status, log.read_text()


def _generate(tmp_path: Path) -> tuple[list[str], Path]:
    output = tmp_path / "out.jsonl"
    # 150 shards of 8 rows, about a second each here: Ctrl-C comes long before the end
    command = [
        "trl-pro",
        "generate",
        "--dataset_name",
        str(HH_TRAIN),
        "--model_name_or_path",
        "trl-pro/tiny-llama",
        "--num_generations",
        "2",
        "--max_completion_length",
        "16",
        "--shard_size",
        "8",
        "--drop_invalid_rows",
        "true",
        "--output_path",
        str(output),
    ]
    return command, Path(f"{output}.parts")


def _finished_shards(parts: Path) -> list[Path]:
    return sorted(parts.glob("shard-*.jsonl"))


def test_ctrl_c_prints_one_line_and_keeps_the_finished_shards(tmp_path):
    command, parts = _generate(tmp_path)
    status, stderr = _interrupt(command, lambda: bool(_finished_shards(parts)), tmp_path)
    assert status == INTERRUPTED_STATUS, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert stderr.splitlines()[-1] == (
        f"trl-pro generate: interrupted; finished shards in {parts} are kept: re-run the same command to resume"
    ), stderr[-3000:]
    assert _finished_shards(parts)  # what the message says is kept is there


def test_ctrl_c_of_a_training_run_names_its_checkpoints(tmp_path):
    output_dir = tmp_path / "pro"
    command = [
        "trl-pro",
        "pro",
        "--config",
        str(REPO / "recipes" / "quickstart.yaml"),
        "--output_dir",
        str(output_dir),
        "--eval_before_training",
        "false",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--disable_tqdm",
        "true",
    ]

    def checkpointed():
        from trl_pro.trainers.checkpointing import last_complete_checkpoint

        return last_complete_checkpoint(output_dir) is not None

    status, stderr = _interrupt(command, checkpointed, tmp_path)
    assert status == INTERRUPTED_STATUS, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert stderr.splitlines()[-1] == (
        f"trl-pro pro: interrupted; checkpoints in {output_dir} are kept: re-run with "
        "--resume_from_checkpoint true to resume"
    ), stderr[-3000:]


def _alone(tmp_path: Path) -> tuple[list[str], Path]:
    """`python -m trl_pro.scripts.generate`: the script without the launcher."""
    command, parts = _generate(tmp_path)
    return [sys.executable, "-m", "trl_pro.scripts.generate", *command[2:]], parts


def test_a_script_run_alone_prints_the_line_itself(tmp_path):
    command, parts = _alone(tmp_path)
    status, stderr = _interrupt(command, lambda: bool(_finished_shards(parts)), tmp_path)
    assert status != 0, stderr[-3000:]  # Python's own for a Ctrl-C that stops `python -m`: 1
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.splitlines()[-1] == (
        f"trl-pro generate: interrupted; finished shards in {parts} are kept: re-run the same command to resume"
    ), stderr[-3000:]


def test_trl_pro_debug_keeps_the_traceback(tmp_path):
    command, parts = _alone(tmp_path)
    status, stderr = _interrupt(command, lambda: bool(_finished_shards(parts)), tmp_path, env={"TRL_PRO_DEBUG": "1"})
    assert status != 0 and "Traceback" in stderr and stderr.splitlines()[-1] == "KeyboardInterrupt", stderr[-3000:]
    assert "interrupted;" not in stderr


def test_what_each_command_says_it_kept(tmp_path):
    assert interrupted_message("trl-pro eval", interrupted_note("eval", [SimpleNamespace(output_dir="out")])) == (
        "trl-pro eval: interrupted; finished batches in out/cache are kept: re-run the same command to resume"
    )
    assert interrupted_note("judge", [SimpleNamespace(output_dir="j")]) == (
        "the judgments made in j/judgments.jsonl are kept: re-run the same command to resume"
    )
    assert interrupted_note("rank", None) == "finished shards are kept: re-run the same command to resume"
    assert interrupted_note("no-such-command", None) is None

    from trl_pro.trainers.pro_config import PROConfig

    def config(**kwargs):
        return PROConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], **kwargs)

    assert interrupted_note("pro", [config(save_strategy="no")]) == (
        "no checkpoint was kept (save_strategy is no): re-run the same command to start over"
    )
    assert interrupted_note("pro", [config(save_strategy="steps")]) == (
        f"no checkpoint was saved yet in {tmp_path}: re-run the same command to start over"
    )
    # a checkpoint cut short by the interrupt (no completion marker) is no checkpoint to resume from
    (tmp_path / "checkpoint-4").mkdir()
    assert "no checkpoint was saved yet" in interrupted_note("pro", [config(save_strategy="steps")])
    # TRL's own trainers (coh, reward) take the checkpoint's path
    assert interrupted_note("coh", [config(save_strategy="steps")]) == (
        f"checkpoints in {tmp_path} are kept: re-run with --resume_from_checkpoint {tmp_path / 'checkpoint-4'} to "
        "resume"
    )
