"""QLoRA on a GPU: the tiny Llama saved to disk, loaded in 4-bit NF4 (bitsandbytes' CUDA kernels) on this GPU, LoRA
adapters on every linear layer but the LM head, built through the script's `build_trainer` (as the CPU version,
tests/trainers/test_qlora.py) with bf16 autocast and the Triton loss core, and trained for a few steps: finite
losses, and the adapters move (the frozen 4-bit layers pass the gradient down to the first layer)."""

import math

import pytest
import torch
from helpers.baseline_data import write_scored_rankings, write_tiny_model


pytestmark = pytest.mark.gpu
DEVICE = "cuda"

QLORA_FLAGS = [
    "--load_in_4bit",
    "--bnb_4bit_quant_type",
    "nf4",
    "--use_bnb_nested_quant",
    "--dtype",
    "bfloat16",
    "--use_peft",
    "--lora_r",
    "8",
    "--lora_alpha",
    "16",
    "--lora_target_modules",
    "all-linear",
]
TRAIN_FLAGS = [
    "--use_cpu",
    "false",
    "--bf16",
    "true",
    "--gradient_checkpointing",
    "true",
    "--learning_rate",
    "1e-3",
    "--per_device_train_batch_size",
    "4",
    "--max_length",
    "64",
    "--max_prompt_length",
    "32",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--save_strategy",
    "no",
    "--logging_steps",
    "1",
    "--max_steps",
    "3",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def ranked_dir(tmp_path_factory):
    return write_scored_rankings(tmp_path_factory.mktemp("ranked"))


def test_qlora_step_on_gpu(tiny_dir, ranked_dir, tmp_path):
    bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (the `quantization` extra)")
    pytest.importorskip("triton", reason="the Triton loss core needs Triton (the `triton` extra)")
    from trl_pro.cli import training

    argv = [
        "--model_name_or_path",
        str(tiny_dir),
        "--dataset_name",
        str(ranked_dir),
        *QLORA_FLAGS,
        *TRAIN_FLAGS,
        "--loss_implementation",
        "triton",
        "--output_dir",
        str(tmp_path / "out"),
    ]
    trainer, _ = training.build_trainer(*training.parse_args(training.make_method_parser(training.PRO), argv))
    model = trainer.model
    base = model.get_base_model()
    assert base.is_loaded_in_4bit
    linear4bit = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4bit) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    assert all(m.weight.device.type == DEVICE and m.weight.quant_state.quant_type == "nf4" for m in linear4bit)
    assert type(base.lm_head) is torch.nn.Linear and base.lm_head.weight.device.type == DEVICE
    assert not base.lm_head.weight.requires_grad  # frozen, unquantized head: the loss core skips its gradient
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name and p.device.type == DEVICE for name, p in trainable.items())
    lora_b = {name: p for name, p in trainable.items() if "lora_B" in name}
    assert len(lora_b) == 14 and all(torch.count_nonzero(p) == 0 for p in lora_b.values())  # LoRA starts at identity
    before = {name: p.detach().clone() for name, p in trainable.items()}

    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(math.isfinite(log["loss"]) for log in logs), logs
    assert trainer.loss_implementation_used == "triton"
    # Every B moved from zero, the first layer's included: the gradient went down through the frozen 4-bit layers
    assert all(torch.count_nonzero(p) > 0 for p in lora_b.values())
    moved = [name for name, p in model.named_parameters() if name in before and not torch.equal(before[name], p)]
    assert len(moved) == len(before), sorted(set(before) - set(moved))
