"""Data and model fidelity for a TRL user (issue 8): DPO-shaped configs, BOS kept on truncation, logit transforms,
HH-RLHF prompts ending at the turn marker, and the TRL versions the package is tested with."""

import importlib
from pathlib import Path

import pytest
import tomllib
import torch
from datasets import Dataset
from packaging.requirements import Requirement
from packaging.version import Version

from trl_pro.cli import training
from trl_pro.scripts.pro import make_parser
from trl_pro.trainers.pro_config import PROConfig
from trl_pro.trainers.pro_trainer import PROTrainer


# --- 1. A DPO-shaped config works unchanged ------------------------------------------------------------------------


@pytest.mark.parametrize("max_length, kept", [(512, 384), (256, 128), (192, 96), (64, 32), (2, 1)])
def test_dpo_shaped_config_adapts_the_prompt_length(tmp_path, tokenizer, tiny_model, max_length, kept):
    """`max_length` alone is enough: the prompt keeps max(max_length - 128, max_length // 2) tokens."""
    config = PROConfig(output_dir=str(tmp_path), max_length=max_length, use_cpu=True, report_to=[])
    assert config.max_prompt_length is None  # not frozen: the default follows `max_length`
    if max_length > 64:
        return
    rows = [{"prompt": "word " * 300, "completions": [" yes", " no"]}]
    trainer = PROTrainer(tiny_model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    row = trainer.train_dataset[0]
    assert len(row["prompt_ids"]) == kept
    assert all(len(row["prompt_ids"]) + len(ids) <= max_length and ids for ids in row["completion_ids"])


def test_dpo_shaped_cli_flag(tmp_path):
    _, training_args, _, _ = training.parse_args(
        make_parser(), ["--max_length", "192", "--use_cpu", "true", "--output_dir", str(tmp_path)]
    )
    assert training_args.max_length == 192 and training_args.max_prompt_length is None


def test_only_an_explicit_prompt_length_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"`max_prompt_length` \(300\) must be smaller than `max_length` \(256\)"):
        PROConfig(output_dir=str(tmp_path), max_length=256, max_prompt_length=300)
    with pytest.raises(ValueError, match="-1 \\(no prompt truncation\\)"):
        PROConfig(output_dir=str(tmp_path), max_prompt_length=-2)
    assert PROConfig(output_dir=str(tmp_path), max_length=256, max_prompt_length=-1, use_cpu=True).max_prompt_length == -1


# --- 10. Dependencies you can trust --------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
# The TRL names trl_pro imports that are private or undocumented: they may change in any TRL minor release
TRL_INTERNALS = [
    ("trl.trainer.base_trainer", "_BaseTrainer"),
    ("trl.trainer.base_config", "_BaseConfig"),
    ("trl.cli.commands.base", "Command"),
    ("trl.cli.commands.base", "CommandContext"),
    ("trl.cli.accelerate_config", "resolve_accelerate_config_argument"),
    ("trl.kernels", "ChunkedLogProbFunction"),
    ("trl.trainer.utils", "maybe_gather_lm_head_ctx"),
    ("trl.trainer.utils", "create_model_from_path"),
    ("trl.trainer.utils", "global_then_local_main_first"),
    ("trl.data_utils", "common_prefix_length"),
]


def test_trl_pin_is_the_tested_minor_release_and_its_internals_exist():
    import trl

    requirements = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (declared,) = [r for r in requirements if Requirement(r).name == "trl"]
    trl_requirement = Requirement(declared)
    installed = Version(trl.__version__)
    assert installed in trl_requirement.specifier
    # The pin admits only the minor release the suite runs on: TRL internals are not a stable API
    next_minor = Version(f"{installed.major}.{installed.minor + 1}.0")
    assert next_minor not in trl_requirement.specifier, trl_requirement
    for module, name in TRL_INTERNALS:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
    # `trl.data_utils._tokenize` is no longer used: the tokenizer's own call / chat template are public
    assert not any("_tokenize" in path.read_text() for path in (REPO / "trl_pro" / "data").glob("*.py"))
    install = (REPO / "README.md").read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
    assert f"Supported TRL versions: `{declared}`" in install


# --- 9. Raw HH-RLHF prompts end at the turn marker -----------------------------------------------------------------


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
            chosen, rejected]
    assert shared_first_word >= 10  # the slice has such rows ("...Assistant: I" + "'m afraid" before the fix)


def test_other_implicit_prompts_keep_trls_common_prefix():
    from trl_pro.data.formats import PAIRWISE, to_ranking

    text = to_ranking({"chosen": "The sky is blue.", "rejected": "The sky is green."}, 0, PAIRWISE, False)
    assert text["prompt"] == "The sky is" and text["completions"] == [" blue.", " green."]
    user = {"role": "user", "content": "Sky?"}
    messages = to_ranking(
        {"chosen": [user, {"role": "assistant", "content": "Blue."}],
         "rejected": [user, {"role": "assistant", "content": "Green."}]}, 0, PAIRWISE, False,
    )
    assert messages["prompt"] == [user] and messages["completions"][1] == [{"role": "assistant", "content": "Green."}]


# --- 4. BOS is kept when a prompt is truncated ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_style_tokenizer():
    """The embedded tokenizer made to add BOS (and EOS) like LLaMA's, and a chat template that renders BOS first."""
    from transformers import AutoTokenizer

    from trl_pro.assets import TOKENIZER_DIR

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), add_bos_token=True)
    tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    return tokenizer


@pytest.mark.parametrize("words", [3, 31, 32, 33, 300])
@pytest.mark.parametrize("conversational", [False, True])
def test_truncated_prompt_keeps_bos(llama_style_tokenizer, words, conversational):
    from trl_pro.data.tokenization import tokenize_ranking

    tokenizer = llama_style_tokenizer
    text = " ".join(f"w{i}" for i in range(words))
    if conversational:
        prompt = [{"role": "user", "content": text}]
        completions = [[{"role": "assistant", "content": "yes"}], [{"role": "assistant", "content": "no"}]]
        full = tokenizer.apply_chat_template(prompt, tokenize=True, return_dict=True, add_generation_prompt=True)
    else:
        prompt, completions = text, [" yes", " no"]
        full = tokenizer(text)
    full = full["input_ids"]
    assert full[0] == tokenizer.bos_token_id
    tokens = tokenize_ranking({"prompt": prompt, "completions": completions}, 0, tokenizer, 64, None)
    prompt_ids = tokens["prompt_ids"]
    assert prompt_ids[0] == tokenizer.bos_token_id  # BOS kept at any prompt length
    assert len(prompt_ids) == min(len(full), 32)  # max(64 - 128, 64 // 2) prompt tokens, BOS included
    assert prompt_ids[1:] == full[len(full) - len(prompt_ids) + 1 :]  # then the end of the prompt, as before
    assert all(ids for ids in tokens["completion_ids"])


def test_bos_kept_with_a_tokenizer_that_also_adds_eos():
    from transformers import AutoTokenizer

    from trl_pro.assets import TOKENIZER_DIR
    from trl_pro.data.tokenization import tokenize_ranking

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), add_bos_token=True, add_eos_token=True)
    tokens = tokenize_ranking({"prompt": "word " * 100, "completions": [" yes", " no"]}, 0, tokenizer, 64, 16)
    assert tokens["prompt_ids"][0] == tokenizer.bos_token_id and len(tokens["prompt_ids"]) == 16
    assert tokens["prompt_ids"][1:] == tokenizer("word " * 100, add_special_tokens=False)["input_ids"][-15:]


# --- 5. Never train on wrong scores: logit transforms ----------------------------------------------------------------

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)
# architecture -> (config class, model class, the config fields that transform its logits)
LOGIT_TRANSFORMS = {
    "gemma2-softcap": ("Gemma2Config", "Gemma2ForCausalLM", dict(final_logit_softcapping=2.0)),
    "cohere-logit_scale": ("CohereConfig", "CohereForCausalLM", dict(logit_scale=0.25)),
    "granite-logits_scaling": ("GraniteConfig", "GraniteForCausalLM", dict(logits_scaling=4.0)),
    "falcon_h1-lm_head_multiplier": ("FalconH1Config", "FalconH1ForCausalLM", dict(
        lm_head_multiplier=3.0, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_d_state=8, mamba_n_groups=1,
        mamba_chunk_size=16)),
    "hyperclovax-logits_scaling": ("HyperCLOVAXConfig", "HyperCLOVAXForCausalLM", dict(logits_scaling=2.5)),
    "minicpm3-logits_scaling": ("MiniCPM3Config", "MiniCPM3ForCausalLM", dict(  # logits_scaling = 32 / 8
        dim_model_base=8, num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
        qk_rope_head_dim=4, v_head_dim=8)),
}


def _ranking_batch():
    from trl_pro.data.collator import DataCollatorForRanking

    generator = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, 64, (n,), generator=generator).tolist()

    examples = [
        {"prompt_ids": ids(5), "completion_ids": [ids(4), ids(2), ids(6)], "sft_index": 0, "scores": None},
        {"prompt_ids": ids(3), "completion_ids": [ids(3), ids(5)], "sft_index": 0, "scores": None},
    ]
    return DataCollatorForRanking(pad_token_id=0)(examples)


def _pro_and_reference(model, batch):
    """(PRO output, reference loss, reference scores): the reference takes log-softmax of the model's own logits."""
    from trl_pro.data.layout import RankingLayout
    from trl_pro.loss_core.dispatch import ranking_loss_from_sums
    from trl_pro.loss_core.head import add_ranking_loss_head
    from trl_pro.objectives.pro import PROObjective

    layout = RankingLayout(batch["token_offsets"], batch["ranking_offsets"], batch["sft_candidate"])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    logits = model(**inputs).logits.float()
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    predicts_completion = batch["completion_mask"][:, 1:].bool()
    sums = torch.zeros(layout.num_candidates).index_add(0, layout.token_candidate(), logprobs[predicts_completion])
    reference_loss, reference = ranking_loss_from_sums(sums, layout, None, 0.1, PROObjective())
    add_ranking_loss_head(model)
    output = model(**inputs, ranking_inputs={"completion_mask": batch["completion_mask"], "layout": layout,
                                         "rewards": None, "sft_weight": 0.1, "implementation": "torch"})
    return output, reference_loss, reference.scores


@pytest.mark.parametrize("architecture", list(LOGIT_TRANSFORMS))
def test_scores_are_the_models_own_logits(architecture):
    """Every logit transform TRL's fused LM head knows: PRO scores, loss and gradients follow the real logits."""
    import transformers

    config_class, model_class, transform = LOGIT_TRANSFORMS[architecture]
    config = getattr(transformers, config_class)(**{**TINY, **transform})
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).float().eval()
    batch = _ranking_batch()
    output, reference_loss, reference_scores = _pro_and_reference(model, batch)
    torch.testing.assert_close(output.scores, reference_scores, rtol=1e-5, atol=1e-5)
    assert (output.scores - reference_scores).abs().max() < 1e-4 * (reference_scores.abs().max())
    # Gradients of the head and the backbone, against autograd through the model's own logits
    parameters = [model.get_output_embeddings().weight, model.get_input_embeddings().weight]
    pro_grads = torch.autograd.grad(output.loss, parameters)
    reference_grads = torch.autograd.grad(reference_loss, parameters)
    for pro_grad, reference_grad in zip(pro_grads, reference_grads):
        torch.testing.assert_close(pro_grad, reference_grad, rtol=1e-4, atol=1e-6)


def test_scale_and_softcap_together_match_eager_logits():
    """Muse Glimmer's `T * tanh(output_multiplier * z / T)`, at the loss-core level, with a bias."""
    from trl_pro.data.layout import RankingLayout
    from trl_pro.loss_core.dispatch import ranking_loss_from_hidden, ranking_loss_from_sums
    from trl_pro.objectives.pro import PROObjective

    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(12, 16, generator=generator, requires_grad=True)
    weight = torch.randn(40, 16, generator=generator, requires_grad=True)
    bias = torch.randn(40, generator=generator, requires_grad=True)
    targets = torch.randint(0, 40, (12,), generator=generator)
    layout = RankingLayout(torch.tensor([0, 3, 7, 9, 12]), torch.tensor([0, 2, 4]), torch.tensor([0, 2]))
    for scale, softcap in [(0.5, 3.0), (2.0, None)]:
        output = ranking_loss_from_hidden(hidden, weight, bias, targets, layout, sft_weight=0.1, implementation="torch",
                                      logit_scale=scale, final_logit_softcapping=softcap)
        logits = (hidden @ weight.T + bias) * scale
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        logprobs = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
        sums = torch.zeros(4).index_add(0, layout.token_candidate(), logprobs)
        reference_loss, reference = ranking_loss_from_sums(sums, layout, None, 0.1, PROObjective())
        torch.testing.assert_close(output.scores, reference.scores)
        grads = torch.autograd.grad(output.loss, (hidden, weight, bias))
        for grad, reference_grad in zip(grads, torch.autograd.grad(reference_loss, (hidden, weight, bias))):
            torch.testing.assert_close(grad, reference_grad, rtol=1e-4, atol=1e-6)


def test_unknown_logit_transforms_are_rejected():
    import transformers

    from trl_pro.loss_core.head import add_ranking_loss_head

    recurrent_gemma = transformers.RecurrentGemmaForCausalLM(transformers.RecurrentGemmaConfig(**{
        k: v for k, v in TINY.items() if k != "head_dim"}, logits_soft_cap=30.0))
    with pytest.raises(NotImplementedError, match="logits_soft_cap=30.0.*would differ from the model's own logits"):
        add_ranking_loss_head(recurrent_gemma)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY))
    llama.config.unpadded_vocab_size = 60  # logits sliced to the real vocabulary (Inkling)
    with pytest.raises(NotImplementedError, match="unpadded_vocab_size=60"):
        add_ranking_loss_head(llama)
