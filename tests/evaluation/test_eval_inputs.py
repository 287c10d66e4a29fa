"""What `trl-pro eval` and `trl-pro judge` read and check first (issue 18): test data from any dataset every other
command reads (`--dataset_name` parquet/csv/compressed files, `prepare_data` view folders; `--test_file` as an alias),
the `eval` extra checked before any model is loaded, and a `results.png` that stays readable with one subset or many
systems."""

import csv
import json
import sys

import pytest

from trl_pro.assets import HH_RLHF_DIR
from trl_pro.evaluation import judges
from trl_pro.evaluation.test_data import load_test_data, unique_prompts
from trl_pro.utils.io import read_json_rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _hh_rows(n=5):
    """The first `n` rows of the vendored HH-RLHF test slice, in two subsets."""
    rows = read_json_rows(HH_RLHF_DIR / "test.jsonl.gz")[:n]
    return [{**row, "subset": "helpful_base" if i % 2 else "harmless_base"} for i, row in enumerate(rows)]


def _write(path, rows):
    """`rows` as a file of the format its name says: jsonl, jsonl.gz, parquet or csv."""
    from datasets import Dataset

    name = str(path)
    if name.endswith(".jsonl"):
        return _write_jsonl(path, rows)
    if name.endswith(".jsonl.gz"):
        import gzip

        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
        return path
    dataset = Dataset.from_list(rows)
    dataset.to_parquet(name) if name.endswith(".parquet") else dataset.to_csv(name, index=False)
    return path


def _canned(path, test_data, response="Sorry, I can't help."):
    """A responses-file system answering every test prompt (no model to load)."""
    return _write_jsonl(path, [{"prompt": p, "response": response} for p in unique_prompts(test_data)])


def _run(cli_main, argv, capsys):
    capsys.readouterr()  # what came before (writing the test files)
    try:
        cli_main([str(arg) for arg in argv])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _error_line(stderr):
    """The one-line error a failed run ends with (before it, only `datasets`' progress bars may be shown)."""
    lines = stderr.strip().splitlines()
    assert len([line for line in lines if "error:" in line]) == 1, stderr[-3000:]
    return lines[-1]


def _eval(argv, capsys):
    from trl_pro.scripts.eval import cli_main

    return _run(cli_main, argv, capsys)


def _response_rows(out, system="canned"):
    """The test rows an eval run used: (prompt, subset, reference) of its responses file, in order."""
    return [(r["prompt"], r["subset"], r["reference"]) for r in read_json_rows(out / "responses" / f"{system}.jsonl")]


# ---------------------------------------------------------------------------------------------------------------------
# Test data as every other command reads it


@pytest.mark.parametrize(
    "suffix, flag",
    [
        ("parquet", "--dataset_name"),
        ("csv", "--dataset_name"),
        ("jsonl.gz", "--dataset_name"),
        ("parquet", "--test_file"),
    ],
)
def test_eval_reads_a_parquet_csv_or_compressed_file_as_its_jsonl_equivalent(tmp_path, capsys, suffix, flag):
    rows = _hh_rows()
    reference = load_test_data([str(_write(tmp_path / "test.jsonl", rows))])
    canned = _canned(tmp_path / "canned.jsonl", reference)
    data = _write(tmp_path / f"test.{suffix}", rows)
    out = tmp_path / "out"
    status, _, stderr = _eval([flag, data, "--system", f"canned={canned}", "--output_dir", out], capsys)
    assert status == 0, stderr[-3000:]
    expected = [(ex.prompt, subset, ex.reference) for subset, examples in reference.items() for ex in examples]
    assert _response_rows(out) == expected
    results = json.loads((out / "results.json").read_text())["canned"]
    assert [results[s]["n"] for s in ("harmless_base", "helpful_base", "total")] == [3, 2, 5]


def test_eval_reads_a_prepare_data_view_folder_and_its_splits(tmp_path, capsys):
    from datasets import load_dataset

    from trl_pro.scripts import prepare_data

    ranked = [
        {
            "prompt": f"\n\nHuman: question {i}?\n\nAssistant:",
            "completions": [f" worse {i}", f" better {i}"],
            "scores": [0.1, 0.9],
        }
        for i in range(6)
    ]
    _write_jsonl(tmp_path / "ranked.jsonl", ranked)
    views = tmp_path / "views"
    prepare_data.main(
        [
            "--source",
            "ranked",
            "--dataset_name",
            str(tmp_path / "ranked.jsonl"),
            "--output_dir",
            str(views),
            "--test_size",
            "0.3",
        ]
    )
    capsys.readouterr()

    # The jsonl equivalents of the view's splits
    by_split = {}
    for split in ("test", "train"):
        rows = load_dataset("parquet", data_files=str(views / "ranked" / f"{split}.parquet"), split="train").to_list()
        by_split[split] = load_test_data({"ranked": str(_write_jsonl(tmp_path / f"{split}.jsonl", rows))})
    assert len(by_split["test"]["ranked"]) == 2 and len(by_split["train"]["ranked"]) == 4

    def rows_of(data):
        return [(ex.prompt, "ranked", ex.reference) for ex in data["ranked"]]

    # The view folder's `test` split by default (the reference is the best candidate), `train` on request
    out = tmp_path / "out_test"
    test_only = _canned(tmp_path / "canned_test.jsonl", by_split["test"])
    status, _, stderr = _eval(
        ["--dataset_name", views / "ranked", "--system", f"canned={test_only}", "--output_dir", out], capsys
    )
    assert status == 0, stderr[-3000:]
    assert _response_rows(out) == rows_of(by_split["test"])
    assert all(ex.reference.startswith(" better") for ex in by_split["test"]["ranked"])
    train_only = _canned(tmp_path / "canned_train.jsonl", by_split["train"])
    out = tmp_path / "out_train"
    status, _, stderr = _eval(
        [
            "--dataset_name",
            f"ranked={views / 'ranked'}",
            "--dataset_test_split",
            "train",
            "--system",
            f"canned={train_only}",
            "--output_dir",
            out,
        ],
        capsys,
    )
    assert status == 0, stderr[-3000:]
    assert _response_rows(out) == rows_of(by_split["train"])
    # The pairs view (best against worst) gives the same prompts and references
    out = tmp_path / "out_pairs"
    status, _, stderr = _eval(
        ["--dataset_name", f"ranked={views / 'pairs'}", "--system", f"canned={test_only}", "--output_dir", out], capsys
    )
    assert status == 0, stderr[-3000:]
    assert _response_rows(out) == rows_of(by_split["test"])
    # A split the folder does not have, and prepare_data's output folder itself (several views), are one-line errors
    status, _, stderr = _eval(
        [
            "--dataset_name",
            views / "ranked",
            "--dataset_test_split",
            "validation",
            "--system",
            f"canned={test_only}",
            "--output_dir",
            out,
        ],
        capsys,
    )
    line = _error_line(stderr)
    assert status == 1 and "no 'validation' split" in line and "(splits: test, train)" in line
    assert "--dataset_test_split" in line
    status, _, stderr = _eval(
        ["--dataset_name", views, "--system", f"canned={test_only}", "--output_dir", out], capsys
    )
    assert status == 1 and f"{views / 'ranked'}" in _error_line(stderr)


def test_a_bad_row_of_a_parquet_file_names_the_file_row_and_field(tmp_path, capsys):
    rows = _hh_rows(2)
    rows.insert(1, {"chosen": "no turns", "rejected": "x", "subset": "harmless_base"})
    data = _write(tmp_path / "bad.parquet", rows)
    with pytest.raises(ValueError, match=r"bad.parquet: Row 1, field 'prompt': empty prompt"):
        load_test_data([str(data)])
    canned = _canned(tmp_path / "canned.jsonl", load_test_data(max_samples=1))
    status, _, stderr = _eval(
        ["--dataset_name", data, "--system", f"canned={canned}", "--output_dir", tmp_path / "out"], capsys
    )
    line = _error_line(stderr)
    assert status == 1 and line.startswith("trl-pro eval: error:") and f"{data}: Row 1, field 'prompt'" in line
    status, _, stderr = _eval(
        [
            "--dataset_name",
            tmp_path / "missing.parquet",
            "--system",
            f"canned={canned}",
            "--output_dir",
            tmp_path / "out",
        ],
        capsys,
    )
    assert status == 1 and "missing.parquet does not exist" in _error_line(stderr)


def test_judge_reads_its_test_data_as_eval_does(tmp_path, capsys):
    from trl_pro.scripts.judge import cli_main

    rows = _hh_rows()
    data = load_test_data([str(_write(tmp_path / "test.jsonl", rows))])
    first = _canned(tmp_path / "pro.jsonl", data, "first")
    second = _canned(tmp_path / "rrhf.jsonl", data, "second")
    for suffix in ("parquet", "csv"):
        path = _write(tmp_path / f"test.{suffix}", rows)
        out = tmp_path / f"out_{suffix}"
        status, _, stderr = _run(
            cli_main,
            [
                "--dataset_name",
                path,
                "--responses",
                first,
                second,
                "--max_samples",
                1,
                "--export_human",
                "--output_dir",
                out,
            ],
            capsys,
        )
        assert status == 0, stderr[-3000:]
        with open(out / judges.HUMAN_SHEET, newline="") as f:
            sheet = list(csv.DictReader(f))
        # One prompt of each subset (--max_samples 1), the subsets from the test data
        assert [(row["prompt"], row["subset"]) for row in sheet] == [
            (data[s][0].prompt, s) for s in ("harmless_base", "helpful_base")
        ]


# ---------------------------------------------------------------------------------------------------------------------
# The eval extra, checked first


@pytest.mark.parametrize("module", ["nltk", "sacrebleu", "matplotlib"])
def test_eval_without_its_extra_fails_before_loading_a_model(tiny_policy_dir, tmp_path, capsys, monkeypatch, module):
    from trl_pro.evaluation import systems

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the dependencies were checked")

    monkeypatch.setattr(systems, "load_policy", no_loading)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError, as when not installed
    out = tmp_path / "out"
    status, _, stderr = _eval(["--system", f"tiny={tiny_policy_dir}", "--max_samples", 2, "--output_dir", out], capsys)
    lines = stderr.strip().splitlines()
    assert status == 1 and len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("trl-pro eval: error:") and module in lines[0]
    assert "pip install 'trl-pro[eval]'" in lines[0]
    assert not (out / "responses").exists()


# ---------------------------------------------------------------------------------------------------------------------
# results.png


def _results(systems, subsets, value=lambda k, i: 40.0 + k + i / 10):
    out = {}
    for k, system in enumerate(systems):
        by_subset = {
            s: {"bleu": value(k, i), "sacrebleu": 1.0, "reward": 60.0 - k, "n": 3} for i, s in enumerate(subsets)
        }
        by_subset["total"] = {"bleu": 41.0 + k, "sacrebleu": 1.0, "reward": 60.0 - k, "n": 3 * len(subsets)}
        out[system] = by_subset
    return out


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures `plot_results` saves, drawn with the Agg renderer: their axes' xtick labels and the window extents
    of their value labels (each axes' texts), taken when saved."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig

    def savefig(fig, *args, **kwargs):
        result = original(fig, *args, **kwargs)
        renderer = fig.canvas.get_renderer()
        saved.append(
            [
                {
                    "groups": [t.get_text() for t in ax.get_xticklabels()],
                    "labels": [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts],
                }
                for ax in fig.axes
            ]
        )
        return result

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def test_plot_with_one_subset_has_no_total_group(tmp_path, saved_figures):
    from trl_pro.evaluation.report import plot_results

    plot_results(_results(["pro", "sft"], ["harmless_base"]), tmp_path / "one.png")
    (axes,) = saved_figures
    assert [ax["groups"] for ax in axes] == [["harmless_base"], ["harmless_base"]]  # BLEU and Reward
    assert (tmp_path / "one.png").read_bytes()[:4] == b"\x89PNG"
    plot_results(_results(["pro", "sft"], ["harmless_base", "helpful_base"]), tmp_path / "two.png")
    assert saved_figures[1][0]["groups"] == ["harmless_base", "helpful_base", "total"]


@pytest.mark.parametrize(
    "subsets", [["harmless_base"], ["harmless_base", "helpful_base", "helpful_online", "helpful_rejection"]]
)
def test_plot_value_labels_of_seven_systems_do_not_overlap(tmp_path, saved_figures, subsets):
    from trl_pro.evaluation.report import plot_results

    systems = ["sft", "pro", "rrhf", "dpo", "coh", "ppo", "chatgpt"]
    # Near-equal values: every label at about the same height, the case where they run together
    plot_results(_results(systems, subsets, value=lambda k, i: 33.3 + k / 100), tmp_path / "results.png")
    (axes,) = saved_figures
    for ax in axes:
        boxes = [box for text, box in ax["labels"] if text]
        assert len(boxes) == len(systems) * len(ax["groups"])
        overlapping = [
            (i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])
        ]
        assert not overlapping, [(ax["labels"][i][0], ax["labels"][j][0]) for i, j in overlapping[:5]]
