"""Shared-prompt layout: one packed row per ranking gives exactly the plain layout's loss, scores and gradients."""

import warnings

import pytest
import torch
from datasets import Dataset
from helpers.rankings import hh_ranking_examples

from trl_pro.assets import build_tiny_llama, load_hh_rlhf_slice
from trl_pro.data.collator import DataCollatorForRanking
from trl_pro.data.layout import RankingLayout
from trl_pro.loss_core.head import add_ranking_loss_head
from trl_pro.loss_core.shared_prompt import allowed, block_mask, position_ids, score_indices, shared_prompt_mask_mod
from trl_pro.trainers.pro_config import PROConfig
from trl_pro.trainers.pro_trainer import PROTrainer


@pytest.fixture(scope="module")
def examples(tokenizer):
    # max_prompt_length truncates the longer prompts from the left, max_length the completions from the right
    return hh_ranking_examples(tokenizer, max_length=96, max_prompt_length=64)


def _forward(model, batch, sft_weight=0.1):
    layout = RankingLayout(batch["token_offsets"], batch["ranking_offsets"], batch["sft_candidate"])
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        ranking_inputs={
            "completion_mask": batch["completion_mask"],
            "segment_ids": batch.get("segment_ids"),
            "layout": layout,
            "rewards": batch["rewards"],
            "sft_weight": sft_weight,
            "implementation": "torch",
        },
    )


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    output = _forward(model, batch)
    output.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return output, grads


def _assert_close(actual, expected, name):
    error = (actual - expected).norm() / expected.norm().clamp_min(1e-30)
    assert error <= 1e-5, f"{name}: relative error {error:.2e}"


def _collate(examples, shared, pad_to_multiple_of=None):
    return DataCollatorForRanking(pad_token_id=0, shared_prompt=shared, pad_to_multiple_of=pad_to_multiple_of)(
        examples
    )


def test_packed_rows_score_the_same_tokens_from_the_same_positions(examples):
    plain, shared = _collate(examples, False), _collate(examples, True, pad_to_multiple_of=8)
    assert shared["input_ids"].shape[0] == len(examples) and shared["input_ids"].shape[1] % 8 == 0
    processed = shared["attention_mask"].sum()
    expected = sum(len(e["prompt_ids"]) + sum(map(len, e["completion_ids"])) for e in examples)
    assert processed == expected < plain["attention_mask"].sum()
    for key in ("token_offsets", "ranking_offsets", "sft_candidate", "rewards"):
        assert torch.equal(plain[key], shared[key]), key
    # Targets: the same tokens in the same order
    predicts = plain["completion_mask"][:, 1:].bool()
    plain_targets = plain["input_ids"][:, 1:][predicts]
    hidden_index, target_index = score_indices(shared["segment_ids"])
    assert torch.equal(shared["input_ids"].flatten()[target_index], plain_targets)
    # The predicting position carries the same token and position id as in the plain row (same context)
    plain_positions = torch.arange(plain["input_ids"].shape[1]).expand_as(plain["input_ids"])
    shared_positions = position_ids(shared["segment_ids"])
    assert torch.equal(shared_positions.flatten()[hidden_index], plain_positions[:, :-1][predicts])
    assert torch.equal(shared["input_ids"].flatten()[hidden_index], plain["input_ids"][:, :-1][predicts])
    assert torch.equal(shared_positions.flatten()[target_index], plain_positions[:, 1:][predicts])


def test_mask_lets_each_candidate_see_the_prompt_and_itself_only():
    segments = torch.tensor([[0, 0, 1, 1, 2, 2, 2, -1], [0, 1, 2, 3, 3, -1, -1, -1]])
    mask = allowed(segments)
    for b in range(2):
        for q in range(8):
            for k in range(8):
                sq, sk = segments[b, q].item(), segments[b, k].item()
                assert mask[b, q, k] == (k <= q and (sk == 0 or sk == sq)), (b, q, k)
    assert mask.any(dim=-1).all()  # no empty row (padding sees the prompt)


def test_block_mask_equals_the_dense_mask(examples):
    """The flex-attention BlockMask (GPU path; built here, not run on GPU) encodes exactly the dense mask."""
    from torch.nn.attention.flex_attention import create_mask

    segments = _collate(examples, True, pad_to_multiple_of=16)["segment_ids"]
    batch, length = segments.shape
    dense = allowed(segments)
    elementwise = create_mask(shared_prompt_mask_mod(segments), batch, 1, length, length, device="cpu")
    assert torch.equal(elementwise[:, 0], dense)
    block = 16
    blocks = block_mask(segments, block_size=block)
    assert blocks.shape == (batch, 1, length, length)
    tiles = dense.view(batch, length // block, block, length // block, block).transpose(2, 3)
    any_true, all_true = tiles.any(dim=(-1, -2)), tiles.all(dim=(-1, -2))
    assert torch.equal(blocks.to_dense()[:, 0].bool(), any_true)  # every attended element's block is computed
    full = torch.zeros_like(all_true)
    for b in range(batch):
        for q in range(length // block):
            count = blocks.full_kv_num_blocks[b, 0, q]
            full[b, q, blocks.full_kv_indices[b, 0, q, :count]] = True
    assert torch.equal(full, all_true)  # blocks skipped from masking are exactly the all-True ones
    assert not any_true.all()  # and some blocks (one candidate against another) are skipped


@pytest.mark.parametrize(
    "attention, lora, checkpointing",
    [
        ("sdpa", False, False),
        ("eager", False, False),
        ("sdpa", True, False),
        ("sdpa", False, True),
        ("eager", True, True),
    ],
)
def test_shared_layout_equals_plain_layout(examples, attention, lora, checkpointing):
    model = build_tiny_llama(seed=0)
    model.config._attn_implementation = attention
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
        add_ranking_loss_head(model.get_base_model())
    else:
        add_ranking_loss_head(model)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    plain_out, plain_grads = _loss_and_grads(model, _collate(examples, False))
    shared_out, shared_grads = _loss_and_grads(model, _collate(examples, True))
    _assert_close(shared_out.loss, plain_out.loss, "loss")
    _assert_close(shared_out.scores, plain_out.scores, "scores")
    _assert_close(shared_out.sft_nll, plain_out.sft_nll, "sft_nll")
    assert plain_grads.keys() == shared_grads.keys() and len(plain_grads) > 0
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert list(plain_grads) == trained and all("lora_" in name for name in trained) == lora
    for name in plain_grads:
        _assert_close(shared_grads[name], plain_grads[name], name)


def _trainer(tokenizer, model, tmp_path, shared_prompt, **overrides):
    rows = [
        {
            "prompt": f"Question {i}: what is {i} plus {i}?",
            "completions": [f" It is {2 * i}." + " Sure." * j for j in range(2 + i % 3)],
            "scores": [float(-j) for j in range(2 + i % 3)],
        }
        for i in range(4)
    ]
    kwargs = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=1e-3,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        max_length=24,
        max_prompt_length=8,
        shared_prompt=shared_prompt,
        logging_steps=1,
    )
    config = PROConfig(**{**kwargs, **overrides})
    return PROTrainer(model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def test_trainer_step_with_shared_prompt_equals_plain(tokenizer, tmp_path):
    params = {}
    for shared in (False, True):
        trainer = _trainer(
            tokenizer, build_tiny_llama(seed=0), tmp_path / str(shared), shared, gradient_checkpointing=True
        )
        assert trainer.data_collator.shared_prompt is shared
        trainer.train()
        params[shared] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        logs = [log for log in trainer.state.log_history if "loss" in log]
        params[shared]["loss"] = torch.tensor(logs[0]["loss"])
    # One Adam step from the same start with (numerically) the same gradients: the same parameters
    for name, value in params[False].items():
        torch.testing.assert_close(params[True][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_backend_without_custom_mask_falls_back_with_one_warning(tokenizer, tmp_path):
    model = build_tiny_llama(seed=0)
    model.config._attn_implementation = "flash_attention_2"  # as loaded with attn_implementation=...
    with pytest.warns(UserWarning, match="shared_prompt=True needs an attention backend") as record:
        trainer = _trainer(tokenizer, model, tmp_path / "true", True)
    assert sum("shared_prompt" in str(w.message) for w in record) == 1
    assert trainer.data_collator.shared_prompt is False
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        trainer = _trainer(tokenizer, model, tmp_path / "auto", "auto")  # auto: plain, silently
    assert trainer.data_collator.shared_prompt is False


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (True, True), ("false", False), ("true", True)])
def test_config_values(value, expected, tmp_path):
    assert PROConfig(output_dir=str(tmp_path), shared_prompt=value, use_cpu=True, bf16=False).shared_prompt == expected


def test_config_rejects_other_values(tmp_path):
    with pytest.raises(ValueError, match="shared_prompt"):
        PROConfig(output_dir=str(tmp_path), shared_prompt="sometimes", use_cpu=True, bf16=False)


def _scored_hh_rows(lengths=(2, 4, 3, 3)):
    """Raw ragged rankings (prompt, completions, scores) from the vendored HH-RLHF slice: 2-4 candidates of different
    lengths, scores in no particular order with a tie, prompts long enough to be truncated from the left."""
    rows = load_hh_rlhf_slice("test").select(range(16))
    out, row = [], 0
    for i, n in enumerate(lengths):
        completions = [
            rows[row + j]["chosen"][-60 - 17 * j :] if j % 2 == 0 else rows[row + j]["rejected"][-40 - 11 * j :]
            for j in range(n)
        ]
        scores = [float((7 * i + 3 * j) % 5) - 1.5 for j in range(n)]
        if n == 4:
            scores[3] = scores[1]  # a tie: RRHF forms no pair between these two
        out.append({"prompt": rows[row]["chosen"][: 300 + 150 * i], "completions": completions, "scores": scores})
        row += n
    return out


def test_rrhf_trainer_step_with_shared_prompt_equals_plain(tokenizer, make_config, tmp_path):
    """RRHF: the shared-prompt layout gives the plain layout's loss, gradients and updated weights."""
    from trl_pro.trainers.rrhf_config import RRHFConfig
    from trl_pro.trainers.rrhf_trainer import RRHFTrainer

    dataset = Dataset.from_list(_scored_hh_rows())
    results = {}
    for shared in (False, True):
        config = make_config(
            RRHFConfig,
            output_dir=str(tmp_path / str(shared)),
            max_steps=1,
            shared_prompt=shared,
            max_length=96,
            max_prompt_length=64,
            rrhf_weight=2.0,
            length_penalty=0.5,
            # SGD: the update is linear in the gradient the trainer applied (after clipping). AdamW's
            # first step, g / (|g| + eps), magnifies fp32 rounding of the few gradients near eps; a
            # large learning rate keeps `after - before` well above the weights' fp32 rounding
            optim="sgd",
            learning_rate=1.0,
        )
        trainer = RRHFTrainer(build_tiny_llama(seed=0), args=config, train_dataset=dataset, processing_class=tokenizer)
        assert trainer.data_collator.shared_prompt is shared
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(dataset))])
        assert ("segment_ids" in batch) is shared
        assert batch["input_ids"].shape[0] == (len(dataset) if shared else batch["ranking_offsets"][-1])
        model = trainer.model
        model.train()
        model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad(set_to_none=True)
        trainer.train()  # one optimizer step on the same batch (4 rankings, batch size 4)
        params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        results[shared] = (loss.detach(), grads, params, batch)
    (plain_loss, plain_grads, plain_params, plain), (shared_loss, shared_grads, shared_params, packed) = (
        results[False],
        results[True],
    )
    for key in ("token_offsets", "ranking_offsets", "rewards"):
        assert torch.equal(plain[key], packed[key]), key
    assert packed["attention_mask"].sum() < plain["attention_mask"].sum()  # the prompts really are shared
    assert torch.isfinite(plain_loss) and plain_loss != 0
    _assert_close(shared_loss, plain_loss, "loss")
    assert plain_grads.keys() == shared_grads.keys() and len(plain_grads) > 0
    for name in plain_grads:
        assert plain_grads[name].norm() > 0, name
        _assert_close(shared_grads[name], plain_grads[name], name)
    # One optimizer step from the same start with (numerically) the same gradients: the same update of every parameter
    start = {n: p.detach() for n, p in build_tiny_llama(seed=0).named_parameters()}
    assert plain_params.keys() == shared_params.keys() == start.keys()
    for name, value in plain_params.items():
        update = value - start[name]
        assert update.norm() > 0, name
        _assert_close(shared_params[name] - start[name], update, f"update of {name}")
