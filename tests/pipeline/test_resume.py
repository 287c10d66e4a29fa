"""Kill and resume, exactly, for the data commands: `trl-pro generate`, `trl-pro rank` and
`trl-pro eval` killed with SIGKILL in the middle of their work and run again with the same command line end with the
same output, byte for byte, as a run that was never interrupted: same rows, same order, no duplicates, and the final
file never half-written at any point.

Each test starts the uninterrupted reference run and the run to be killed side by side (two processes on a 2-core
machine), watches the disk and kills the second one (its whole process tree, as a lost machine would) as soon as some
but not all of its work is on disk: a finished shard of `<output>.parts/` for `generate` and `rank`, a generated
batch in `<output_dir>/cache/<system>.jsonl` for `eval`. If it finished first, the test fails rather than passing
without having killed anything. The rerun is watched too: the final file, from the moment it appears, is complete.

The processes run the script `trl-pro <command>` launches through `accelerate launch` (`python -m
trl_pro.scripts.<command>`, same arguments): the launcher adds several seconds per start and nothing to what is
written; the kill of a launcher and its children is covered by tests/test_resume.py. One OpenMP thread each, so that
two runs side by side do not fight over a small machine's cores.
"""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.launching import kill_tree


REPO = Path(__file__).resolve().parents[2]
HH_TRAIN = str(REPO / "trl_pro" / "assets" / "hh_rlhf" / "train.jsonl.gz")
TIMEOUT = 300
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRL_PRO_DEBUG": "1",
}


@pytest.fixture(scope="module")
def random_reward_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama sequence classifier (one score, random weights from seed 0) and the tiny tokenizer. Resuming is
    about which candidates are scored when, not about good scores, so the trained session reward model (whose
    training would dominate this file's runtime) is not needed."""
    import torch
    from transformers import LlamaForSequenceClassification

    from trl_pro.assets import load_tiny_tokenizer, tiny_llama_config

    tokenizer = load_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(tiny_llama_config(len(tokenizer), num_labels=1)).to(torch.float32)
    path = tmp_path_factory.mktemp("random_reward_model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Running, killing and watching


class Run:
    """`python -m trl_pro.scripts.<command> ARGV` started in a session of its own, its output in a log file."""

    def __init__(self, command: str, argv: list[str], log: Path):
        self.log = log
        self.handle = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"trl_pro.scripts.{command}", *argv],
            cwd=REPO,
            env=ENV,
            stdin=subprocess.DEVNULL,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.deadline = time.monotonic() + TIMEOUT

    def tail(self) -> str:
        self.handle.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            kill_tree(self.process.pid)
            self.process.wait()
            pytest.fail(f"{self.process.args} still running after {TIMEOUT} s:\n{self.tail()}")


def wait_success(*runs: Run, watch: Callable[[], None] = lambda: None) -> list[str]:
    """Wait for `runs` to end, calling `watch` every few ms meanwhile; each must succeed. Returns their logs."""
    while any(run.process.poll() is None for run in runs):
        watch()
        for run in runs:
            run.check_time()
        time.sleep(0.005)
    watch()
    logs = []
    for run in runs:
        run.handle.close()
        assert run.process.returncode == 0, f"{run.process.args} failed:\n{run.tail()}"
        logs.append(run.log.read_text(errors="replace"))
    return logs


def kill_midway(run: Run, started: Callable[[], bool], finished: Callable[[], bool]) -> None:
    """SIGKILL `run` as soon as `started()` (some work is on disk); fail if it ended first or if `finished()` (its
    final output is there) before the kill."""
    try:
        while True:
            ended = run.process.poll() is not None  # looked at before the files, so a finished run is caught
            if finished():
                pytest.fail(f"the final output appeared before the kill: nothing was interrupted\n{run.tail()}")
            if started():
                break
            if ended:
                pytest.fail(
                    f"the run ended (status {run.process.returncode}) before any of its work was on disk:\n"
                    f"{run.tail()}"
                )
            run.check_time()
            time.sleep(0.002)
    finally:
        kill_tree(run.process.pid)
        run.process.wait()
        run.handle.close()
    assert run.process.returncode == -signal.SIGKILL, (
        f"the run ended by itself (status {run.process.returncode}) before the kill: make its work longer\n"
        f"{run.tail()}"
    )
    assert not finished(), "the final output appeared while the run was being killed: make its work longer"


class FinalFileWatch:
    """Reads each of `paths` the first time it is seen during a run (`first`): from the moment a final file exists it
    must be the complete file."""

    def __init__(self, paths: list[Path], read: Callable[[Path], bytes]):
        self.paths, self.read, self.first = paths, read, {}

    def __call__(self) -> None:
        for path in self.paths:
            if path not in self.first and path.exists():
                self.first[path] = self.read(path)


def _read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def _read_text_of(path: Path) -> bytes:
    """The decompressed content (a .gz header holds a time stamp)."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as handle:
            return handle.read()
    return path.read_bytes()


def _jsonl(content: bytes) -> list[dict]:
    return [json.loads(line) for line in content.decode().splitlines() if line.strip()]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".parts"))


# ---------------------------------------------------------------------------------------------------------------------
# generate and rank: shards


def _check_sharded_resume(
    command: str, argv: list[str], suffix: str, num_rows: int, shard_size: int, tmp_path: Path
) -> list[dict]:
    """Reference run and killed run side by side, then the rerun of the killed one; returns the final rows."""
    num_shards = (num_rows + shard_size - 1) // shard_size
    reference_path, output = tmp_path / "reference" / f"out{suffix}", tmp_path / "resumed" / f"out{suffix}"
    reference_path.parent.mkdir()
    output.parent.mkdir()
    parts = Path(str(output) + ".parts")
    common = [*argv, "--shard_size", str(shard_size), "--progress", "false"]
    reference = Run(command, [*common, "--output_path", str(reference_path)], tmp_path / "reference.log")
    killed = Run(command, [*common, "--output_path", str(output)], tmp_path / "killed.log")

    def done_shards() -> list[str]:
        return sorted(p.name for p in parts.glob("shard-*.jsonl")) if parts.is_dir() else []

    kill_midway(killed, started=lambda: bool(done_shards()), finished=output.exists)
    written = done_shards()
    # shards are done in order and each is complete or absent: some but not all of them
    assert written == [f"shard-{i:05d}.jsonl" for i in range(len(written))], written
    assert 0 < len(written) < num_shards, f"{len(written)} of {num_shards} shards at the kill"
    for name in written:
        assert len(_jsonl((parts / name).read_bytes())) == shard_size

    # the rerun starts at once; the reference, started with the killed run, is finishing meanwhile
    watch = FinalFileWatch([output], _read_text_of)
    resumed = Run(command, [*common, "--output_path", str(output)], tmp_path / "resumed.log")
    reference_log, log = wait_success(reference, resumed, watch=watch)
    assert "resuming" not in reference_log
    assert f"resuming: {len(written)} of {num_shards} shards already done" in log, log[-3000:]
    expected = _read_text_of(reference_path)
    assert len(_jsonl(expected)) == num_rows
    assert watch.first[output] == expected, "the final file was incomplete when it appeared"
    assert _read_text_of(output) == expected  # same rows, same order, nothing twice
    assert _leftovers(output.parent) == [], "the parts folder and temporary files are removed"
    return _jsonl(expected)


@pytest.mark.slow
def test_generate_killed_midway_resumes_to_the_uninterrupted_output(tiny_policy_dir, tmp_path):
    # Sampled (seed + shard index per shard, so that the rerun samples what the first run would have), 2 candidates of
    # 64 tokens for each of 16 prompts, one prompt per generate call, 2 prompts per shard: 8 shards of about 0.15 s
    # (idle machine) after a start-up of several seconds, so the kill lands with about 1 s of work left
    num_rows, shard_size = 16, 2
    rows = _check_sharded_resume(
        "generate",
        [
            "--dataset_name",
            HH_TRAIN,
            "--max_rows",
            str(num_rows),
            "--model_name_or_path",
            str(tiny_policy_dir),
            "--dtype",
            "float32",
            "--source_name",
            "tiny",
            "--num_generations",
            "2",
            "--do_sample",
            "true",
            "--seed",
            "3",
            "--max_completion_length",
            "64",
            "--generation_batch_size",
            "1",
        ],
        ".jsonl",
        num_rows,
        shard_size,
        tmp_path,
    )
    from trl_pro.pipeline.rankings import dataset_rankings

    with gzip.open(HH_TRAIN, "rt") as handle:
        inputs = dataset_rankings([json.loads(next(handle)) for _ in range(num_rows)])
    # one row per input row, in input order: the dataset's two candidates, then the generated ones
    assert [(row["prompt"], row["completions"][:2]) for row in rows] == [
        (r["prompt"], r["completions"]) for r in inputs
    ]
    assert all(row["sources"][:2] == ["dataset", "dataset"] and set(row["sources"][2:]) <= {"tiny"} for row in rows)
    assert sum(len(row["sources"]) - 2 for row in rows) > 0


@pytest.mark.slow
def test_rank_killed_midway_resumes_to_the_uninterrupted_output(random_reward_model_dir, tmp_path):
    # 240 HH-RLHF pairs (the slice's first 80, three times; row 86 is invalid) scored one candidate at a time, 8 rows
    # per shard: 30 shards of about 0.04 s (idle machine), so the kill lands with about 1 s of work left
    with gzip.open(HH_TRAIN, "rt") as handle:
        pairs = [next(handle) for _ in range(80)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(pairs * 3))
    num_rows, shard_size = 240, 8
    rows = _check_sharded_resume(
        "rank",
        [
            "--dataset_name",
            str(data),
            "--reward_model_name_or_path",
            str(random_reward_model_dir),
            "--reward_prompt_format",
            "plain",
            "--reward_batch_size",
            "1",
        ],
        ".jsonl.gz",
        num_rows,
        shard_size,
        tmp_path,
    )
    assert all(row["scores"] == sorted(row["scores"], reverse=True) and len(row["completions"]) == 2 for row in rows)
    assert rows[:80] == rows[80:160] == rows[160:]  # the same pair gives the same ranking in any shard


# ---------------------------------------------------------------------------------------------------------------------
# eval: the generation cache


@pytest.mark.slow
def test_eval_killed_midway_resumes_to_the_uninterrupted_results(tiny_policy_dir, random_reward_model_dir, tmp_path):
    # 16 test prompts generated 2 at a time (greedy, 64 new tokens): 8 cached batches of about 0.15 s (idle machine),
    # so the kill lands with about 1 s of generation left; then rewards and results
    argv = [
        "--system",
        f"tiny={tiny_policy_dir}",
        "--max_samples",
        "16",
        "--batch_size",
        "2",
        "--max_completion_length",
        "64",
        "--reward_model_name_or_path",
        str(random_reward_model_dir),
        "--reward_prompt_format",
        "plain",
        "--reward_batch_size",
        "4",
    ]
    reference_dir, output_dir = tmp_path / "reference", tmp_path / "resumed"
    reference = Run("eval", [*argv, "--output_dir", str(reference_dir)], tmp_path / "reference.log")
    killed = Run("eval", [*argv, "--output_dir", str(output_dir)], tmp_path / "killed.log")
    cache = output_dir / "cache" / "tiny.jsonl"
    finals = ["results.json", "results.md", "responses/tiny.jsonl"]

    def cached_lines() -> int:  # complete lines only: the last one may be cut short by the kill
        return cache.read_bytes().count(b"\n") if cache.exists() else 0

    kill_midway(
        killed,
        started=lambda: cached_lines() > 0,
        finished=lambda: any((output_dir / name).exists() for name in finals),
    )
    at_kill = cached_lines()
    assert not list(output_dir.glob("cache/*.rewards.jsonl"))  # killed while generating

    watch = FinalFileWatch([output_dir / name for name in finals], _read_bytes)
    resumed = Run("eval", [*argv, "--output_dir", str(output_dir)], tmp_path / "resumed.log")
    wait_success(reference, resumed, watch=watch)
    prompts = [row["prompt"] for row in _jsonl((reference_dir / "responses" / "tiny.jsonl").read_bytes())]
    assert len(prompts) == len(set(prompts)) > 8
    assert 0 < at_kill < len(prompts), f"{at_kill} of {len(prompts)} responses cached at the kill"
    for name in finals:
        expected = (reference_dir / name).read_bytes()
        assert watch.first[output_dir / name] == expected, f"{name} was incomplete when it appeared"
        assert (output_dir / name).read_bytes() == expected, f"{name} differs from the uninterrupted run's"
    assert (output_dir / "results.png").is_file()
    # the cache holds every prompt once: the batches done before the kill were not generated again
    for name in ["tiny.jsonl", *(p.name for p in (reference_dir / "cache").glob("tiny.rewards.jsonl"))]:
        resumed_rows = _jsonl((output_dir / "cache" / name).read_bytes())
        assert sorted(row["prompt"] for row in resumed_rows) == sorted(prompts), name
        assert sorted(map(json.dumps, resumed_rows)) == sorted(
            map(json.dumps, _jsonl((reference_dir / "cache" / name).read_bytes()))
        ), name
