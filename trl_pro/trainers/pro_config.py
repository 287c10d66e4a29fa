"""Configuration of the PRO trainer, a sibling of TRL's `DPOConfig`."""

from dataclasses import dataclass, field

from trl_pro.trainers.ranking_config import RankingConfig


@dataclass
class PROConfig(RankingConfig):
    r"""
    Configuration class for the [`PROTrainer`] (Preference Ranking Optimization, Song et al. 2023).

    Only the parameters specific to PRO are listed here; see [`RankingConfig`] for those shared with the other ranking
    trainers (model, data, loss core) and [`~transformers.TrainingArguments`] for the rest.
    Every ablation of the paper's Table 5 is a config change: `sft_weight=0` (-L_SFT), `use_temperature=False` (-T),
    both (-L_SFT -T), and `rank_loss_terms="first"` (-L_PRO^{k>1}).

    Parameters:
        > Parameters that control the training

        sft_weight (`float`, *optional*, defaults to `0.05`):
            Weight β of the SFT term L_SFT (NLL of the SFT candidate, by default the best one), Eq. 7.
        scale_sft_weight (`bool`, *optional*, defaults to `True`):
            Multiply `sft_weight` by (n - 1)^2, n being the ranking length of each prompt, as in the paper.
        sft_loss_reduction (`str`, *optional*, defaults to `"sum"`):
            `"sum"`: L_SFT sums the NLL over the tokens of the SFT candidate, as in the paper. `"mean"`: averages it.
        use_temperature (`bool`, *optional*, defaults to `True`):
            Use the dynamic temperature of Eq. 10/11 when the dataset has reward-model scores. Without scores, T = 1.
            The reward gap multiplies the candidate scores, so rewards on a 0-1 scale shrink the ranking gradient:
            see `reward_scale`.
        reward_scale (`float`, *optional*, defaults to `1.0`):
            Multiplies the reward-model scores before the dynamic temperature (1/T = reward_scale * (s_k - s_i)).
            The trainer warns when a dataset's median gap between adjacent rewards, times this scale, is outside
            [0.1, 10].
        rank_loss_terms (`str`, *optional*, defaults to `"all"`):
            `"all"`: the full cascade of Eq. 8, n - 1 terms. `"first"`: only the k = 1 term (best candidate against all
            others), the paper's -L_PRO^{k>1} ablation. Every term is logged either way.

        > Parameters that control self-bootstrapping (Algorithm 1 of the paper; see `trl_pro.trainers.bootstrapping`)

        bootstrap_rounds (`int`, *optional*, defaults to `0`):
            K: the training set is split into K parts; before training on part i, responses sampled from the current
            policy are scored with the bootstrap reward model, inserted into the part's rankings and re-ranked. 0 is
            off. Each round checkpoints into `output_dir/bootstrap-round-<i>/`, where `resume_from_checkpoint=True`
            finds it.
        bootstrap_reward_model_name_or_path (`str`, *optional*):
            Reward model that scores the samples and the existing candidates (required when `bootstrap_rounds > 0`).
        bootstrap_reward_prompt_format (`str`, *optional*, defaults to `"auto"`):
            How the reward model reads (prompt, completion): `"auto"`, `"oasst"`, `"chat_template"` or `"plain"`.
        bootstrap_num_generations (`int`, *optional*, defaults to `1`):
            Responses sampled per prompt (1 in the paper).
        bootstrap_max_completion_length (`int`, *optional*, defaults to `128`):
            Maximum new tokens per sampled response.
        bootstrap_temperature, bootstrap_top_p, bootstrap_top_k:
            Sampling settings (defaults 1.0, 1.0, 0 = no top-k).
        bootstrap_generation_batch_size (`int`, *optional*, defaults to `8`):
            Prompts per `generate` call and candidates per reward-model forward.
        bootstrap_keep_top1 (`bool`, *optional*, defaults to `True`):
            Footnote 6's guard: a sample never takes the place of the original top-1; the other candidates are
            re-ranked by reward, descending.

    > [!NOTE]
    > These parameters have default values different from [`~transformers.TrainingArguments`]:
    > - `logging_steps`: Defaults to `10` instead of `500`.
    > - `gradient_checkpointing`: Defaults to `True` instead of `False`.
    > - `bf16`: Defaults to `True` if `fp16` is not set, instead of `False`.
    > - `learning_rate`: Defaults to `5e-6` (the paper's) instead of `5e-5`.
    """

    learning_rate: float = field(default=5e-6, metadata={"help": "The initial learning rate for AdamW."})

    # Parameters that control the training
    sft_weight: float = field(
        default=0.05, metadata={"help": "Weight beta of the SFT term (NLL of the best candidate), Eq. 7."}
    )
    scale_sft_weight: bool = field(
        default=True,
        metadata={"help": "Multiply `sft_weight` by (n - 1)^2, n being the ranking length, as in the paper."},
    )
    sft_loss_reduction: str = field(
        default="sum",
        metadata={
            "help": "'sum': SFT NLL summed over the tokens of the SFT candidate (paper); 'mean': averaged.",
            "choices": ["sum", "mean"],
        },
    )
    use_temperature: bool = field(
        default=True,
        metadata={
            "help": "Use the dynamic temperature of Eq. 10/11 when the dataset has reward-model scores. The reward "
            "gap multiplies the candidate scores, so 0-1 rewards shrink the ranking gradient (see `reward_scale`)."
        },
    )
    reward_scale: float = field(
        default=1.0,
        metadata={
            "help": "Multiplies the reward-model scores before the dynamic temperature: 1/T = reward_scale * "
            "(s_k - s_i). The trainer warns when a dataset's median adjacent reward gap times this is outside "
            "[0.1, 10]."
        },
    )
    rank_loss_terms: str = field(
        default="all",
        metadata={
            "help": "'all': the full cascade of Eq. 8; 'first': only the k=1 term (the paper's -L_PRO^{k>1} "
            "ablation).",
            "choices": ["all", "first"],
        },
    )

    # Parameters that control self-bootstrapping
    bootstrap_rounds: int = field(
        default=0,
        metadata={
            "help": "Self-bootstrapping (Algorithm 1): split the train set into this many parts and, before "
            "each, add responses sampled from the current policy, scored and re-ranked. 0 is off."
        },
    )
    bootstrap_reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Reward model that scores samples and candidates during self-bootstrapping."}
    )
    bootstrap_reward_prompt_format: str = field(
        default="auto",
        metadata={
            "help": "How the bootstrap reward model reads (prompt, completion).",
            "choices": ["auto", "oasst", "chat_template", "plain"],
        },
    )
    bootstrap_num_generations: int = field(
        default=1, metadata={"help": "Responses sampled from the policy per prompt when bootstrapping (paper: 1)."}
    )
    bootstrap_max_completion_length: int = field(
        default=128, metadata={"help": "Maximum new tokens of a bootstrap sample."}
    )
    bootstrap_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature when bootstrapping."})
    bootstrap_top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold when bootstrapping."})
    bootstrap_top_k: int = field(default=0, metadata={"help": "Top-k sampling when bootstrapping (0: off)."})
    bootstrap_generation_batch_size: int = field(
        default=8, metadata={"help": "Prompts per generate call and candidates per reward-model forward."}
    )
    bootstrap_keep_top1: bool = field(
        default=True,
        metadata={"help": "Footnote 6: a sample never replaces the original top-1; the rest is re-ranked by reward."},
    )

    def __post_init__(self):
        def check(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(message)

        check(self.sft_weight >= 0, f"`sft_weight` must be >= 0, got {self.sft_weight}.")
        check(
            self.reward_scale > 0 and self.reward_scale != float("inf"),
            f"`reward_scale` must be a finite number > 0, got {self.reward_scale}.",
        )
        check(
            self.sft_loss_reduction in ("sum", "mean"),
            f"`sft_loss_reduction` must be 'sum' or 'mean', got {self.sft_loss_reduction!r}.",
        )
        check(
            self.rank_loss_terms in ("all", "first"),
            f"`rank_loss_terms` must be 'all' or 'first', got {self.rank_loss_terms!r}.",
        )
        check(self.bootstrap_rounds >= 0, f"`bootstrap_rounds` must be >= 0, got {self.bootstrap_rounds}.")
        check(
            not self.bootstrap_rounds or self.bootstrap_reward_model_name_or_path is not None,
            "`bootstrap_rounds` > 0 needs `bootstrap_reward_model_name_or_path` to score the samples.",
        )
        check(
            self.bootstrap_num_generations >= 1,
            f"`bootstrap_num_generations` must be >= 1, got {self.bootstrap_num_generations}.",
        )
        super().__post_init__()
