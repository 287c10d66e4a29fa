"""Self-bootstrapping runs one learning-rate schedule over every round, and one step count."""

import torch

from trl_pro.assets import build_tiny_llama, load_hh_rlhf_slice
from trl_pro.trainers.pro_trainer import PROTrainer


def _trainer(make_config, reward_model_dir, tokenizer, **overrides):
    kwargs = dict(
        bootstrap_rounds=2,
        bootstrap_reward_model_name_or_path=str(reward_model_dir),
        bootstrap_reward_prompt_format="plain",
        bootstrap_max_completion_length=4,
        per_device_train_batch_size=4,
        logging_steps=1,
    )
    kwargs.update(overrides)
    return PROTrainer(
        model=build_tiny_llama(seed=0),
        args=make_config(**kwargs),
        train_dataset=load_hh_rlhf_slice("train").select(range(8)),
        processing_class=tokenizer,
    )


def test_warmup_happens_once_over_every_round(make_config, tiny_reward_model_dir, tokenizer):
    # The quickstart's shape: warm-up longer than a round. Restarted per round, every round trained at lr 0
    trainer = _trainer(
        make_config,
        tiny_reward_model_dir,
        tokenizer,
        max_steps=1,
        warmup_steps=10,
        lr_scheduler_type="linear",
        learning_rate=1e-2,
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [log for log in trainer.state.log_history if "learning_rate" in log and "loss" in log]
    assert [log["step"] for log in logs] == [2]  # the last round's log; steps go on from round 1's
    assert logs[-1]["learning_rate"] > 0
    assert [record["round"] for record in trainer.bootstrap_history] == [1, 2]
    assert trainer.state.global_step == 2
    moved = any(not torch.equal(before[name], p) for name, p in trainer.model.named_parameters())
    assert moved, "no round trained: every step ran at learning rate 0"


def test_epoch_based_rounds_share_one_linear_decay(make_config, tiny_reward_model_dir, tokenizer):
    trainer = _trainer(
        make_config,
        tiny_reward_model_dir,
        tokenizer,
        max_steps=-1,
        num_train_epochs=1,
        per_device_train_batch_size=2,
        lr_scheduler_type="linear",
        learning_rate=1e-2,
    )
    trainer.train()
    # 2 rounds x 4 rows / batch 2 = 4 steps: the linear decay runs once over all of them
    assert trainer.state.global_step == 4
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0
    assert [record["round"] for record in trainer.bootstrap_history] == [1, 2]
