"""Chain of Hindsight: the data transform, the answer-only loss mask, and SFTTrainer training on it."""

import pytest
import torch
from datasets import Dataset

from trl_pro.data.coh import (
    NEGATIVE_PHRASE,
    POSITIVE_PHRASE,
    coh_prompt,
    coh_rows,
    coh_rows_from_ranking,
    tokenize_coh,
    tokenize_coh_dataset,
)


RANKED = [
    {
        "prompt": "\n\nHuman: Hi?\n\nAssistant:",
        "completions": [" Middle.", " Best answer.", " Worst."],
        "scores": [0.5, 2.0, -1.0],
    },
    {
        "prompt": "\n\nHuman: How are you?\n\nAssistant:",
        "completions": [" Fine, thanks.", " Go away.", " Meh."],
        "scores": [1.0, -3.0, 0.0],
    },
]


def test_rows_pair_the_best_with_the_worst_in_both_orders():
    rows = coh_rows_from_ranking({"prompt": "P", "completions": [" a", " b", " c"]}, 0)
    assert rows == [
        {
            "prompt": "P",
            "segments": [POSITIVE_PHRASE, " a", NEGATIVE_PHRASE, " c"],
            "segment_is_answer": [False, True, False, True],
        },
        {
            "prompt": "P",
            "segments": [NEGATIVE_PHRASE, " c", POSITIVE_PHRASE, " a"],
            "segment_is_answer": [False, True, False, True],
        },
    ]
    assert coh_prompt("P") == "P A helpful answer:"


def test_scored_rankings_are_sorted_before_pairing():
    rows = coh_rows(Dataset.from_list(RANKED))
    assert len(rows) == 4  # two sequences per ranking
    assert rows[0]["segments"] == [POSITIVE_PHRASE, " Best answer.", NEGATIVE_PHRASE, " Worst."]
    assert rows[3]["segments"] == [NEGATIVE_PHRASE, " Go away.", POSITIVE_PHRASE, " Fine, thanks."]
    # TRL pairs with an implicit prompt: chosen is better
    pairs = coh_rows(
        Dataset.from_list([{"chosen": "\n\nHuman: x\n\nAssistant: yes", "rejected": "\n\nHuman: x\n\nAssistant: no"}])
    )
    assert pairs[0]["prompt"] == "\n\nHuman: x\n\nAssistant:"
    assert pairs[0]["segments"] == [POSITIVE_PHRASE, " yes", NEGATIVE_PHRASE, " no"]


@pytest.mark.parametrize(
    "rows, match",
    [
        ([RANKED[0], {**RANKED[1], "completions": [" a", " b", "  "]}], r"Row 1, field 'completions\[2\]'"),
        (
            [
                {
                    "prompt": [{"role": "user", "content": "hi"}],
                    "completions": [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]],
                }
            ],
            "Row 0, field 'prompt'",
        ),
        ([{"prompt": "p", "completions": [" a"]}], "Row 0, field 'completions'"),
    ],
)
def test_bad_rows_name_the_row_and_field(rows, match):
    with pytest.raises(ValueError, match=match):
        coh_rows(Dataset.from_list(rows))


def test_loss_mask_covers_the_answers_and_their_eos_only(tokenizer):
    row = coh_rows_from_ranking(RANKED[0] | {"completions": [" Best answer.", " Middle.", " Worst."]}, 0)[0]
    out = tokenize_coh(row, tokenizer, max_length=512, max_prompt_length=384)
    ids, mask = out["input_ids"], out["completion_mask"]
    assert len(ids) == len(mask)
    answer_ids = [i for i, m in zip(ids, mask) if m]
    eos = tokenizer.eos_token
    assert tokenizer.decode(answer_ids) == f" Best answer.{eos} Worst.{eos}"
    context_ids = [i for i, m in zip(ids, mask) if not m]
    assert tokenizer.decode(context_ids) == RANKED[0]["prompt"] + POSITIVE_PHRASE + NEGATIVE_PHRASE
    # the prompt keeps its last tokens, the sequence is cut from the right
    short = tokenize_coh(row, tokenizer, max_length=None, max_prompt_length=2)
    assert short["completion_mask"][:2] == [0, 0] and len(short["input_ids"]) < len(ids)
    cut = tokenize_coh(row, tokenizer, max_length=len(ids) - 3, max_prompt_length=384)
    assert cut["input_ids"] == ids[:-3]
    with pytest.raises(ValueError, match="Row 5, field 'prompt': no answer token"):
        tokenize_coh(row, tokenizer, max_length=3, max_prompt_length=None, index=5)


def test_sft_trainer_puts_no_loss_on_prompt_and_feedback_phrases(tokenizer, tmp_path):
    from trl import SFTConfig, SFTTrainer

    from trl_pro.assets import build_tiny_llama

    data = tokenize_coh_dataset(Dataset.from_list(RANKED), tokenizer, max_length=128, max_prompt_length=64)
    model = build_tiny_llama(seed=0)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(tmp_path),
            completion_only_loss=True,
            max_steps=2,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            bf16=False,
            use_cpu=True,
            gradient_checkpointing=False,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            max_length=128,
            logging_steps=1,
        ),
        train_dataset=data,
        processing_class=tokenizer,
    )
    # labels are the answer tokens, -100 elsewhere
    for example, prepared in zip(data, trainer.train_dataset):
        expected = [i if m else -100 for i, m in zip(example["input_ids"], example["completion_mask"])]
        assert prepared["labels"] == expected
    # the trainer's loss on a batch is the NLL of the answer tokens alone
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    token_nll = torch.nn.functional.cross_entropy(logits[:, :-1][keep], labels[keep], reduction="mean")
    torch.testing.assert_close(loss, token_nll, rtol=1e-4, atol=1e-4)

    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in trainer.state.log_history if "loss" in log)
