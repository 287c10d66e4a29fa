"""RRHFTrainer: RRHF (Yuan et al. 2023) on the machinery of `RankingTrainer`; only the objective is its own."""

import textwrap

import torch

from trl_pro.data.layout import RankingLayout
from trl_pro.objectives.rrhf import RRHFObjective
from trl_pro.trainers.ranking_trainer import RankingTrainer
from trl_pro.trainers.rrhf_config import RRHFConfig


class RRHFTrainer(RankingTrainer):
    """
    Trainer for RRHF, from [RRHF: Rank Responses to Align Language Models with Human Feedback without
    tears](https://huggingface.co/papers/2304.05302). For each prompt with candidates ranked best to worst, RRHF scores
    every candidate by its length-normalized log-probability p_i = sum of token log-probs / len_i ** `length_penalty`
    and trains with

        loss = rrhf_weight * sum_{j preferred to i} max(0, p_i - p_j)  +  NLL of the best candidate (mean over tokens),

    pairs being formed within the candidates of each prompt; preferences come from the reward-model scores when the
    data has them (tied candidates form no pair), from the given order otherwise. Same data formats, loss core, metrics
    and constructor as [`PROTrainer`]; no reference model and no reward model are needed during training.

    Example:

    ```python
    >>> from datasets import load_dataset
    >>> from trl_pro import RRHFTrainer

    >>> dataset = load_dataset("trl-lib/ultrafeedback_binarized", split="train")
    >>> trainer = RRHFTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", train_dataset=dataset)
    >>> trainer.train()
    ```

    Arguments: those of [`RankingTrainer`], with `args` an [`RRHFConfig`].
    """

    _tag_names = ["trl", "trl-pro", "rrhf"]
    _name = "RRHF"
    _paper = {
        "title": "RRHF: Rank Responses to Align Language Models with Human Feedback without tears",
        "id": "2304.05302",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{yuan2023rrhf,
                title        = {{RRHF: Rank Responses to Align Language Models with Human Feedback without tears}},
                author       = {Zheng Yuan and Hongyi Yuan and Chuanqi Tan and Wei Wang and Songfang Huang and Fei Huang},
                year         = 2023,
                journal      = {arXiv preprint arXiv:2304.05302},
            }"""),
    }
    config_class = RRHFConfig
    _tied_scores_hint = "Tied candidates form no pair; only the SFT term trains on these rankings."

    def _objective(self) -> RRHFObjective:
        return RRHFObjective(rrhf_weight=self.args.rrhf_weight, length_penalty=self.args.length_penalty)

    def _sft_weight(self, layout: RankingLayout) -> torch.Tensor:
        # loss = rrhf_weight * rank + SFT: the SFT term is not weighted
        return torch.ones(layout.num_prompts, device=layout.ranking_offsets.device)

    def _uses_rewards(self, args: RRHFConfig) -> bool:
        return True

    def _layout(self, inputs) -> RankingLayout:
        # RRHF's SFT term is the best candidate's (the first, candidates being sorted best to worst), whatever
        # `sft_index` the data names
        return RankingLayout(inputs["token_offsets"], inputs["ranking_offsets"], inputs["ranking_offsets"][:-1])
