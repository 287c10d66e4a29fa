"""What a new user runs into first (issue 18): a mistyped model path fails at once with one line, a finished
`generate`/`rank` output is not redone unless asked, and `--help` lists no TRL debug flag."""

import gzip
import json
import os
import time
from types import SimpleNamespace

import pytest

from trl_pro.assets import HH_RLHF_DIR
from trl_pro.scripts import generate as generate_script
from trl_pro.scripts import rank as rank_script
from trl_pro.utils.errors import SetupError


MISSING = "./no/such/model"


def _hh_jsonl(path, count=3):
    """The first `count` (valid) rows of the vendored HH-RLHF train slice."""
    with gzip.open(HH_RLHF_DIR / "train.jsonl.gz", "rt") as handle:
        path.write_text("".join(next(handle) for _ in range(count)))
    return path


def _ranked_jsonl(path, count=3):
    """Ranked rows with scores: `trl-pro rank` sorts them without a reward model."""
    rows = [
        {"prompt": f"\n\nHuman: q{i}?\n\nAssistant:", "completions": [f" a{i}", f" b{i}"], "scores": [0.0, 1.0]}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _resolve_model(name):
    from trl import ModelConfig

    from trl_pro.pipeline.models import resolve_model

    return resolve_model(
        ModelConfig(model_name_or_path=name), SimpleNamespace(seed=0, model_init_kwargs=None, trust_remote_code=False)
    )


def _load_policy(name):
    from trl_pro.pipeline.models import load_policy

    return load_policy(name)


def _load_reward_model(name):
    from trl_pro.pipeline.reward_models import load_reward_model

    return load_reward_model(name)


@pytest.mark.parametrize("load", [_resolve_model, _load_policy, _load_reward_model])
def test_a_missing_local_model_path_fails_at_once(load, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(SetupError, match=f"^no such folder: {MISSING}$") as error:
        load(MISSING)
    assert time.monotonic() - start < 5  # no hub lookup, no retries
    assert isinstance(error.value, ValueError)  # shown as its message alone by every command


def test_hub_ids_are_not_taken_for_local_paths():
    from trl_pro.data.loading import looks_like_local_path

    for name in ("gpt2", "org/name", "trl-pro/tiny-llama", "OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5"):
        assert not looks_like_local_path(name), name
    for name in ("./model", "../model", "/models/m", "~/m", "models/org/name", ".cache/m", "a" + os.sep + "b/c"):
        assert looks_like_local_path(name), name


def test_rank_with_a_mistyped_reward_model_path_prints_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = _hh_jsonl(tmp_path / "hh.jsonl")
    with pytest.raises(SystemExit) as exit_info:
        rank_script.cli_main(
            [
                "--dataset_name",
                str(data),
                "--reward_model_name_or_path",
                MISSING,
                "--output_path",
                "out.jsonl",
                "--progress",
                "false",
            ]
        )
    assert exit_info.value.code == 1  # a runtime error, as `trl-pro pro` gives for a missing model path
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert errors == [f"trl-pro rank: error: no such folder: {MISSING} [set TRL_PRO_DEBUG=1 for the traceback]"]
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.parts").exists()


@pytest.mark.parametrize("script", [generate_script, rank_script])
def test_help_hides_trls_debug_flag(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.cli_main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--output_path" in help_text and "--overwrite" in help_text
    assert "ignore_bias_buffers" not in help_text and "ignore-bias-buffers" not in help_text


def _stamp(path):
    return path.read_bytes(), path.stat().st_mtime_ns


def test_a_finished_generate_is_not_redone(tiny_policy_dir, tmp_path, monkeypatch, capsys):
    data = _hh_jsonl(tmp_path / "hh.jsonl")
    output = tmp_path / "out.jsonl"
    argv = [
        "--dataset_name",
        str(data),
        "--model_name_or_path",
        str(tiny_policy_dir),
        "--num_generations",
        "1",
        "--max_completion_length",
        "4",
        "--shard_size",
        "2",
        "--output_path",
        str(output),
        "--progress",
        "false",
    ]
    generate_script.cli_main(argv)
    assert f"wrote 3 rows to {output}" in capsys.readouterr().out
    first = _stamp(output)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    with monkeypatch.context() as patch:
        patch.setattr(generate_script, "build_source", no_model)
        generate_script.cli_main(argv)
        assert capsys.readouterr().out.strip() == (
            f"trl-pro generate: {output} is complete (3 rows); nothing to do (--overwrite redoes it)"
        )
        assert _stamp(output) == first

        # other settings: refused in one line, the file left as it is
        with pytest.raises(SystemExit) as exit_info:
            generate_script.cli_main([*argv, "--max_completion_length", "5"])
        assert exit_info.value.code == 1
        [line] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert line.startswith(f"trl-pro generate: error: {output} was written with other settings (args differ)")
        assert "--overwrite" in line and _stamp(output) == first

    generate_script.cli_main([*argv, "--overwrite"])
    assert f"wrote 3 rows to {output}" in capsys.readouterr().out
    assert output.stat().st_mtime_ns != first[1] and output.read_bytes() == first[0]  # redone, same seeds


def test_a_finished_rank_is_not_redone_and_a_changed_output_is_not_replaced(tmp_path, capsys):
    data = _ranked_jsonl(tmp_path / "ranked.jsonl")
    output = tmp_path / "out.jsonl.gz"
    argv = ["--dataset_name", str(data), "--output_path", str(output), "--progress", "false"]
    rank_script.cli_main(argv)
    assert f"wrote 3 rankings to {output}" in capsys.readouterr().out
    first = _stamp(output)
    rank_script.cli_main(argv)
    assert capsys.readouterr().out.strip() == (
        f"trl-pro rank: {output} is complete (3 rows); nothing to do (--overwrite redoes it)"
    )
    assert _stamp(output) == first

    output.write_bytes(gzip.compress(b'{"edited": true}\n'))  # changed after the run: not the run's output any more
    edited = _stamp(output)
    with pytest.raises(SystemExit):
        rank_script.cli_main(argv)
    [line] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert f"{output} was changed after the run that wrote it" in line and "--overwrite" in line
    assert _stamp(output) == edited
    rank_script.cli_main([*argv, "--overwrite"])
    assert _stamp(output)[0] != edited[0]

    mine = tmp_path / "mine.jsonl"  # a file of the user's, not written by `rank`
    mine.write_text('{"prompt": "mine"}\n')
    with pytest.raises(SystemExit):
        rank_script.cli_main(["--dataset_name", str(data), "--output_path", str(mine), "--progress", "false"])
    [line] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert f"{mine} exists but no finished run is recorded for it" in line and "--overwrite" in line
    assert mine.read_text() == '{"prompt": "mine"}\n'
