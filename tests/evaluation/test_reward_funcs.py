"""Python reward functions in `trl-pro eval` (issue 20): `--reward_funcs module.function` on the command line and
`reward_funcs=[callable]` in `evaluate_systems`, TRL GRPO style; each is a metric named after the function, and a bad
path, a wrong number of values or a NaN fails with a message saying which."""

import json

import pytest

from tests.evaluation.reward_funcs_module import word_count
from trl_pro.evaluation.systems import System, evaluate_systems
from trl_pro.evaluation.test_data import EvalExample
from trl_pro.scripts.eval import cli_main


RESPONSES = {"\n\nHuman: hi\n\nAssistant:": "hello there friend", "\n\nHuman: bye\n\nAssistant:": "bye"}


def _test_data():
    return {
        "chat": [
            EvalExample(prompt=p, reference="hello there", subset="chat", index=i) for i, p in enumerate(RESPONSES)
        ]
    }


def _responses_file(tmp_path):
    path = tmp_path / "canned.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in RESPONSES.items()))
    return path


def _data_file(tmp_path):
    path = tmp_path / "test.jsonl"
    rows = [{"prompt": p, "completions": ["hello there", "no"]} for p in RESPONSES]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_callable_reward_function_is_a_metric_named_after_it(tmp_path):
    results = evaluate_systems(
        [System(name="canned", path=str(_responses_file(tmp_path)))],
        _test_data(),
        tmp_path / "out",
        reward_funcs=[word_count],
        plot=False,
    )
    assert results["canned"]["chat"]["word_count"] == pytest.approx((3 + 1) / 2)
    assert results["canned"]["total"]["word_count"] == pytest.approx(2.0)
    assert results["canned"]["total"]["reward"] is None  # no reward model: the model metric stays empty
    assert "word_count" in (tmp_path / "out" / "results.md").read_text()


def test_the_cli_imports_a_dotted_path_and_reports_it(tmp_path, capsys):
    cli_main(
        [
            "--system",
            f"canned={_responses_file(tmp_path)}",
            "--dataset_name",
            str(_data_file(tmp_path)),
            "--reward_funcs",
            "tests.evaluation.reward_funcs_module.word_count",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["canned"]["total"]["word_count"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "path, message",
    [
        ("no_such_module_xyz.f", "cannot import module 'no_such_module_xyz'"),
        ("tests.evaluation.reward_funcs_module.missing", "has no attribute 'missing'"),
        ("tests.evaluation.reward_funcs_module.NOT_CALLABLE", "is not callable"),
        ("word_count", "expected a dotted path"),
        ("tests.evaluation.reward_funcs_module.too_few", "returned 1 values for 2 completions"),
        ("tests.evaluation.reward_funcs_module.not_a_number", "is nan (must be finite)"),
    ],
)
def test_a_bad_reward_function_fails_with_a_clear_message(tmp_path, capsys, path, message):
    argv = ["--system", f"canned={_responses_file(tmp_path)}", "--dataset_name", str(_data_file(tmp_path))]
    with pytest.raises(SystemExit) as exit_:
        cli_main([*argv, "--reward_funcs", path, "--output_dir", str(tmp_path / "out")])
    assert exit_.value.code != 0
    assert message in capsys.readouterr().err
