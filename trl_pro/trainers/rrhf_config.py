"""Configuration of the RRHF trainer, a sibling of `PROConfig` (and of TRL's `DPOConfig`)."""

from dataclasses import dataclass, field

from trl_pro.trainers.ranking_config import RankingConfig


@dataclass
class RRHFConfig(RankingConfig):
    r"""
    Configuration class for the [`RRHFTrainer`] (RRHF: Rank Responses to Align Language Models with Human Feedback,
    Yuan et al. 2023).

    Only the parameters specific to RRHF are listed here; see [`RankingConfig`] for those shared with the other ranking
    trainers (model, data, loss core) and [`~transformers.TrainingArguments`] for the rest.

    Parameters:
        > Parameters that control the training

        rrhf_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the rank loss: loss = rrhf_weight * L_rank + L_SFT. The official training script uses 1 (its
            argument default is 100).
        length_penalty (`float`, *optional*, defaults to `1.0`):
            Candidate scores are p_i = (sum of the token log-probs of candidate i) / len_i ** length_penalty; `1.0`
            is the mean token log-prob, `0.0` the plain sum.

    > [!NOTE]
    > These parameters have default values different from [`~transformers.TrainingArguments`]:
    > - `logging_steps`: Defaults to `10` instead of `500`.
    > - `gradient_checkpointing`: Defaults to `True` instead of `False`.
    > - `bf16`: Defaults to `True` if `fp16` is not set, instead of `False`.
    > - `learning_rate`: Defaults to `2e-5` (the official training script's) instead of `5e-5`.
    """

    learning_rate: float = field(default=2e-5, metadata={"help": "The initial learning rate for AdamW."})

    # Parameters that control the training
    rrhf_weight: float = field(
        default=1.0, metadata={"help": "Weight of the rank loss: loss = rrhf_weight * L_rank + L_SFT."}
    )
    length_penalty: float = field(
        default=1.0,
        metadata={"help": "Scores are sum of token log-probs / length ** length_penalty (1: mean, 0: sum)."},
    )

    def __post_init__(self):
        if not self.rrhf_weight >= 0:
            raise ValueError(f"`rrhf_weight` must be >= 0, got {self.rrhf_weight}.")
        if not self.length_penalty >= 0:
            raise ValueError(f"`length_penalty` must be >= 0, got {self.length_penalty}.")
        super().__post_init__()
