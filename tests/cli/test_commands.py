"""The `trl-pro` command line: parsing, YAML + overrides, accelerate hand-off, one-line errors, data and model
loading, and a short end-to-end run with the before -> after table."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from trl import DatasetMixtureConfig, ModelConfig

import trl_pro.cli.commands as cli
from trl_pro.assets import HH_RLHF_DIR, build_tiny_llama
from trl_pro.cli import training
from trl_pro.cli.training import PROScriptArguments
from trl_pro.data.loading import _column_map, _rename_columns, load_dataset_splits, load_named_dataset
from trl_pro.pipeline.models import TINY_LLAMA, resolve_model
from trl_pro.scripts.pro import make_parser
from trl_pro.trainers.pro_config import PROConfig
from trl_pro.utils.errors import SetupError


REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"
# bitsandbytes logs this at import on CPUs with AVX512-BF16 (nothing to do with the CLI): not counted as output
NOISE = ("Failed to load CPU gemm_4bit_forward",)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(NOISE)]


def _run(*args, env=None, timeout=300):
    return subprocess.run(
        list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.fixture
def launched(monkeypatch):
    """Run `trl-pro` in-process, recording what would be handed to `accelerate launch` instead of launching."""
    calls = []

    def fake_launch(launch_args, script, script_args, prog):
        calls.append({"launch_args": launch_args, "script": script, "script_args": script_args})
        return 0

    monkeypatch.setattr(cli, "launch", fake_launch)
    saved = dict(os.environ)
    yield calls
    os.environ.clear()
    os.environ.update(saved)


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


# --- Help and errors -------------------------------------------------------------------------------------------------


def test_help_lists_every_flag_with_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pro", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    actions = [a for a in make_parser()._actions if a.option_strings and a.dest != "help"]
    assert len(actions) > 150
    for action in actions:
        assert action.help and action.help.strip(), action.dest
        assert action.option_strings[0] in out, action.dest
    # our own flags and documentation
    for text in (
        "--drop_invalid_rows",
        "--dataset_column_map",
        "--eval_before_training",
        "--sft_weight",
        "--load_in_4bit",
        "--lora_target_modules",
        "trl-pro/tiny-llama",
        "--accelerate_config",
        "zero3",
        "fsdp2",
        "env:",
    ):
        assert text in out, text


def test_console_script_help():
    result = _run("trl-pro", "pro", "--help")
    assert result.returncode == 0, result.stderr
    assert "--model_name_or_path" in result.stdout and "--sft_weight" in result.stdout
    top = _run("trl-pro", "--help")
    assert top.returncode == 0 and "pro" in top.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pro", "--learning_rat", "1e-3", "--use_cpu", "true"], "unrecognized arguments: --learning_rat 1e-3"),
        (["pro", "--learning_rate", "abc"], "invalid float value: 'abc'"),
        (["pro", "--use_cpu", "true", "--max_length", "100", "--max_prompt_length", "200"], "must be smaller"),
        (["pro", "--use_cpu", "true", "--sft_loss_reduction", "median"], "invalid choice: 'median'"),
        (["pro", "--config", "does-not-exist.yaml"], "does-not-exist.yaml"),
        (["pro", "--use_cpu", "true", "--accelerate_config", "zero9"], "zero9"),
        (["pro", "--use_cpu", "true", "--num_processes", "two"], "invalid int value: 'two'"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flag_is_one_line_error(argv, message, capsys, launched):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = _error_lines(captured.err)
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("trl-pro") and "error:" in lines[0] and message in lines[0]
    assert "Traceback" not in captured.err and "usage:" not in captured.err
    assert launched == []


def test_unknown_yaml_key_is_named(tmp_path, capsys, launched):
    config = tmp_path / "typo.yaml"
    config.write_text("model_name_or_path: trl-pro/tiny-llama\nuse_cpu: true\nsft_weigth: 0.1\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pro", "--config", str(config)])
    assert exit_info.value.code == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"in {config}" in lines[0] and "--sft_weigth 0.1" in lines[0]


def test_runtime_error_is_one_line_with_nonzero_exit(tmp_path):
    """A bad value only the launched script can detect (the model path) fails with one line, exit status 1."""
    result = _run(
        "trl-pro",
        "pro",
        "--model_name_or_path",
        str(tmp_path / "no-model"),
        "--dataset_name",
        str(HH_RLHF_DIR),
        "--use_cpu",
        "true",
        "--output_dir",
        str(tmp_path / "out"),
        "--report_to",
        "none",
    )
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in _error_lines(result.stderr) if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("trl-pro pro: error:"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_invalid_row_is_one_line_with_a_hint(tmp_path, capsys):
    argv = [
        "--model_name_or_path",
        "trl-pro/tiny-llama",
        "--dataset_name",
        str(HH_RLHF_DIR),
        "--use_cpu",
        "true",
        "--output_dir",
        str(tmp_path),
        "--report_to",
        "none",
    ]
    with pytest.raises(SystemExit) as exit_info:
        training.train(*training.parse_args(make_parser(), argv))
    assert exit_info.value.code == 1
    lines = [line for line in _error_lines(capsys.readouterr().err) if "error:" in line]
    assert len(lines) == 1
    assert "Row 86, field 'chosen': empty completion" in lines[0] and "drop_invalid_rows" in lines[0]


# --- YAML, overrides, env, accelerate hand-off -----------------------------------------------------------------------


def test_yaml_values_flags_override_and_env(tmp_path, launched):
    config = tmp_path / "run.yaml"
    config.write_text(
        "env:\n  TRL_PRO_TEST_ENV: from-yaml\n"
        "model_name_or_path: trl-pro/tiny-llama\nuse_cpu: true\nsft_weight: 0.2\nlearning_rate: 1.0e-3\n"
        "accelerate_config: zero3\nnum_processes: 8\n"
    )
    parser = make_parser()
    script_args, training_args, model_args, _ = training.parse_args(
        parser, ["--config", str(config), "--learning_rate", "0.5"]
    )
    assert training_args.learning_rate == 0.5  # the flag wins over YAML
    assert training_args.sft_weight == 0.2  # YAML wins over the default
    assert model_args.model_name_or_path == "trl-pro/tiny-llama"
    assert os.environ["TRL_PRO_TEST_ENV"] == "from-yaml"

    assert cli.main(["pro", "--config", str(config), "--learning_rate", "0.5", "--main_process_port", "29511"]) == 0
    (call,) = launched
    launch_args, script_args_list = call["launch_args"], call["script_args"]
    # TRL's bundled accelerate config, by name, and the YAML/CLI launch keys go to accelerate...
    assert Path(_value(launch_args, "--config_file")).name == "zero3.yaml"
    assert _value(launch_args, "--num_processes") == "8"
    assert _value(launch_args, "--main_process_port") == "29511"
    # ...and the script gets the config and its own flags, not accelerate's
    assert script_args_list == ["--config", str(config), "--learning_rate", "0.5"]
    assert Path(call["script"]) == REPO / "trl_pro" / "scripts" / "pro.py"


def test_command_line_launch_flags_replace_the_yaml_ones(launched):
    recipe = REPO / "recipes" / "pro" / "hh_rlhf_llama7b_full_zero3.yaml"  # accelerate_config: zero3, num_processes: 7
    assert (
        cli.main(
            [
                "pro",
                "--config",
                str(recipe),
                "--use_cpu",
                "true",
                "--accelerate_config",
                "fsdp2",
                "--num-processes",
                "8",
            ]
        )
        == 0
    )
    launch_args = launched[0]["launch_args"]
    assert Path(_value(launch_args, "--config_file")).name == "fsdp2.yaml"
    assert _value(launch_args, "--num-processes") == "8" and "--num_processes" not in launch_args
    assert launch_args.count("--config_file") == 1 and "--accelerate_config" not in launch_args


def test_accelerate_config_path_and_switches(tmp_path, launched):
    accelerate_config = tmp_path / "my_accelerate.yaml"
    accelerate_config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 2\n")
    config = tmp_path / "run.yaml"
    config.write_text("use_cpu: true\nmulti_gpu: true\nsame_network: false\n")  # YAML booleans for accelerate switches
    assert cli.main(["pro", "--config", str(config), "--accelerate_config", str(accelerate_config)]) == 0
    launch_args = launched[0]["launch_args"]
    assert _value(launch_args, "--config_file") == str(accelerate_config)
    assert "--multi_gpu" in launch_args and "True" not in launch_args
    assert "--same_network" not in launch_args


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only launch defaults")
def test_cpu_launch_uses_all_cores_and_real_processes(monkeypatch, launched):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(cli, "_available_cpus", lambda: 8)
    assert cli.main(["pro", "--use_cpu", "true"]) == 0
    single = launched[-1]["launch_args"]
    assert _value(single, "--num_cpu_threads_per_process") == "8"  # accelerate would pin OMP_NUM_THREADS=1
    assert _value(single, "--num_processes") == "1"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # inherited by the launched process

    assert cli.main(["pro", "--use_cpu", "true", "--cpu", "--num_processes", "2"]) == 0
    multi = launched[-1]
    # accelerate's --cpu launcher would start one process: torchrun (via --multi_gpu) with gloo instead
    assert "--cpu" not in multi["launch_args"] and "--multi_gpu" in multi["launch_args"]
    assert _value(multi["launch_args"], "--num_cpu_threads_per_process") == "4"
    assert int(_value(multi["launch_args"], "--main_process_port")) > 0  # a free port, not torchrun's fixed 29500
    assert multi["script_args"][-2:] == ["--use_cpu", "true"]

    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting wins
    assert cli.main(["pro", "--use_cpu", "true"]) == 0
    assert "--num_cpu_threads_per_process" not in launched[-1]["launch_args"]


def test_plain_script_rejects_unknown_flag():
    result = _run(sys.executable, "-m", "trl_pro.scripts.pro", "--use_cpu", "true", "--sft_weigth", "0.1")
    assert result.returncode == 2
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and "unrecognized arguments: --sft_weigth 0.1" in lines[0]


# --- Data ------------------------------------------------------------------------------------------------------------


def _args(**kwargs):
    return PROScriptArguments(**kwargs), DatasetMixtureConfig()


def test_load_local_folder_gives_splits():
    dataset = load_dataset_splits(*_args(dataset_name=str(HH_RLHF_DIR)))
    assert {name: len(split) for name, split in dataset.items()} == {"train": 1200, "test": 200}


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".json", ".parquet"])
def test_load_local_file(tmp_path, suffix):
    rows = [{"prompt": f"p{i}", "completions": ["a", "b", "c"], "scores": [3.0, 2.0, 1.0]} for i in range(5)]
    path = tmp_path / f"ranked{suffix}"
    if suffix == ".parquet":
        Dataset.from_list(rows).to_parquet(str(path))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        text = "".join(json.dumps(row) + "\n" for row in rows)
        path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    dataset = load_dataset_splits(*_args(dataset_name=str(path), dataset_train_split="mine"))
    assert list(dataset) == ["mine"] and dataset["mine"].to_list() == rows


def test_load_save_to_disk_folder_and_missing_path(tmp_path):
    DatasetDict({"train": Dataset.from_dict({"x": [1, 2]}), "test": Dataset.from_dict({"x": [3]})}).save_to_disk(
        str(tmp_path / "saved")
    )
    assert len(load_dataset_splits(*_args(dataset_name=str(tmp_path / "saved")))["test"]) == 1
    with pytest.raises(SetupError, match="does not exist"):
        load_dataset_splits(*_args(dataset_name=str(tmp_path / "nothing")))
    with pytest.raises(SetupError, match="format"):
        (tmp_path / "data.txt").write_text("x")
        load_dataset_splits(*_args(dataset_name=str(tmp_path / "data.txt")))


def test_drop_invalid_rows_logs_the_count(caplog):
    from trl_pro.assets import build_tiny_llama, load_tiny_tokenizer
    from trl_pro.trainers.pro_trainer import PROTrainer

    train = load_named_dataset(str(HH_RLHF_DIR))["train"]
    args = PROConfig("out", use_cpu=True, drop_invalid_rows=True, report_to="none")
    with caplog.at_level("WARNING"):
        trainer = PROTrainer(
            build_tiny_llama(), args=args, train_dataset=train, processing_class=load_tiny_tokenizer()
        )
    assert len(trainer.train_dataset) == 1196  # 4 rows of the slice have an empty chosen response after the prompt
    assert "Dropped 4 of 1200 rows of the train dataset" in caplog.text and "Row 86, field 'chosen'" in caplog.text
    assert "invalid_reason" not in trainer.train_dataset.column_names


def test_column_map():
    renamed = _rename_columns(
        Dataset.from_dict({"p": ["x"], "responses": [["a", "b"]], "rm": [[1.0, 0.0]]}),
        _column_map(
            PROScriptArguments(dataset_column_map='{"p": "prompt", "responses": "completions", "rm": "scores"}')
        ),
        "train",
    )
    assert renamed.column_names == ["prompt", "completions", "scores"]
    with pytest.raises(SetupError, match="no column"):
        _rename_columns(renamed, {"missing": "prompt"}, "train")


# --- Model -----------------------------------------------------------------------------------------------------------


def test_builtin_tiny_llama_is_seeded_random_init():
    model, tokenizer, quantization, peft = resolve_model(
        ModelConfig(model_name_or_path=TINY_LLAMA), PROConfig("out", use_cpu=True, seed=3)
    )
    assert quantization is None and peft is None and len(tokenizer) == 2048
    reference = build_tiny_llama(3)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(model.lm_head.weight, build_tiny_llama(4).lm_head.weight)


def test_other_models_go_through_from_pretrained():
    training_args = PROConfig("out", use_cpu=True)
    model, tokenizer, quantization, peft = resolve_model(
        ModelConfig(model_name_or_path="some-org/some-model", dtype="bfloat16"), training_args
    )
    assert model == "some-org/some-model" and tokenizer is None and quantization is None and peft is None
    assert training_args.model_init_kwargs["dtype"] == "bfloat16"


# --- End to end ------------------------------------------------------------------------------------------------------


def test_end_to_end_prints_before_after_and_saves(tmp_path):
    """The plain-script form on the embedded data: trains, evaluates before and after, saves a loadable model."""
    out = tmp_path / "run"
    result = _run(
        sys.executable,
        "-m",
        "trl_pro.scripts.pro",
        "--config",
        str(QUICKSTART),
        "--max_steps",
        "8",
        "--max_length",
        "128",
        "--max_prompt_length",
        "96",
        "--per_device_eval_batch_size",
        "32",
        "--disable_tqdm",
        "true",
        "--output_dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Dropped 4 of 1200 rows of the train dataset" in result.stdout + result.stderr
    assert "before -> after training" in result.stdout
    for label in ("eval loss", "pairwise accuracy", "top-1 accuracy", "kendall tau"):
        assert label in result.stdout
    assert f"saved to {out}" in result.stdout
    record = json.loads((out / "eval_before_after.json").read_text())
    assert record["split"] == "test" and record["num_rows"] == 200
    assert set(record["before"]) == set(record["after"]) == {key for key, _ in training.REPORTED_METRICS}
    assert record["after"]["eval_loss"] < record["before"]["eval_loss"]  # 8 steps at lr 2e-3 move the tiny model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    assert not torch.equal(model.lm_head.weight, build_tiny_llama(42).lm_head.weight)
    assert len(AutoTokenizer.from_pretrained(out)) == 2048


def test_malformed_data_file_error_says_what_is_wrong(tmp_path, capsys):
    """datasets wraps a parse error in "An error occurred while generating the dataset"; the one-line error keeps
    the cause, for every command that loads data through `one_line_errors`."""
    from trl_pro.scripts import prepare_data

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 1\n')
    with pytest.raises(SystemExit) as exit_info:
        prepare_data.main(["--source", "ranked", "--dataset_name", str(bad), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if ": error:" in line]
    assert "DatasetGenerationError" in line and "JSON parse error" in line
    assert not (tmp_path / "out").exists()
