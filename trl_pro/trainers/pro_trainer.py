"""`PROTrainer`: Preference Ranking Optimization (Song et al. 2023) on the shared ranking machinery."""

import textwrap

import torch
from datasets import Dataset

from trl_pro.data.layout import RankingLayout
from trl_pro.objectives.pro import PROObjective
from trl_pro.trainers.bootstrapping import bootstrap_train
from trl_pro.trainers.pro_config import PROConfig
from trl_pro.trainers.ranking_config import RankingConfig
from trl_pro.trainers.ranking_trainer import RankingTrainer


class PROTrainer(RankingTrainer):
    """
    Trainer for Preference Ranking Optimization (PRO), from [Preference Ranking Optimization for Human
    Alignment](https://huggingface.co/papers/2306.17492). For each prompt with candidates ranked best to worst, PRO
    scores every candidate by its mean token log-probability and trains the model so that each candidate outscores all
    the worse ones (a cascade of softmax terms, Bradley-Terry for two candidates), plus an SFT term on the best one.
    No reference model and no reward model are needed during training.

    Example:

    ```python
    >>> from datasets import load_dataset
    >>> from trl_pro import PROTrainer

    >>> dataset = load_dataset("trl-lib/ultrafeedback_binarized", split="train")
    >>> trainer = PROTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", train_dataset=dataset)
    >>> trainer.train()
    ```

    Arguments: those of [`RankingTrainer`], with `args` a [`PROConfig`].
    """

    _tag_names = ["trl", "trl-pro", "pro"]
    _name = "PRO"
    _paper = {
        "title": "Preference Ranking Optimization for Human Alignment",
        "id": "2306.17492",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{song2024preference,
                title        = {{Preference Ranking Optimization for Human Alignment}},
                author       = {Feifan Song and Bowen Yu and Minghao Li and Haiyang Yu and Fei Huang and Yongbin Li and Houfeng Wang},
                year         = 2024,
                booktitle    = {Thirty-Eighth AAAI Conference on Artificial Intelligence, AAAI 2024},
                pages        = {18990--18998},
            }"""),
    }
    config_class = PROConfig
    _tied_scores_hint = (
        "With the dynamic temperature (`use_temperature=True`) they contribute no gradient; set "
        "`use_temperature=False` if the scores are placeholders."
    )

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`, or self-bootstrapping (Algorithm 1, `trl_pro.trainers.bootstrapping`) when `bootstrap_rounds > 0`."""
        if self.args.bootstrap_rounds:
            return bootstrap_train(
                self,
                resume_from_checkpoint=resume_from_checkpoint,
                trial=trial,
                ignore_keys_for_eval=ignore_keys_for_eval,
                **kwargs,
            )
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )

    def _objective(self) -> PROObjective:
        return PROObjective(sft_loss_reduction=self.args.sft_loss_reduction, rank_loss_terms=self.args.rank_loss_terms)

    def _sft_weight(self, layout: RankingLayout) -> torch.Tensor:
        """beta of each prompt: `sft_weight`, times (n - 1)^2 for a ranking of length n when `scale_sft_weight`."""
        beta = torch.full((layout.num_prompts,), self.args.sft_weight, device=layout.ranking_offsets.device)
        if self.args.scale_sft_weight:
            beta = beta * (layout.ranking_lengths() - 1).float() ** 2
        return beta

    def _uses_rewards(self, args: RankingConfig) -> bool:
        # Without the dynamic temperature, PRO ignores the scores (they still sort the candidates)
        return args.use_temperature

    def _rewards(self, inputs) -> torch.Tensor | None:
        rewards = super()._rewards(inputs)
        if rewards is not None and self.args.reward_scale != 1.0:
            rewards = rewards * self.args.reward_scale
        return rewards

    def _check_dataset_scores(self, dataset: Dataset, dataset_name: str, args: RankingConfig) -> None:
        super()._check_dataset_scores(dataset, dataset_name, args)
        self._warn_if_reward_gaps_far_from_one(dataset, dataset_name, args.reward_scale)
