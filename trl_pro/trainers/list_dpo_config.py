"""Configuration of the list DPO trainer (Plackett-Luce, LiPO-λ, all pairs), a sibling of TRL's `DPOConfig`."""

from dataclasses import dataclass, field

from trl_pro.objectives.list_dpo import LOSS_TYPES
from trl_pro.trainers.ranking_config import RankingConfig


@dataclass
class ListDPOConfig(RankingConfig):
    r"""
    Configuration class for the [`ListDPOTrainer`]: DPO on rankings of any length, with a reference model.

    Only the parameters specific to list DPO are listed here; see [`RankingConfig`] for those shared with the other
    ranking trainers (model, data, loss core) and [`~transformers.TrainingArguments`] for the rest. Names follow TRL's
    `DPOConfig` where the parameter is the same.

    Parameters:
        > Parameters that control the loss

        loss_type (`str`, *optional*, defaults to `"plackett_luce"`):
            `"plackett_luce"`: list DPO, the Plackett-Luce likelihood of the ranking (DPO paper, Appendix A.3; DPO's
            sigmoid loss for pairs). `"lipo_lambda"`: LiPO-λ (Liu et al. 2024), pairwise logistic losses weighted by
            the change of a DCG-like metric, with the rows' scores as labels. `"all_pairs"`: DPO's sigmoid loss averaged
            over every ordered pair of a ranking.
        beta (`float`, *optional*, defaults to `0.1`):
            β: candidate scores are s_i = β (log π(y_i|x) - log π_ref(y_i|x)), summed over the candidate's tokens.
        sft_weight (`float`, *optional*, defaults to `0.0`):
            Weight of an SFT term on the SFT candidate (the best one by default), as DPO's `"sft"` loss: loss = list
            loss + sft_weight * NLL.
        sft_loss_reduction (`str`, *optional*, defaults to `"mean"`):
            `"mean"`: the SFT NLL is averaged over the SFT candidate's tokens (TRL's `"sft"` loss). `"sum"`: summed.
        reward_scale (`float`, *optional*, defaults to `1.0`):
            Multiplies the rows' scores before they are LiPO-λ's labels ψ (gains 2^ψ - 1). Without scores, the labels
            are n - i for the candidate in position i.

        > Parameters that control the reference model

        precompute_ref_log_probs (`bool`, *optional*, defaults to `False`):
            Compute the reference log-probs of every candidate once, before training (and evaluation), instead of a
            reference forward per step. Each process computes its own share of the rows; finished batches are kept
            in `output_dir/ref_logps/`, keyed on the reference weights and the dataset, so an interrupted run
            resumes them.
        precompute_ref_batch_size (`int`, *optional*):
            Rankings per forward when precomputing; defaults to `per_device_train_batch_size` (and
            `per_device_eval_batch_size` for the evaluation sets).

    > [!NOTE]
    > These parameters have default values different from [`~transformers.TrainingArguments`]:
    > - `logging_steps`: Defaults to `10` instead of `500`.
    > - `gradient_checkpointing`: Defaults to `True` instead of `False`.
    > - `bf16`: Defaults to `True` if `fp16` is not set, instead of `False`.
    > - `learning_rate`: Defaults to `1e-6` (TRL's `DPOConfig`) instead of `5e-5`.
    """

    learning_rate: float = field(default=1e-6, metadata={"help": "The initial learning rate for AdamW."})

    # Parameters that control the loss
    loss_type: str = field(
        default="plackett_luce",
        metadata={
            "help": "The listwise loss: 'plackett_luce' (list DPO), 'lipo_lambda' (LiPO-λ) or 'all_pairs' (DPO's "
            "sigmoid loss averaged over every ordered pair).",
            "choices": list(LOSS_TYPES),
        },
    )
    beta: float = field(
        default=0.1,
        metadata={"help": "β: scores are β times the summed log-prob ratio against the reference model."},
    )
    sft_weight: float = field(
        default=0.0, metadata={"help": "Weight of the SFT term (NLL of the best candidate); 0 turns it off."}
    )
    sft_loss_reduction: str = field(
        default="mean",
        metadata={
            "help": "'mean' (TRL's 'sft' loss) or 'sum': how the SFT NLL is reduced over tokens.",
            "choices": ["mean", "sum"],
        },
    )
    reward_scale: float = field(
        default=1.0, metadata={"help": "Multiplies the scores before they are LiPO-λ's labels (gains 2^ψ - 1)."}
    )

    # Parameters that control the reference model
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={"help": "Compute the reference log-probs once before training (resumable), not at every step."},
    )
    precompute_ref_batch_size: int | None = field(
        default=None,
        metadata={"help": "Rankings per forward when precomputing (default: the train / eval batch size)."},
    )

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {list(LOSS_TYPES)}, got {self.loss_type!r}.")
        if not self.beta > 0:
            raise ValueError(f"`beta` must be > 0, got {self.beta}.")
        if not self.sft_weight >= 0:
            raise ValueError(f"`sft_weight` must be >= 0, got {self.sft_weight}.")
        if self.sft_loss_reduction not in ("mean", "sum"):
            raise ValueError(f"`sft_loss_reduction` must be 'mean' or 'sum', got {self.sft_loss_reduction!r}.")
        if self.precompute_ref_batch_size is not None and self.precompute_ref_batch_size < 1:
            raise ValueError(f"`precompute_ref_batch_size` must be >= 1, got {self.precompute_ref_batch_size}.")
        super().__post_init__()
