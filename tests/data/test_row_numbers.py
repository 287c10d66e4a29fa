"""A bad row of a local JSON Lines file is named by its row and its line (issue 18): `Row 2 (line 4 of hh.jsonl)`,
through every command that reads one; and `prepare_data` says why it dropped rows."""

import gzip
import json

import pytest

from trl_pro.assets import HH_RLHF_DIR


BAD_ROW = 86  # the vendored HH-RLHF train slice's row 86 has an empty chosen response


def _hh_rows(*indices):
    with gzip.open(HH_RLHF_DIR / "train.jsonl.gz", "rt") as handle:
        rows = [json.loads(line) for line in handle]
    return [rows[i] for i in indices]


def _write_with_a_blank_line(path, rows):
    """Rows as JSON lines, with a blank line (no row) after the first: row 2 is on line 4."""
    lines = [json.dumps(row) for row in rows]
    text = "\n".join([lines[0], "", *lines[1:]]) + "\n"
    if str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["data.jsonl", "data.jsonl.gz", "data.json"])
def test_row_errors_of_a_json_lines_file_name_the_line(tmp_path, name):
    from trl_pro.data.loading import with_line_numbers

    path = _write_with_a_blank_line(tmp_path / name, [{"a": 0}, {"a": 1}, {"a": 2}])
    assert with_line_numbers("Row 2, field 'x': bad", str(path)) == f"Row 2 (line 4 of {name}), field 'x': bad"
    assert with_line_numbers("Row 0: bad", str(path)) == f"Row 0 (line 1 of {name}): bad"
    assert with_line_numbers("Row 7: beyond the file", str(path)) == "Row 7: beyond the file"
    assert with_line_numbers("no row here", str(path)) == "no row here"


def test_other_sources_keep_the_row_alone(tmp_path):
    from trl_pro.data.loading import with_line_numbers

    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"a": 0}, {"a": 1}], indent=1))
    parquet = tmp_path / "data.parquet"
    parquet.write_bytes(b"PAR1")
    for name in (str(array), str(parquet), str(tmp_path), "org/name", None):
        assert with_line_numbers("Row 1, field 'x': bad", name) == "Row 1, field 'x': bad"


def _error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if ": error:" in line]


def test_rank_names_the_line_of_a_bad_row(tmp_path, capsys):
    from trl_pro.scripts import rank

    data = _write_with_a_blank_line(tmp_path / "hh.jsonl", _hh_rows(0, 1, BAD_ROW))
    with pytest.raises(SystemExit) as exit_info:
        rank.cli_main(
            [
                "--dataset_name",
                str(data),
                "--reward_model_name_or_path",
                str(tmp_path / "rm"),
                "--output_path",
                str(tmp_path / "out.jsonl"),
                "--progress",
                "false",
            ]
        )
    assert exit_info.value.code == 1
    [line] = _error_lines(capsys)
    assert line.startswith("trl-pro rank: error: Row 2 (line 4 of hh.jsonl), field 'chosen': empty completion"), line


def test_training_names_the_line_of_a_bad_row(tmp_path, capsys):
    from trl_pro.cli import training
    from trl_pro.scripts.pro import make_parser

    data = _write_with_a_blank_line(tmp_path / "hh.jsonl.gz", _hh_rows(0, 1, BAD_ROW, 2))
    argv = [
        "--model_name_or_path",
        "trl-pro/tiny-llama",
        "--dataset_name",
        str(data),
        "--use_cpu",
        "true",
        "--output_dir",
        str(tmp_path / "out"),
        "--report_to",
        "none",
    ]
    with pytest.raises(SystemExit) as exit_info:
        training.train(*training.parse_args(make_parser(), argv))
    assert exit_info.value.code == 1
    [line] = _error_lines(capsys)
    assert "Row 2 (line 4 of hh.jsonl.gz), field 'chosen': empty completion" in line and "drop_invalid_rows" in line


def test_prepare_data_says_why_it_dropped_rows(tmp_path, capsys):
    from trl_pro.scripts import prepare_data

    rows = [
        {"prompt": f"\n\nHuman: q{i}?\n\nAssistant:", "completions": [f" good{i}", f" bad{i}"], "scores": [1.0, 0.0]}
        for i in range(8)
    ]
    rows[2]["completions"][1] = "  "
    data = _write_with_a_blank_line(tmp_path / "ranked.jsonl", rows)
    prepare_data.main(
        [
            "--source",
            "ranked",
            "--dataset_name",
            str(data),
            "--output_dir",
            str(tmp_path / "views"),
            "--test_size",
            "0.25",
        ]
    )
    out = capsys.readouterr().out
    dropped = [line for line in out.splitlines() if line.startswith("Dropped")]
    # counted in the file's rows, before the test split is held out
    assert dropped == [
        "Dropped 1 of 8 rows of the train split; first: Row 2 (line 4 of ranked.jsonl), field "
        "'completions[1]': empty completion"
    ], out
