"""PRO, RRHF and list DPO trainers on a GPU with the tiny Llama: a step with loss_implementation="triton" equals one with
"torch", and a bf16 (autocast) step trains.

The parity tests mirror tests/loss_core/test_shared_prompt.py's RRHF step test: the loss and gradients of one batch
from `compute_loss`, then one optimizer step of `train()` on the same data. SGD (the update is linear in the gradient
the trainer applied after clipping; AdamW's first step, g / (|g| + eps), would magnify rounding noise of tiny
gradients) with a large learning rate, so that `after - before` stands well above the weights' fp32 rounding. The
model is fp32, so both paths compute the logits with IEEE fp32 dots (TF32 off, torch's default) and only the
summation order differs: loss within 1e-5, gradients and updates within 1e-4 (relative norms; a wrong kernel gives
O(1)).
"""

import math

import pytest
import torch
from datasets import Dataset

from trl_pro.assets import build_tiny_llama
from trl_pro.trainers.list_dpo_config import ListDPOConfig
from trl_pro.trainers.list_dpo_trainer import ListDPOTrainer
from trl_pro.trainers.pro_config import PROConfig
from trl_pro.trainers.pro_trainer import PROTrainer
from trl_pro.trainers.rrhf_config import RRHFConfig
from trl_pro.trainers.rrhf_trainer import RRHFTrainer


pytestmark = pytest.mark.gpu
DEVICE = "cuda"

LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4


def ranked_rows(n=4):
    """Rankings of 2-4 candidates, scored best first (tests/trainers/test_pro_trainer.py)."""
    rows = []
    for i in range(n):
        length = 2 + i % 3
        rows.append(
            {
                "prompt": f"Question {i}:",
                "completions": [f" answer {j} of {i}" for j in range(length)],
                "scores": [float(length - j) for j in range(length)],
            }
        )
    return rows


def scored_rows(n=4):
    """Rankings of 2-4 candidates, scores in no particular order with a tie, an SFT index that is not the best
    (tests/trainers/test_rrhf_trainer.py)."""
    rows = []
    for i in range(n):
        length = 2 + i % 3
        scores = [float((7 * i + 3 * j) % 5) for j in range(length)]
        if length == 4:
            scores[3] = scores[1]
        rows.append(
            {
                "prefix": [[f"Question {i}:"]] * length,
                "suffix": [f" answer {j} of {i}" * (1 + j % 2) for j in range(length)],
                "reward": scores,
                "sft_index": length - 1,
            }
        )
    return rows


def relative_error(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()


def one_step(trainer_class, config_class, rows, implementation, tokenizer, make_config, tmp_path):
    """(loss, grads, params after one SGD step) of the tiny Llama on CUDA with `implementation`."""
    dataset = Dataset.from_list(rows)
    config = make_config(
        config_class,
        output_dir=str(tmp_path / implementation),
        use_cpu=False,
        max_steps=1,
        per_device_train_batch_size=len(rows),  # one step sees every row
        loss_implementation=implementation,
        optim="sgd",
        learning_rate=1.0,
    )
    trainer = trainer_class(
        build_tiny_llama(seed=0).to(DEVICE), args=config, train_dataset=dataset, processing_class=tokenizer
    )
    model = trainer.model
    assert trainer.args.device.type == DEVICE and all(p.device.type == DEVICE for p in model.parameters())
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))]))
    model.train()
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    trainer.train()
    assert trainer.loss_implementation_used == implementation
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs and all(math.isfinite(log["loss"]) for log in logs)
    return loss.detach(), grads, params


@pytest.mark.parametrize(
    "trainer_class, config_class, rows",
    [
        (PROTrainer, PROConfig, ranked_rows),
        (RRHFTrainer, RRHFConfig, scored_rows),
        (ListDPOTrainer, ListDPOConfig, ranked_rows),  # the reference pass goes through the same kernels
    ],
    ids=["pro", "rrhf", "list_dpo"],
)
def test_triton_step_equals_torch_step(trainer_class, config_class, rows, tokenizer, make_config, tmp_path):
    pytest.importorskip("triton", reason="loss_implementation='triton' needs Triton (the `triton` extra)")
    results = {
        implementation: one_step(trainer_class, config_class, rows(), implementation, tokenizer, make_config, tmp_path)
        for implementation in ("torch", "triton")
    }
    (torch_loss, torch_grads, torch_params), (triton_loss, triton_grads, triton_params) = (
        results["torch"],
        results["triton"],
    )
    assert torch.isfinite(torch_loss) and torch_loss != 0
    assert abs(triton_loss.item() - torch_loss.item()) <= LOSS_RTOL * abs(torch_loss.item()), (triton_loss, torch_loss)
    assert torch_grads.keys() == triton_grads.keys() and "lm_head.weight" in torch_grads
    for name, expected in torch_grads.items():
        error = relative_error(triton_grads[name], expected)
        assert error <= GRAD_RTOL, f"grad {name}: relative error {error:.2e}"
    start = {n: p.detach().to(DEVICE) for n, p in build_tiny_llama(seed=0).named_parameters()}
    assert torch_params.keys() == triton_params.keys() == start.keys()
    for name, value in torch_params.items():
        update = value - start[name]
        assert update.norm() > 0, name  # every parameter moved
        error = relative_error(triton_params[name] - start[name], update)
        assert error <= GRAD_RTOL, f"update of {name}: relative error {error:.2e}"


def test_bf16_autocast_trainer_step(tokenizer, make_config, tmp_path):
    """bf16=True (autocast over the fp32 tiny Llama): finite losses, every parameter moves, and "auto" runs the Triton
    core, i.e. its parity probe against the torch path passed in bf16 on this GPU."""
    pytest.importorskip("triton", reason="the Triton loss core needs Triton (the `triton` extra)")
    config = make_config(use_cpu=False, bf16=True, max_steps=2, loss_implementation="auto")
    trainer = PROTrainer(
        build_tiny_llama(seed=0).to(DEVICE),
        args=config,
        train_dataset=Dataset.from_list(ranked_rows(8)),
        processing_class=tokenizer,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2 and all(math.isfinite(log["loss"]) and log["loss"] > 0 for log in logs), logs
    assert trainer.loss_implementation_used == "triton"
    unchanged = [n for n, p in trainer.model.named_parameters() if torch.equal(before[n], p)]
    assert not unchanged, unchanged
