"""For tests that run a launcher (trl-pro, accelerate, torchrun) which starts processes of its own."""

import os
import signal
import subprocess

import pytest


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as a lost machine would. torchrun starts each rank in a
    session of its own, so killing the launcher's process group alone would leave the ranks running."""
    import psutil

    try:
        parent = psutil.Process(pid)
        processes = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def run_launcher(command: list[str], timeout: float, cwd=None) -> subprocess.CompletedProcess:
    """Run `command` to completion and assert it succeeded; fail the test with the end of its stderr otherwise.

    The launcher gets its own session, so that on a timeout it and every process it started are stopped (a rank
    waiting for a peer would otherwise outlive the test). OMP_NUM_THREADS is left for the launcher to choose.
    """
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        stdout, stderr = process.communicate()
        pytest.fail(f"`{' '.join(command)}` did not finish in {timeout} s:\n{stderr[-3000:]}")
    assert process.returncode == 0, stderr[-3000:]
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
