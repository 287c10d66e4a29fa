"""Kill and resume, exactly: `trl-pro pro` killed with SIGKILL and resumed with `--resume_from_checkpoint true` ends
with the same weights, optimizer and scheduler state, RNG state and logged metrics (bit for bit) as a run that was
never interrupted.

- one process, killed right after a checkpoint is complete;
- two CPU processes (gloo), the launcher and both ranks killed right after a checkpoint is complete;
- one process killed *while* writing a checkpoint: the resume takes the last complete one and does not trip on the
  partial folder (which transformers' own `get_last_checkpoint` would pick).
- self-bootstrapping killed in its second round, right after a checkpoint of that round is complete.

Runs cross an epoch boundary after the resume point (20 rows, 4 per step: 5 steps per epoch, 8 steps), so the resumed
data order comes from the restored sampler/RNG state, not from the start of an epoch.
"""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.launching import kill_tree, run_launcher
from safetensors.torch import load_file


REPO = Path(__file__).resolve().parents[2]
MAX_STEPS, SAVE_STEPS = 8, 2
COMPLETE = "checkpoint_complete.json"  # trl_pro.trainers.checkpointing.CHECKPOINT_COMPLETE
# Bit for bit needs a deterministic backward: on CPU the shared-prompt layout's sdpa backward (a custom 4D mask) can
# differ from run to run in the last bits, so these runs use the plain layout
COMMON = [
    "--shared_prompt",
    "false",
    "--model_name_or_path",
    "trl-pro/tiny-llama",
    "--dataset_test_split",
    "absent",
    "--drop_invalid_rows",
    "--use_cpu",
    "true",
    "--bf16",
    "false",
    "--gradient_checkpointing",
    "false",
    "--max_length",
    "64",
    "--max_prompt_length",
    "48",
    "--learning_rate",
    "1e-3",
    "--max_steps",
    str(MAX_STEPS),
    "--logging_steps",
    "1",
    "--save_strategy",
    "steps",
    "--save_steps",
    str(SAVE_STEPS),
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--seed",
    "0",
    "--no_eval_before_training",
    "--ddp_find_unused_parameters",
    "false",
]
ONE_PROCESS = ["--per_device_train_batch_size", "4"]
TWO_PROCESSES = ["--cpu", "--num_processes", "2", "--per_device_train_batch_size", "2"]
# Kills the process with SIGKILL in the middle of writing checkpoint-KILL_STEP: after the model and the optimizer,
# before the RNG states and trainer_state.json (transformers' `_save_checkpoint` order)
DIE_WHILE_SAVING = """
import os, signal, sys
from transformers import Trainer
save_rng_state = Trainer._save_rng_state
def dying(self, output_dir):
    if self.state.global_step == int(os.environ["KILL_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return save_rng_state(self, output_dir)
Trainer._save_rng_state = dying
from trl_pro.scripts.pro import cli_main
cli_main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """20 rows of the vendored HH-RLHF slice (all valid), as a local jsonl file."""
    rows = []
    with gzip.open(REPO / "trl_pro" / "assets" / "hh_rlhf" / "train.jsonl.gz", "rt") as file:
        for line in file:
            row = json.loads(line)
            if len(rows) < 20 and len(row["chosen"]) < 600 and len(row["rejected"]) < 600:
                rows.append(row)
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _command(data_file: Path, out: Path, layout: list[str], *flags: str) -> list[str]:
    return ["trl-pro", "pro", *COMMON, *layout, "--dataset_name", str(data_file), "--output_dir", str(out), *flags]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_file) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    run_launcher(_command(data_file, out, ONE_PROCESS), timeout=300, cwd=REPO)
    return out


def _kill_after_checkpoint(command: list[str], out: Path, step: int, timeout: float = 300) -> None:
    """Start `command`, SIGKILL it and every process it started as soon as `out`/checkpoint-`step` is complete."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    marker = out / f"checkpoint-{step}" / COMPLETE
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if process.poll() is not None:
                pytest.fail(f"the run ended before checkpoint-{step}:\n{process.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no checkpoint-{step} in {timeout} s")
            time.sleep(0.002)
    finally:
        kill_tree(process.pid)
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    # killed mid-run: the final checkpoint was never written
    assert not (out / f"checkpoint-{MAX_STEPS}" / COMPLETE).exists()


def _log_history(checkpoint: Path) -> list[dict]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    timing = ("runtime", "per_second")  # wall-clock figures, the only logged values allowed to differ
    return [{k: v for k, v in entry.items() if not any(t in k for t in timing)} for entry in history]


def _assert_same(value, reference, where: str) -> None:
    if isinstance(reference, torch.Tensor):
        assert isinstance(value, torch.Tensor) and value.dtype == reference.dtype, where
        assert torch.equal(value, reference), where
    elif isinstance(reference, dict):
        assert value.keys() == reference.keys(), where
        for key in reference:
            _assert_same(value[key], reference[key], f"{where}.{key}")
    elif isinstance(reference, (list, tuple)):
        assert len(value) == len(reference), where
        for i, (a, b) in enumerate(zip(value, reference)):
            _assert_same(a, b, f"{where}[{i}]")
    else:
        import numpy as np

        if isinstance(reference, np.ndarray):
            assert np.array_equal(value, reference), where
        else:
            assert value == reference, where


def assert_bit_identical(
    resumed: Path, reference: Path, rng_files: list[str], checkpoints: str = ".", final_step: int = MAX_STEPS
) -> None:
    """Final weights, optimizer, scheduler and RNG states and the logged metrics of every step: bit for bit. The
    checkpoints are in the `checkpoints` subfolder of both runs, the last one at `final_step`."""
    final = f"{checkpoints}/checkpoint-{final_step}"
    weights, expected = load_file(resumed / "model.safetensors"), load_file(reference / "model.safetensors")
    _assert_same(weights, expected, "weights")
    for name in ["optimizer.pt", "scheduler.pt", *rng_files]:
        _assert_same(
            torch.load(resumed / final / name, weights_only=False),
            torch.load(reference / final / name, weights_only=False),
            name,
        )
    history = _log_history(resumed / final)
    assert history == _log_history(reference / final)
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == MAX_STEPS and len(set(losses)) == MAX_STEPS  # one log per step, the model trains
    assert json.loads((resumed / final / "ranking_trainer_state.json").read_text()) == json.loads(
        (reference / final / "ranking_trainer_state.json").read_text()
    )


@pytest.mark.slow
def test_one_process_killed_after_a_checkpoint_resumes_bit_identically(tmp_path, data_file, uninterrupted):
    out = tmp_path / "out"
    _kill_after_checkpoint(_command(data_file, out, ONE_PROCESS), out, step=4)
    run_launcher(_command(data_file, out, ONE_PROCESS, "--resume_from_checkpoint", "true"), timeout=300, cwd=REPO)
    assert_bit_identical(out, uninterrupted, ["rng_state.pth"])


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_resumes_from_the_last_complete_one(tmp_path, data_file, uninterrupted):
    from transformers.trainer_utils import get_last_checkpoint

    from trl_pro.trainers.checkpointing import last_complete_checkpoint

    out = tmp_path / "out"
    env = {**os.environ, "KILL_STEP": "6"}
    command = [sys.executable, "-c", DIE_WHILE_SAVING, *_command(data_file, out, ONE_PROCESS)[2:]]
    killed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    partial = out / "checkpoint-6"
    assert (partial / "model.safetensors").exists() and (partial / "optimizer.pt").exists()
    assert not (partial / "trainer_state.json").exists() and not (partial / COMPLETE).exists()
    # transformers alone would resume from the partial folder (and fail: it has no trainer_state.json)
    assert get_last_checkpoint(str(out)) == str(partial)
    assert last_complete_checkpoint(out) == str(out / "checkpoint-4")

    resumed = run_launcher(
        _command(data_file, out, ONE_PROCESS, "--resume_from_checkpoint", "true"), timeout=300, cwd=REPO
    )
    assert "Traceback" not in resumed.stderr
    assert (partial / COMPLETE).exists()  # rewritten in full by the resumed run
    assert_bit_identical(out, uninterrupted, ["rng_state.pth"])


def test_resume_without_a_complete_checkpoint_is_a_one_line_error(tmp_path, data_file):
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)  # a partial checkpoint only
    command = _command(data_file, out, ONE_PROCESS, "--resume_from_checkpoint", "true")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "trl-pro pro: error: --resume_from_checkpoint true: no complete checkpoint in" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.multiprocess
def test_two_processes_killed_after_a_checkpoint_resume_bit_identically(tmp_path, data_file):
    reference = tmp_path / "reference"
    run_launcher(_command(data_file, reference, TWO_PROCESSES), timeout=300, cwd=REPO)
    out = tmp_path / "out"
    _kill_after_checkpoint(_command(data_file, out, TWO_PROCESSES), out, step=2)
    run_launcher(_command(data_file, out, TWO_PROCESSES, "--resume_from_checkpoint", "true"), timeout=300, cwd=REPO)
    # really two processes: 20 rows at 2 per process and step make 5 steps per epoch
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"][0]["epoch"] == 0.2
    assert_bit_identical(out, reference, ["rng_state_0.pth", "rng_state_1.pth"])


@pytest.mark.slow
def test_self_bootstrapping_killed_mid_round_resumes_bit_identically(tmp_path, data_file, tiny_reward_model_dir):
    """Two rounds of 10 rows, each trained for 8 steps (the count goes on: round 2 is steps 9-16); killed once round 2
    has written its second checkpoint, checkpoint-10, resumed from it (on the round's saved rankings): the same as an
    uninterrupted run, bit for bit."""
    bootstrap = [
        "--bootstrap_rounds",
        "2",
        "--bootstrap_reward_model_name_or_path",
        str(tiny_reward_model_dir),
        "--bootstrap_reward_prompt_format",
        "plain",
        "--bootstrap_max_completion_length",
        "8",
    ]
    reference = tmp_path / "reference"
    run_launcher(_command(data_file, reference, ONE_PROCESS, *bootstrap), timeout=300, cwd=REPO)
    out = tmp_path / "out"
    _kill_after_checkpoint(_command(data_file, out, ONE_PROCESS, *bootstrap), out / "bootstrap-round-2", step=10)
    assert (out / "bootstrap-round-1" / "round_complete.json").exists()
    written = (out / "bootstrap-round-2" / "checkpoint-10" / COMPLETE).stat().st_mtime_ns
    resumed = run_launcher(
        _command(data_file, out, ONE_PROCESS, *bootstrap, "--resume_from_checkpoint", "true"), timeout=300, cwd=REPO
    )
    assert "Traceback" not in resumed.stderr
    # resumed from round 2's checkpoint-10, not by redoing round 2 from its start (which would rewrite it)
    assert (out / "bootstrap-round-2" / "checkpoint-10" / COMPLETE).stat().st_mtime_ns == written
    round_2, reference_round_2 = out / "bootstrap-round-2", reference / "bootstrap-round-2"
    assert (round_2 / "rankings.jsonl").read_text() == (reference_round_2 / "rankings.jsonl").read_text()

    def statistics(folder: Path) -> dict:  # without the wall-clock figures
        record = json.loads((folder / "round_complete.json").read_text())["statistics"]
        return {key: value for key, value in record.items() if "seconds" not in key}

    assert statistics(round_2) == statistics(reference_round_2)
    assert_bit_identical(out, reference, ["rng_state.pth"], checkpoints="bootstrap-round-2", final_step=2 * MAX_STEPS)
