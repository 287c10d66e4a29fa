"""QLoRA on CPU: a tiny Llama saved to disk, loaded in 4-bit NF4 with bitsandbytes' CPU backend, LoRA adapters on
every linear layer but the LM head, trained through the CLI; the adapter is saved and reloads with PEFT."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.baseline_data import write_scored_rankings, write_tiny_model

from trl_pro.cli import training
from trl_pro.pipeline.models import TINY_LLAMA, resolve_model
from trl_pro.utils.errors import SetupError


bnb = pytest.importorskip("bitsandbytes")

from peft import PeftModel  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402


REPO = Path(__file__).resolve().parents[2]
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
    "true",
    "--bf16",
    "false",
    "--gradient_checkpointing",
    "true",
    "--learning_rate",
    "1e-3",
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "8",
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
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def ranked_dir(tmp_path_factory):
    return write_scored_rankings(tmp_path_factory.mktemp("ranked"))


def _bnb_4bit_config():
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def test_bitsandbytes_cpu_backend_quantizes(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(
        tiny_dir, quantization_config=_bnb_4bit_config(), dtype=torch.bfloat16
    )
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit) and q_proj.weight.dtype == torch.uint8
    assert q_proj.weight.quant_state.quant_type == "nf4" and q_proj.weight.quant_state.nested
    assert type(model.lm_head) is torch.nn.Linear  # transformers keeps the output layer unquantized
    logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()


def test_qlora_trainer_setup(tiny_dir, ranked_dir, tmp_path):
    """What the script builds: 4-bit base, bf16 LoRA adapters only, frozen unquantized LM head, gradient
    checkpointing with input gradients, and 4-bit layers that stay trainable after an evaluation."""
    argv = [
        "--model_name_or_path",
        str(tiny_dir),
        "--dataset_name",
        str(ranked_dir),
        *QLORA_FLAGS,
        *TRAIN_FLAGS,
        "--max_steps",
        "2",
        "--output_dir",
        str(tmp_path / "out"),
    ]
    trainer, eval_dataset = training.build_trainer(
        *training.parse_args(training.make_method_parser(training.PRO), argv)
    )
    assert eval_dataset is not None
    model = trainer.model
    base = model.get_base_model()
    assert base.is_loaded_in_4bit
    quantization = base.config.quantization_config
    assert quantization.bnb_4bit_quant_type == "nf4" and quantization.bnb_4bit_use_double_quant
    assert quantization.bnb_4bit_compute_dtype == torch.bfloat16

    linear4bit = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4bit) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    adapted = [name for name, m in base.named_modules() if isinstance(m, BaseTunerLayer)]
    assert len(adapted) == 14 and not any("lm_head" in name for name in adapted)
    assert type(base.lm_head) is torch.nn.Linear
    assert base.lm_head.weight.dtype == torch.bfloat16 and not base.lm_head.weight.requires_grad
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert {p.dtype for p in trainable.values()} == {torch.bfloat16}  # QLoRA adapters in bf16, as TRL does

    # An evaluation before training must not leave the 4-bit layers in bitsandbytes' inference-only CPU layout
    trainer.evaluate()
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in linear4bit)
    lora_b = base.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert torch.count_nonzero(lora_b) == 0  # LoRA starts as the identity
    trainer.train()
    assert base.is_gradient_checkpointing
    assert torch.count_nonzero(lora_b) > 0  # gradients reached the first layer through the frozen 4-bit ones


def test_lora_on_lm_head_is_rejected(tiny_dir, ranked_dir, tmp_path):
    argv = [
        "--model_name_or_path",
        str(tiny_dir),
        "--dataset_name",
        str(ranked_dir),
        *QLORA_FLAGS[:-1],
        "q_proj",
        "lm_head",
        *TRAIN_FLAGS,
        "--max_steps",
        "1",
        "--output_dir",
        str(tmp_path / "out"),
    ]
    with pytest.raises(ValueError, match="lm_head"):
        training.build_trainer(*training.parse_args(training.make_method_parser(training.PRO), argv))


def test_4bit_needs_peft(tiny_dir, ranked_dir, tmp_path):
    argv = [
        "--model_name_or_path",
        str(tiny_dir),
        "--dataset_name",
        str(ranked_dir),
        "--load_in_4bit",
        *TRAIN_FLAGS,
        "--output_dir",
        str(tmp_path / "out"),
    ]
    with pytest.raises(SetupError, match="use_peft"):
        training.build_trainer(*training.parse_args(training.make_method_parser(training.PRO), argv))


def test_qlora_cli_end_to_end_and_adapter_reloads(tiny_dir, ranked_dir, tmp_path):
    out = tmp_path / "qlora"
    result = subprocess.run(
        [
            "trl-pro",
            "pro",
            "--model_name_or_path",
            str(tiny_dir),
            "--dataset_name",
            str(ranked_dir),
            *QLORA_FLAGS,
            *TRAIN_FLAGS,
            "--max_steps",
            "3",
            "--logging_steps",
            "1",
            "--output_dir",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LoRA adapter saved to" in result.stdout and "before -> after training" in result.stdout
    # the bitsandbytes CPU inference kernel has no autograd: training must never run through it
    assert "autograd kernel was not registered" not in result.stderr

    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    targets = {name.split(".")[-1] for name in adapter_config["target_modules"]}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # no lm_head
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()

    base = AutoModelForCausalLM.from_pretrained(tiny_dir, quantization_config=_bnb_4bit_config(), dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(base, out)
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert len(lora_b) == 14 and all(torch.count_nonzero(p) > 0 for p in lora_b)  # trained, not the zero init
    with torch.no_grad():
        with_adapter = model(torch.tensor([[5, 6, 7, 8]])).logits
        with model.disable_adapter():
            without = model(torch.tensor([[5, 6, 7, 8]])).logits
    assert torch.isfinite(with_adapter).all() and not torch.equal(with_adapter, without)


def test_builtin_tiny_llama_in_4bit(ranked_dir, tmp_path):
    """`trl-pro/tiny-llama` with --load_in_4bit: saved to a temporary folder, then loaded quantized."""
    argv = [
        "--model_name_or_path",
        TINY_LLAMA,
        "--dataset_name",
        str(ranked_dir),
        *QLORA_FLAGS,
        *TRAIN_FLAGS,
        "--output_dir",
        str(tmp_path / "out"),
    ]
    script_args, training_args, model_args, dataset_args = training.parse_args(
        training.make_method_parser(training.PRO), argv
    )
    model, tokenizer, quantization, peft = resolve_model(model_args, training_args)
    assert isinstance(model, str) and Path(model, "config.json").is_file() and len(tokenizer) == 2048
    assert quantization.load_in_4bit and peft is not None
    assert training_args.model_init_kwargs["device_map"] is None or torch.cuda.is_available()


def test_list_dpo_with_qlora_uses_the_base_without_adapter_as_reference(tiny_dir, ranked_dir, tmp_path):
    """QLoRA list DPO: the 4-bit base with the adapter disabled is the reference (no copy of the model), so at
    initialisation (LoRA B = 0) every log-ratio is 0 and a ranking of 3 costs log(3!); training moves the loss."""
    import math

    from datasets import load_dataset
    from peft import LoraConfig

    from trl_pro import ListDPOConfig, ListDPOTrainer

    args = ListDPOConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=True,
        learning_rate=1e-2,
        per_device_train_batch_size=4,
        max_steps=3,
        logging_steps=1,
        max_length=64,
        max_prompt_length=32,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        model_init_kwargs={"dtype": torch.bfloat16},
    )
    trainer = ListDPOTrainer(
        str(tiny_dir),
        args=args,
        train_dataset=load_dataset(str(ranked_dir), split="train"),
        quantization_config=_bnb_4bit_config(),
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
    )
    assert trainer.ref_model is None and trainer.model.get_base_model().is_loaded_in_4bit
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    with torch.no_grad():
        assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(math.log(6), rel=1e-5)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and losses[-1] != pytest.approx(math.log(6), rel=1e-3)
