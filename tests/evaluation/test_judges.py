"""`trl-pro judge` and `trl_pro.evaluation.judges`: verdict parsing, both orders averaged, invalid kept apart, the on-disk cache,
a real OpenAI-compatible endpoint (`transformers serve`), a failing endpoint, a local LM judge, and the human sheet."""

import csv
import json
import socket

import pytest

from trl_pro.evaluation import judges
from trl_pro.utils.io import read_jsonl_cache


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pairs(n=2, subset="harmless_base"):
    return [
        judges.Pair(f"\n\nHuman: question {i}?\n\nAssistant:", subset, f"first answer {i}", f"second answer {i}")
        for i in range(n)
    ]


def _closed_port_url():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there once the socket is closed


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("A is more helpful. [[A]]", "A"),
        ("Both fine.\n[[C]]", "C"),
        ('Format: "[[A]]" if A is better... Final verdict: [[B]]', "B"),  # the last one is the verdict
        ("I prefer assistant A.", None),
        ("[A]", None),
        ("", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert judges.parse_verdict(text) == verdict


def test_prompt_is_mt_bench_pairwise_adapted():
    prompt = judges.judge_prompt("\n\nHuman: hi\n\nAssistant:", "one", "two")
    assert prompt.startswith("[User Question]\nHuman: hi\n\nAssistant:\n\n[The Start of Assistant A's Answer]\none\n")
    assert prompt.endswith("[The Start of Assistant B's Answer]\ntwo\n[The End of Assistant B's Answer]")
    assert '"[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.' in (
        judges.JUDGE_SYSTEM_PROMPT
    )


def test_both_orders_averaged_invalid_reported_apart():
    # Pair 0: the first system wins in both orders; pair 1: position-biased judge (always A) -> one win, one loss;
    # pair 2 (other subset): a tie and an unparsable answer
    records = [
        {"subset": "s1", "outcome": judges.outcome("A", True)},
        {"subset": "s1", "outcome": judges.outcome("B", False)},
        {"subset": "s1", "outcome": judges.outcome("A", True)},
        {"subset": "s1", "outcome": judges.outcome("A", False)},
        {"subset": "s2", "outcome": judges.outcome("C", True)},
        {"subset": "s2", "outcome": judges.outcome(None, False)},
    ]
    table = judges.summarize(records)
    assert table["s1"] == {"win": 75.0, "tie": 0.0, "lose": 25.0, "invalid": 0.0, "n": 4}
    assert table["s2"] == {"win": 0.0, "tie": 50.0, "lose": 0.0, "invalid": 50.0, "n": 2}
    # Average over subsets, as the paper's Tables 3/4 (not over judgments)
    assert table["average"] == {"win": 37.5, "tie": 25.0, "lose": 12.5, "invalid": 25.0, "n": 6}
    text = judges.format_table(table, "pro", "rrhf", "test")
    assert "| Average | 37.50 | 25.00 | 12.50 | 25.00 | 6 |" in text and "invalid" in text


def test_openai_endpoint_judge_caches_and_resumes(openai_server, tmp_path):
    judge = judges.OpenAIJudge(
        openai_server.model,
        openai_server.base_url,
        max_tokens=8,
        max_retries=1,
        backoff=0.01,
        system_prompt_in_user=True,
    )
    pairs = _pairs(2)
    records = judges.judge_pairs(judge, pairs, tmp_path, progress=False)
    assert judge.num_requests == 4  # two pairs, two orders each
    assert [(r["pair"], r["order"]) for r in records] == [
        (0, "first-as-A"),
        (0, "first-as-B"),
        (1, "first-as-A"),
        (1, "first-as-B"),
    ]
    cached = read_jsonl_cache(tmp_path / judges.JUDGMENTS_FILE)
    assert len(cached) == 4 and all(isinstance(row["output"], str) for row in cached)
    # The served model's real answers decide each outcome (a tiny random model rarely writes a verdict: invalid)
    for record, row in zip(records, cached):
        first_is_a = record["order"] == "first-as-A"
        assert record["outcome"] == judges.outcome(judges.parse_verdict(row["output"]), first_is_a)
    table = judges.summarize(records)
    assert sum(table["harmless_base"][k] for k in judges.OUTCOMES) == pytest.approx(100.0)

    # A rerun asks nothing; with one more pair it asks only for that pair
    rerun = judges.OpenAIJudge(openai_server.model, openai_server.base_url, max_tokens=8, system_prompt_in_user=True)
    assert judges.judge_pairs(rerun, pairs, tmp_path, progress=False) == records and rerun.num_requests == 0
    judges.judge_pairs(rerun, _pairs(3), tmp_path, progress=False)
    assert rerun.num_requests == 2


def test_failing_endpoint_retries_then_names_the_pair_and_keeps_the_cache(tmp_path):
    # Two judgments are cached already (as a run interrupted by an outage leaves them)
    pairs = _pairs(2)
    cache = tmp_path / judges.JUDGMENTS_FILE
    judge = judges.OpenAIJudge("judge", _closed_port_url(), max_retries=2, backoff=0.01, timeout=5)
    done = []
    for first_is_a in (True, False):
        a, b = (pairs[0].first, pairs[0].second) if first_is_a else (pairs[0].second, pairs[0].first)
        user_prompt = judges.judge_prompt(pairs[0].prompt, a, b)
        key = judges.judgment_key(judge.cache_identity, judges.JUDGE_SYSTEM_PROMPT, user_prompt)
        done.append({"key": key, "judge": "openai:judge", "output": "[[A]]"})
    cache.write_text("".join(json.dumps(row) + "\n" for row in done))
    with pytest.raises(judges.JudgeError, match=r"pair 1 \(subset harmless_base, first system as A.*failed 3 times"):
        judges.judge_pairs(judge, pairs, tmp_path, progress=False)
    assert judge.num_requests == 3  # 1 try + 2 retries, for the first uncached judgment only
    assert read_jsonl_cache(cache) == done


def test_local_lm_judge(tiny_policy_dir, tmp_path):
    judge = judges.LocalJudge(str(tiny_policy_dir), max_new_tokens=4)
    records = judges.judge_pairs(judge, _pairs(1), tmp_path, progress=False)
    assert len(records) == 2 and judge.num_requests == 2
    # The tiny tokenizer's template has no system role: the instructions open the user turn
    rendered = judge._render("SYSTEM", "USER")
    assert rendered.startswith("\n\nHuman: SYSTEM\n\nUSER") and rendered.endswith("\n\nAssistant:")


def test_human_sheet_round_trip(tmp_path):
    pairs = _pairs(6, "helpful_base")
    sheet, key = judges.export_human_sheet(pairs, tmp_path, seed=3, names=("alpha", "beta"))
    again = tmp_path / "again"
    judges.export_human_sheet(pairs, again, seed=3, names=("alpha", "beta"))
    assert (again / judges.HUMAN_SHEET).read_text() == sheet.read_text()  # the seed fixes the order
    order = json.loads(key.read_text())
    assert order["seed"] == 3 and {row["A"] for row in order["rows"]} == {"alpha", "beta"}  # both orders occur
    rows = list(csv.DictReader(open(sheet, newline="")))
    assert "alpha" not in sheet.read_text() and "beta" not in sheet.read_text()  # blind
    assert set(rows[0]) == {"id", "subset", "prompt", "response_A", "response_B", "label"}
    # A labeller who prefers the first system on pairs 0-3, calls pair 4 a tie, leaves pair 5 blank
    for row, entry in zip(rows, order["rows"]):
        i = int(row["id"])
        row["label"] = ("A" if entry["first_is_A"] else "b") if i < 4 else ("Tie" if i == 4 else "")
    with open(sheet, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = judges.summarize(judges.import_human_labels(sheet, key))
    assert table["helpful_base"]["win"] == pytest.approx(400 / 6) and table["helpful_base"]["lose"] == 0
    assert table["helpful_base"]["tie"] == pytest.approx(100 / 6)
    assert table["helpful_base"]["invalid"] == pytest.approx(100 / 6)
    rows[2]["label"] = "maybe"
    with open(sheet, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError, match="line 4, field 'label': 'maybe'"):
        judges.import_human_labels(sheet, key)


def test_cli_judge(tmp_path, capsys):
    from trl_pro.scripts.judge import cli_main

    prompts = [p.prompt for p in _pairs(3)]
    a, b = tmp_path / "pro.jsonl", tmp_path / "rrhf.jsonl"
    a.write_text("".join(json.dumps({"prompt": p, "response": "A", "subset": "s"}) + "\n" for p in prompts))
    b.write_text("".join(json.dumps({"prompt": p, "response": "B", "subset": "s"}) + "\n" for p in prompts[:2]))

    def run(*argv):
        try:
            cli_main(list(argv))
            status = 0
        except SystemExit as exit_:
            status = exit_.code
        return status, capsys.readouterr()

    status, captured = run("--responses", str(a), str(b), "--export_human", "--output_dir", str(tmp_path / "o"))
    assert status == 1 and captured.err.count("\n") == 1
    assert "trl-pro judge: error:" in captured.err and "no response for 1 of the 3 test prompts" in captured.err
    b.write_text("".join(json.dumps({"prompt": p, "response": "B", "subset": "s"}) + "\n" for p in prompts))
    status, captured = run(
        "--responses", str(a), "--responses", str(b), "--export_human", "--output_dir", str(tmp_path / "o")
    )
    assert status == 0 and (tmp_path / "o" / judges.HUMAN_SHEET).exists(), captured.err
    status, captured = run("--responses", str(a), str(b), "--output_dir", str(tmp_path / "o"))
    assert status == 1 and "no judge" in captured.err
    status, captured = run("--responses", str(a), "--output_dir", str(tmp_path / "o"), "--model", "m")
    assert status == 1 and "exactly two responses files" in captured.err


def test_cli_judge_against_the_served_model(openai_server, tmp_path, capsys):
    from trl_pro.scripts.judge import cli_main

    prompts = [p.prompt for p in _pairs(2)]
    for name in ("one", "two"):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(
                json.dumps({"prompt": p, "response": f"{name} says hi", "subset": "harmless_base"}) + "\n"
                for p in prompts
            )
        )
    out = tmp_path / "judged"
    cli_main(
        [
            "--responses",
            f"pro={tmp_path / 'one.jsonl'}",
            f"rrhf={tmp_path / 'two.jsonl'}",
            "--base_url",
            openai_server.base_url,
            "--model",
            openai_server.model,
            "--system_prompt_in_user",
            "--max_tokens",
            "4",
            "--output_dir",
            str(out),
        ]
    )
    result = json.loads((out / "judge_results.json").read_text())
    assert result["first"] == "pro" and result["second"] == "rrhf" and len(result["judgments"]) == 4
    assert result["table"]["average"]["n"] == 4
    assert "pro vs. rrhf" in (out / "judge_results.md").read_text() and "| Average |" in capsys.readouterr().out
