"""Two CPU processes (gloo) with per-device batch b train the same as one process with batch 2b: same losses at
every step, same held-out metrics, same weights. Launched through `trl-pro pro --cpu --num_processes 2`."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.launching import run_launcher
from safetensors.torch import load_file


REPO = Path(__file__).resolve().parents[2]
COMMON = [
    "--model_name_or_path",
    "trl-pro/tiny-llama",
    "--dataset_name",
    "trl_pro/assets/hh_rlhf",
    "--drop_invalid_rows",
    "--use_cpu",
    "true",
    "--bf16",
    "false",
    "--gradient_checkpointing",
    "false",
    "--max_length",
    "128",
    "--max_prompt_length",
    "96",
    "--learning_rate",
    "1e-3",
    "--max_steps",
    "4",
    "--logging_steps",
    "1",
    "--save_strategy",
    "steps",
    "--save_steps",
    "4",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--seed",
    "0",
    "--no_eval_before_training",
    "--per_device_eval_batch_size",
    "4",
    "--ddp_find_unused_parameters",
    "false",
]
# Both layouts. The shared-prompt layout is compared under SGD: its 4D-mask attention sums in another order than the
# plain layout's, and Adam's g / sqrt(v) turns rounding-level gradient differences on near-zero embedding gradients
# into update differences beyond rtol 1e-4, whereas SGD moves each weight by exactly lr * gradient.
LAYOUTS = {
    "plain": ["--shared_prompt", "false"],
    "shared": ["--shared_prompt", "true", "--optim", "sgd", "--learning_rate", "0.1"],
}


def _train(out: Path, *flags: str) -> subprocess.CompletedProcess:
    return run_launcher(["trl-pro", "pro", *COMMON, "--output_dir", str(out), *flags], timeout=240, cwd=REPO)


def _losses(out: Path) -> list[float]:
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@pytest.mark.multiprocess
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_cpu_processes_match_one_process_with_double_batch(tmp_path, layout):
    two = _train(
        tmp_path / "two", *LAYOUTS[layout], "--cpu", "--num_processes", "2", "--per_device_train_batch_size", "2"
    )
    _train(tmp_path / "one", *LAYOUTS[layout], "--per_device_train_batch_size", "4")

    # really two processes: with a per-device batch of 2, one step covers 4 of the 1196 rows only if there are two
    state = json.loads((tmp_path / "two" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["log_history"][0]["epoch"] == pytest.approx(4 / 1196)
    assert "torchrun" in two.stderr  # the CLI says how it started them

    one_losses, two_losses = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one_losses) == len(two_losses) == 4
    assert len(set(one_losses)) == 4  # the model trains: the loss changes at every step
    assert two_losses == pytest.approx(one_losses, rel=1e-4)

    after_one = json.loads((tmp_path / "one" / "eval_before_after.json").read_text())["after"]
    after_two = json.loads((tmp_path / "two" / "eval_before_after.json").read_text())["after"]
    assert after_two == pytest.approx(after_one, rel=1e-4)

    weights_one = load_file(tmp_path / "one" / "model.safetensors")
    weights_two = load_file(tmp_path / "two" / "model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.multiprocess
def test_self_bootstrapping_on_two_processes(tmp_path, tiny_reward_model_dir):
    """Algorithm 1 with two processes: each samples and scores its own contiguous shard of a part, the re-ranked rows
    are gathered back in the part's order, and both train on the whole part."""
    from trl_pro.assets import load_hh_rlhf_slice
    from trl_pro.pipeline.rankings import dataset_rankings
    from trl_pro.trainers.bootstrapping import ROUND_COMPLETE, round_dir

    rows = load_hh_rlhf_slice("train").select(range(16))
    rows.to_json(tmp_path / "train.jsonl")
    out = tmp_path / "bootstrap"
    _train(
        out,
        "--dataset_name",
        str(tmp_path / "train.jsonl"),
        "--cpu",
        "--num_processes",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        "-1",
        "--num_train_epochs",
        "1",
        "--save_steps",
        "1",
        "--bootstrap_rounds",
        "2",
        "--bootstrap_reward_model_name_or_path",
        str(tiny_reward_model_dir),
        "--bootstrap_reward_prompt_format",
        "plain",
        "--bootstrap_max_completion_length",
        "8",
    )

    for number in (1, 2):
        folder = round_dir(out, number)
        record = json.loads((folder / ROUND_COMPLETE).read_text())["statistics"]
        assert record["processes"] == 2 and record["rows"] == 8 and record["samples_asked"] == 8
        ranked = [json.loads(line) for line in (folder / "rankings.jsonl").read_text().splitlines()]
        expected = dataset_rankings(rows.select(range(8 * number - 8, 8 * number)))
        assert [row["prompt"] for row in ranked] == [row["prompt"] for row in expected]
        # both shards (rows 0-3 from process 0, rows 4-7 from process 1) received policy samples
        for shard in (ranked[:4], ranked[4:]):
            assert any("policy" in row["sources"] for row in shard)
        # 8 rows, 2 processes x batch 2: two optimizer steps per round (the count goes on across rounds), each
        # checkpointed in the round's folder; the schedule made up front matched the steps (or training raised)
        steps = [2 * number - 1, 2 * number]
        assert sorted(p.name for p in folder.glob("checkpoint-*")) == [f"checkpoint-{step}" for step in steps]
    assert (out / "model.safetensors").is_file()


@pytest.mark.multiprocess
def test_list_dpo_two_processes_precomputing_match_one_process_on_the_fly(tmp_path):
    """List DPO: two processes that precompute the reference log-probs, each its own share of the rows, train as one
    process computing the reference at every step with the double batch."""
    train = tmp_path / "train.jsonl"
    from trl_pro.assets import load_hh_rlhf_slice

    load_hh_rlhf_slice("train").select(range(40)).to_json(train)
    flags = [*COMMON, "--dataset_name", str(train), "--shared_prompt", "false"]

    def list_dpo(out, *more):
        return run_launcher(["trl-pro", "list-dpo", *flags, "--output_dir", str(out), *more], timeout=240, cwd=REPO)

    list_dpo(
        tmp_path / "two",
        "--cpu",
        "--num_processes",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--precompute_ref_log_probs",
        "true",
    )
    list_dpo(tmp_path / "one", "--per_device_train_batch_size", "4")

    shards = sorted((tmp_path / "two" / "ref_logps").glob("train.process-*-of-2.jsonl"))
    assert [len(path.read_text().splitlines()) for path in shards] == [20, 20]  # each process did its half
    assert not (tmp_path / "one" / "ref_logps").exists()
    one_losses, two_losses = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one_losses) == 4 and len(set(one_losses)) == 4
    assert two_losses == pytest.approx(one_losses, rel=1e-4)
