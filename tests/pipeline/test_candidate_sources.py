"""`trl-pro generate` picks its candidate source from `trl_pro.pipeline.generation.SOURCE_KINDS` (a local model,
an OpenAI-compatible endpoint, vLLM) and says so before it reads any data when none is given."""

import gzip
import json

import pytest

from trl_pro.assets import HH_RLHF_DIR
from trl_pro.scripts import generate as generate_script


def _small_jsonl(path, indices=(0, 1, 86)):
    """A few rows of the vendored HH-RLHF train slice; row 86 there has an empty chosen response."""
    with gzip.open(HH_RLHF_DIR / "train.jsonl.gz", "rt") as handle:
        rows = [json.loads(line) for line in handle]
    with open(path, "w") as handle:
        for index in indices:
            handle.write(json.dumps(rows[index]) + "\n")
    return path


def _error_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        generate_script.cli_main(argv)
    assert exit_info.value.code == 1
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()][-1]


def test_no_candidate_source_is_reported_before_the_data(tmp_path, capsys):
    data = _small_jsonl(tmp_path / "hh.jsonl")
    output = tmp_path / "out.jsonl"
    line = _error_line(capsys, ["--dataset_name", str(data), "--output_path", str(output), "--progress", "false"])
    assert line.startswith("trl-pro generate: error: no candidate source"), line
    for flag in ("--model_name_or_path", "--base_url with --api_model", "--use_vllm"):
        assert flag in line
    assert "Row" not in line  # not the invalid row the data holds
    assert not output.exists() and not (tmp_path / "out.jsonl.parts").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--base_url", "http://127.0.0.1:9/v1", "--use_vllm"],
            "give one candidate source per run, got --base_url and --use_vllm",
        ),
        (["--base_url", "http://127.0.0.1:9/v1"], "--base_url needs --api_model"),
        (["--use_vllm"], "--use_vllm needs --model_name_or_path"),
    ],
)
def test_bad_source_arguments_are_reported_before_the_data(tmp_path, capsys, flags, message):
    data = _small_jsonl(tmp_path / "hh.jsonl")
    line = _error_line(capsys, ["--dataset_name", str(data), "--output_path", str(tmp_path / "out.jsonl"), *flags])
    assert line.startswith(f"trl-pro generate: error: {message}"), line


def test_registry_selects_one_kind_per_set_of_flags():
    from trl_pro.pipeline.generation import SOURCE_KINDS

    args = generate_script.GenerateArguments
    cases = {
        "local": args(model_name_or_path="m"),
        "openai": args(model_name_or_path="m", base_url="http://x/v1"),
        "vllm": args(model_name_or_path="m", use_vllm=True),
    }
    for name, arguments in cases.items():
        assert [kind.name for kind in SOURCE_KINDS if kind.selects(arguments)] == [name]
    assert generate_script.select_source(cases["openai"]).name == "openai"
