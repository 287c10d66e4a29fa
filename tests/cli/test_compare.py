"""`trl-pro compare`: PRO and every baseline trained from one ranked dataset and one base model, a few steps each on
CPU, each system saved under one folder and listed in comparison.json; a second run keeps what is finished."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers.baseline_data import write_ranked_file

from trl_pro.scripts import compare


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ppo_python():
    """The PPO environment (created by tools/install.sh ppo, or reused: the script is idempotent)."""
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "install.sh"), "ppo"], cwd=ROOT, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return ROOT / os.environ.get("PPO_VENV", ".venv-ppo") / "bin" / "python"


def _args(tmp_path, ranked, reward, ppo_python, **changes):
    args = compare.CompareArguments(
        dataset_name=str(ranked),
        model_name_or_path="trl-pro/tiny-llama",
        reward_model_name_or_path=str(reward),
        output_dir=str(tmp_path / "compare"),
        test_size=0.25,
        max_steps=2,
        learning_rate=1e-3,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_length=128,
        max_prompt_length=64,
        use_cpu=True,
        ppo_python=str(ppo_python),
        overrides={
            "all": {"gradient_checkpointing": False, "disable_tqdm": True, "dtype": "float32"},
            "rloo": {"num_generations": 2},
            "ppo": {"num_ppo_epochs": 1},
        },
    )
    for key, value in changes.items():
        setattr(args, key, value)
    return args


@pytest.mark.slow
def test_compare_trains_every_method_on_one_dataset(tmp_path, tiny_reward_model_dir, ppo_python, capsys):
    import torch
    from safetensors.torch import load_file

    ranked = write_ranked_file(tmp_path / "ranked.jsonl", num_rows=12)
    args = _args(tmp_path, ranked, tiny_reward_model_dir, ppo_python)
    assert compare.main(args) == 0
    printed = capsys.readouterr().out
    out = Path(args.output_dir)
    manifest = json.loads((out / compare.MANIFEST).read_text())
    runs = {run["name"]: run for run in manifest["runs"]}
    trained = [name for name, run in runs.items() if run["status"] == "trained"]
    expected = [name for name in compare.METHODS if compare.skip_reason(name, args) is None]
    assert {"pro", "list_dpo", "lipo", "best_of_n", "coh", "dpo", "rloo", "ppo"} <= set(expected)
    assert trained == expected
    for name in expected:
        assert runs[name]["steps"] == 2, name
        assert f"\n{name:<10} trained" in printed  # the table
        assert str(runs[name]["path"]) in printed
    # one base model for every system: the built-in tiny Llama, saved once
    base = out / "base_model"
    assert manifest["base_model"] == str(base) and (base / "model.safetensors").is_file()
    base_weights = load_file(str(base / "model.safetensors"))
    for name in expected:
        weights = load_file(str(out / name / "model.safetensors"))
        moved = [key for key in base_weights if not torch.equal(weights[key], base_weights[key])]
        assert moved, f"{name} did not train"
    # the manifest trl-pro eval reads: every trained system plus the base model, CoH with its positive phrase
    systems = {system["name"]: system for system in manifest["systems"]}
    assert set(systems) == {"base", *expected} and systems["base"]["path"] == "base_model"
    assert systems["coh"]["prompt_suffix"] == " A helpful answer:"
    assert all(systems[name]["prompt_suffix"] == "" for name in systems if name != "coh")
    # list DPO and LiPO-λ: the ranked view, each with its loss (the flags its run got, kept in its key)
    for name, loss_type in (("list_dpo", "plackett_luce"), ("lipo", "lipo_lambda")):
        trained_args = torch.load(out / name / "training_args.bin", weights_only=False)
        assert type(trained_args).__name__ == "ListDPOConfig" and trained_args.loss_type == loss_type, name
        assert systems[name]["path"] == name
    assert all((out / systems[name]["path"]).is_dir() for name in expected)
    # ... as trl-pro eval reads it
    from trl_pro.evaluation.systems import read_comparison_folder

    read = {system.name: system for system in read_comparison_folder(out)}
    assert set(read) == set(systems) and read["coh"].prompt_suffix == " A helpful answer:"
    assert all(Path(system.path).is_dir() for system in read.values())
    # same data for all: the views come from the one ranked file
    views = json.loads((out / "data" / "views.json").read_text())
    assert views["rows"]["train"] + views["rows"]["test"] == 12

    # run again: everything is kept, nothing trains; without a reward model RLOO/PPO would be skipped
    assert compare.main(args) == 0
    again = json.loads((out / compare.MANIFEST).read_text())
    assert [run["status"] for run in again["runs"] if run["name"] in expected] == ["kept"] * len(expected)
    fresh = _args(
        tmp_path,
        ranked,
        tiny_reward_model_dir,
        ppo_python,
        output_dir=str(tmp_path / "no_reward"),
        reward_model_name_or_path=None,
        methods=["rloo", "ppo"],
    )
    assert compare.main(fresh) == 0
    statuses = [run["status"] for run in json.loads((tmp_path / "no_reward" / compare.MANIFEST).read_text())["runs"]]
    assert statuses == ["kept", "skipped: no --reward_model_name_or_path", "skipped: no --reward_model_name_or_path"]


def test_compare_rejects_unknown_methods_and_overrides(tmp_path, capsys):
    args = compare.CompareArguments(dataset_name="x.jsonl", model_name_or_path="m", methods=["pro,dpo", "ppg"])
    with pytest.raises(SystemExit):
        compare.main(args)
    assert "unknown method(s) ppg;" in capsys.readouterr().err
    args = compare.CompareArguments(dataset_name="x.jsonl", model_name_or_path="m", overrides={"dpo": 3})
    with pytest.raises(SystemExit):
        compare.main(args)
    assert "--overrides maps" in capsys.readouterr().err


def test_compare_is_a_cli_command():
    from trl_pro.cli.commands import get_commands

    assert {"compare", "coh"} <= {command.name for command in get_commands()}
