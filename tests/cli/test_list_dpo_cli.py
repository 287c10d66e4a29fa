"""`trl-pro list-dpo`: the list DPO script end to end on the built-in tiny model with the quickstart recipe's settings,
its reference-model options, and the command as the console script launches it."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trl_pro.cli.commands as cli


REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "list_dpo" / "quickstart.yaml"


def _data(folder: Path, rows_train: int = 16, rows_test: int = 8) -> Path:
    """A local dataset folder of rankings of 3 with scores (train and test splits)."""
    folder.mkdir()
    rows = [
        {
            "prompt": f"Question {i}:",
            "completions": [f" good answer {i}", f" bad {i}", " no"],
            "scores": [1.0, 0.5, -1.0],
        }
        for i in range(rows_train + rows_test)
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:rows_train]))
    (folder / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[rows_train:]))
    return folder


def _flags(data: Path, out: Path, *more: str) -> list[str]:
    return [
        "--config",
        str(RECIPE),
        "--dataset_name",
        str(data),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--max_length",
        "64",
        "--disable_tqdm",
        "true",
        "--output_dir",
        str(out),
        *more,
    ]


@pytest.mark.parametrize(
    "loss_type, reference",
    [("plackett_luce", "copy"), ("plackett_luce", "tiny-llama"), ("lipo_lambda", "saved")],
    ids=["plackett_luce-frozen_copy", "plackett_luce-builtin_ref", "lipo_lambda-saved_ref"],
)
def test_list_dpo_script_trains_with_its_reference(tmp_path, capsys, tiny_policy_dir, loss_type, reference):
    """The plain-script form on rankings of 3. With the policy as its own reference (the default frozen copy, or the
    built-in tiny Llama with the same seed) every log-ratio is 0 before training, so Plackett-Luce costs exactly
    log(3!) per ranking; a different reference model (the saved tiny Llama of seed 0, the policy being seed 42) does
    not. Training moves the held-out loss and saves the model."""
    from trl_pro.scripts import list_dpo

    assert "list-dpo" in {command.name for command in cli.get_commands()}
    help_text = list_dpo.make_parser().format_help()
    assert "--ref_model_name_or_path" in help_text and "--loss_type" in help_text
    more = ["--loss_type", loss_type]
    if reference == "tiny-llama":
        more += ["--ref_model_name_or_path", "trl-pro/tiny-llama"]
    elif reference == "saved":
        more += ["--ref_model_name_or_path", str(tiny_policy_dir)]
    out = tmp_path / "run"
    trainer = list_dpo.main(
        *list_dpo.make_parser().parse_args_and_config(_flags(_data(tmp_path / "data"), out, *more))
    )
    assert trainer.args.loss_type == loss_type and trainer.ref_model is not None
    stdout = capsys.readouterr().out
    assert "before -> after training" in stdout and "list loss + sft_weight * SFT NLL" in stdout
    assert f"saved to {out}" in stdout
    record = json.loads((out / "eval_before_after.json").read_text())
    before, after = record["before"]["eval_loss"], record["after"]["eval_loss"]
    assert record["num_rows"] == 8 and math.isfinite(after) and after != before
    if loss_type == "plackett_luce" and reference != "saved":
        assert before == pytest.approx(math.log(6), abs=1e-5)
    else:
        assert before != pytest.approx(math.log(6), abs=1e-3)
    assert (out / "model.safetensors").is_file()


def test_trl_pro_list_dpo_command_launches_the_script(tmp_path, tiny_policy_dir):
    """`trl-pro list-dpo` (the console script, through `accelerate launch`) runs trl_pro/scripts/list_dpo.py."""
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    trl_pro = Path(sys.executable).with_name("trl-pro")
    command = [str(trl_pro) if trl_pro.exists() else "trl-pro", "list-dpo"]
    flags = _flags(_data(tmp_path / "data"), out, "--ref_model_name_or_path", str(tiny_policy_dir))
    result = subprocess.run(command + flags, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "before -> after training" in result.stdout and (out / "model.safetensors").is_file()


def test_a_bad_list_dpo_flag_is_a_one_line_error(capsys):
    """Checked before anything is launched: one line naming the command and the value."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["list-dpo", "--loss_type", "listnet", "--use_cpu", "true"])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trl-pro")]
    assert len(errors) == 1 and errors[0].startswith("trl-pro list-dpo: error:") and "listnet" in errors[0]


def test_every_list_dpo_flag_has_help():
    from trl_pro.scripts import list_dpo

    actions = [a for a in list_dpo.make_parser()._actions if a.option_strings and a.dest != "help"]
    assert {"ref_model_name_or_path", "loss_type", "beta", "precompute_ref_log_probs"} <= {a.dest for a in actions}
    for action in actions:
        assert action.help and action.help.strip(), action.dest
