"""Every bad-row case raises a ValueError naming the row and the field; good rows of every format are accepted."""

import math

import pytest
from datasets import Dataset

from trl_pro.data.formats import RANKED, to_ranking
from trl_pro.trainers.pro_trainer import PROTrainer


GOOD = {"prompt": "The sky is", "completions": [" blue", " green", " red"], "scores": [3.0, 2.0, 1.0]}


def build(rows, tokenizer, tiny_model, make_config, **config):
    return PROTrainer(
        tiny_model, args=make_config(**config), train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )


BAD_RANKED_ROWS = [
    ({"prompt": "x", "completions": " only one", "scores": [1.0, 0.0]}, "completions", "expected a list"),
    ({"prompt": "x", "completions": [" only one"], "scores": [1.0]}, "completions", "at least 2"),
    ({"prompt": "x", "completions": [" a", " b"], "scores": [1.0]}, "scores", "1 scores for 2"),
    ({"prompt": "x", "completions": [" a", " b"], "scores": [1.0, math.nan]}, "scores[1]", "finite"),
    ({"prompt": "x", "completions": [" a", " b"], "scores": [math.inf, 0.0]}, "scores[0]", "finite"),
    ({"prompt": "x", "completions": [" a", "  "], "scores": [1.0, 0.0]}, "completions[1]", "empty completion"),
    ({"prompt": "x", "completions": [" a", 7], "scores": [1.0, 0.0]}, "completions[1]", "expected a string"),
    ({"prompt": 3, "completions": [" a", " b"], "scores": [1.0, 0.0]}, "prompt", "expected a string"),
    ({"prompt": "x", "completions": [" a", " b"], "scores": None}, "scores", "some rows"),
    ({"prompt": "x", "completions": [" a", " b"], "scores": [1.0, 0.0], "sft_index": 5}, "sft_index", "index"),
]
ARROW_REPRESENTABLE = {
    "completions[1]-empty completion",
    "scores-1 scores for 2",
    "scores[1]-finite",
    "scores[0]-finite",
    "scores-some rows",
    "sft_index-index",
    "completions-at least 2",
}


@pytest.mark.parametrize("bad_row,field,reason", BAD_RANKED_ROWS)
def test_bad_ranked_rows(bad_row, field, reason, tokenizer):
    """The row validator, as `datasets.map` calls it (any row type, e.g. from a generator or a JSON file)."""
    with pytest.raises(ValueError) as error:
        to_ranking({"sft_index": None, **bad_row}, 2, RANKED, expect_scores=True)
    message = str(error.value)
    assert message.startswith(f"Row 2, field '{field}'") and reason in message


@pytest.mark.parametrize(
    "bad_row,field,reason", [case for case in BAD_RANKED_ROWS if f"{case[1]}-{case[2]}" in ARROW_REPRESENTABLE]
)
def test_bad_ranked_rows_through_trainer(bad_row, field, reason, tokenizer, tiny_model, make_config):
    rows = [dict(GOOD, sft_index=None), dict(GOOD, sft_index=None), {"sft_index": None, **bad_row}]
    with pytest.raises(ValueError) as error:
        build(rows, tokenizer, tiny_model, make_config)
    message = str(error.value)
    assert "Row 2" in message and f"'{field}'" in message and reason in message


def test_ill_typed_column(tokenizer, tiny_model, make_config):
    rows = [{"prompt": "x", "completions": " not a list"}]
    with pytest.raises(ValueError, match=r"Row 0, field 'completions': expected a list"):
        build(rows, tokenizer, tiny_model, make_config)


def test_missing_fields(tokenizer, tiny_model, make_config):
    with pytest.raises(ValueError, match="Unrecognized dataset columns"):
        build([{"prompt": "x", "answers": [" a", " b"]}], tokenizer, tiny_model, make_config)
    with pytest.raises(ValueError, match=r"Row 1, field 'rejected': missing"):
        build(
            [{"chosen": "a b", "rejected": "a c"}, {"chosen": "a b", "rejected": None}],
            tokenizer,
            tiny_model,
            make_config,
        )


def test_bad_pairwise_rows(tokenizer, tiny_model, make_config):
    rows = [{"prompt": "Q", "chosen": " yes", "rejected": " no"}, {"prompt": "Q", "chosen": " yes", "rejected": ""}]
    with pytest.raises(ValueError, match=r"Row 1, field 'rejected': empty completion"):
        build(rows, tokenizer, tiny_model, make_config)
    rows = [{"prompt": "Q", "chosen": " y", "rejected": " n", "score_chosen": 1.0, "score_rejected": None}]
    with pytest.raises(ValueError, match=r"Row 0, field 'score_chosen'"):
        build(rows, tokenizer, tiny_model, make_config)
    rows = [{"prompt": "Q", "chosen": " y", "rejected": " n", "score_chosen": 1.0, "score_rejected": math.nan}]
    with pytest.raises(ValueError, match=r"Row 0, field 'score_chosen/score_rejected\[1\]'.*finite"):
        build(rows, tokenizer, tiny_model, make_config)


def test_bad_authors_rows(tokenizer, tiny_model, make_config):
    rows = [
        {
            "prefix": [["<|prompter|>Hi<|assistant|>"], ["<|prompter|>Other<|assistant|>"]],
            "suffix": ["Hello", "Go away"],
            "reward": [1.0, 0.0],
            "sft_index": 0,
        }
    ]
    with pytest.raises(ValueError, match=r"Row 0, field 'prefix'.*share one prompt"):
        build(rows, tokenizer, tiny_model, make_config)


def test_prompt_longer_than_max_length(tokenizer, tiny_model, make_config):
    rows = [GOOD, dict(GOOD, prompt="word " * 200)]
    # Without prompt truncation (-1), every completion would be empty after truncation: a clear error
    with pytest.raises(ValueError, match=r"Row 1, field 'prompt'.*no room for a completion"):
        build(rows, tokenizer, tiny_model, make_config, max_length=64, max_prompt_length=-1)
    # With `max_prompt_length`, the prompt is truncated from the left and the completion kept
    trainer = build(rows, tokenizer, tiny_model, make_config, max_length=64, max_prompt_length=16)
    row = trainer.train_dataset[1]
    assert len(row["prompt_ids"]) == 16 and all(len(ids) >= 1 for ids in row["completion_ids"])
    assert row["prompt_ids"] == tokenizer("word " * 200)["input_ids"][-16:]


def test_completions_truncated_from_the_right_with_eos(tokenizer, tiny_model, make_config):
    rows = [dict(GOOD, completions=[" long " * 100, " b", " c"])]
    trainer = build(rows, tokenizer, tiny_model, make_config, max_length=32, max_prompt_length=8)
    row = trainer.train_dataset[0]
    assert len(row["prompt_ids"]) + len(row["completion_ids"][0]) == 32
    assert row["completion_ids"][1][-1] == tokenizer.eos_token_id  # short ones end with EOS


def test_scores_sort_candidates_stably_and_max_completions(tokenizer, tiny_model, make_config):
    rows = [{"prompt": "P", "completions": [" c", " a", " b", " d"], "scores": [1.0, 3.0, 1.0, 0.0], "sft_index": 2}]
    trainer = build(rows, tokenizer, tiny_model, make_config, max_completions=3)
    row = trainer.train_dataset[0]
    decoded = [tokenizer.decode(ids[:-1]) for ids in row["completion_ids"]]
    assert decoded == [" a", " c", " b"]  # sorted descending, ties in input order, worst dropped
    assert row["scores"] == [3.0, 1.0, 1.0]
    assert row["sft_index"] == 2  # follows candidate " b" to its new position


# Raw HH-RLHF prompts end at the turn marker -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hh_test_rows():
    from trl_pro.assets import load_hh_rlhf_slice

    return load_hh_rlhf_slice("test").to_list()


def test_hh_rlhf_prompt_ends_at_the_last_assistant_marker(hh_test_rows):
    from trl_pro.data.formats import PAIRWISE, to_ranking
    from trl_pro.scripts.prepare_data import _hh_ranking

    shared_first_word = 0
    for index, row in enumerate(hh_test_rows):
        ranking = to_ranking(row, index, PAIRWISE, expect_scores=False)
        prompt, (chosen, rejected) = ranking["prompt"], ranking["completions"]
        assert prompt.endswith("\n\nAssistant:"), (index, prompt[-40:])
        assert prompt + chosen == row["chosen"] and prompt + rejected == row["rejected"]
        assert "\n\nAssistant:" not in chosen and "\n\nAssistant:" not in rejected  # only the last response differs
        if chosen.split()[0] == rejected.split()[0]:
            shared_first_word += 1
            assert chosen.startswith(" ") and rejected.startswith(" ")  # the shared word stays in the response
        # `prepare_data --source hh-rlhf` splits the raw rows the same way
        assert _hh_ranking(row, index)["prompt"] == prompt and _hh_ranking(row, index)["completions"] == [
            chosen,
            rejected,
        ]
    assert shared_first_word >= 10  # the slice has such rows ("...Assistant: I" + "'m afraid" before the fix)


def test_other_implicit_prompts_keep_trls_common_prefix():
    from trl_pro.data.formats import PAIRWISE, to_ranking

    text = to_ranking({"chosen": "The sky is blue.", "rejected": "The sky is green."}, 0, PAIRWISE, False)
    assert text["prompt"] == "The sky is" and text["completions"] == [" blue.", " green."]
    user = {"role": "user", "content": "Sky?"}
    messages = to_ranking(
        {
            "chosen": [user, {"role": "assistant", "content": "Blue."}],
            "rejected": [user, {"role": "assistant", "content": "Green."}],
        },
        0,
        PAIRWISE,
        False,
    )
    assert messages["prompt"] == [user] and messages["completions"][1] == [{"role": "assistant", "content": "Green."}]
