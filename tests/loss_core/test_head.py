"""The loss head computes scores from the model's own logits: every logit transform TRL handles, and a clear error
for those it does not."""

import pytest
import torch


# Never train on wrong scores: logit transforms ----------------------------------------------------------------------

TINY = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
# architecture -> (config class, model class, the config fields that transform its logits)
LOGIT_TRANSFORMS = {
    "gemma2-softcap": ("Gemma2Config", "Gemma2ForCausalLM", dict(final_logit_softcapping=2.0)),
    "cohere-logit_scale": ("CohereConfig", "CohereForCausalLM", dict(logit_scale=0.25)),
    "granite-logits_scaling": ("GraniteConfig", "GraniteForCausalLM", dict(logits_scaling=4.0)),
    "falcon_h1-lm_head_multiplier": (
        "FalconH1Config",
        "FalconH1ForCausalLM",
        dict(
            lm_head_multiplier=3.0,
            mamba_d_ssm=32,
            mamba_n_heads=4,
            mamba_d_head=8,
            mamba_d_state=8,
            mamba_n_groups=1,
            mamba_chunk_size=16,
        ),
    ),
    "hyperclovax-logits_scaling": ("HyperCLOVAXConfig", "HyperCLOVAXForCausalLM", dict(logits_scaling=2.5)),
    "minicpm3-logits_scaling": (
        "MiniCPM3Config",
        "MiniCPM3ForCausalLM",
        dict(  # logits_scaling = 32 / 8
            dim_model_base=8,
            num_key_value_heads=4,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_nope_head_dim=8,
            qk_rope_head_dim=4,
            v_head_dim=8,
        ),
    ),
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
    output = model(
        **inputs,
        ranking_inputs={
            "completion_mask": batch["completion_mask"],
            "layout": layout,
            "rewards": None,
            "sft_weight": 0.1,
            "implementation": "torch",
        },
    )
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
        output = ranking_loss_from_hidden(
            hidden,
            weight,
            bias,
            targets,
            layout,
            sft_weight=0.1,
            implementation="torch",
            logit_scale=scale,
            final_logit_softcapping=softcap,
        )
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

    recurrent_gemma = transformers.RecurrentGemmaForCausalLM(
        transformers.RecurrentGemmaConfig(**{k: v for k, v in TINY.items() if k != "head_dim"}, logits_soft_cap=30.0)
    )
    with pytest.raises(NotImplementedError, match="logits_soft_cap=30.0.*would differ from the model's own logits"):
        add_ranking_loss_head(recurrent_gemma)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY))
    llama.config.unpadded_vocab_size = 60  # logits sliced to the real vocabulary (Inkling)
    with pytest.raises(NotImplementedError, match="unpadded_vocab_size=60"):
        add_ranking_loss_head(llama)
