"""The trainers: `RankingTrainer` / `RankingConfig` own the machinery (data, loss core, metrics, checkpoints, resume);
PRO, RRHF and list DPO name their objective, SFT weight and paper (list DPO also its reference model). Self-bootstrapping (`bootstrapping`) trains through the
trainer's public `train_part` hook."""

from trl_pro.trainers.list_dpo_config import ListDPOConfig
from trl_pro.trainers.list_dpo_trainer import ListDPOTrainer
from trl_pro.trainers.pro_config import PROConfig
from trl_pro.trainers.pro_trainer import PROTrainer
from trl_pro.trainers.ranking_config import RankingConfig
from trl_pro.trainers.ranking_trainer import RankingTrainer
from trl_pro.trainers.rrhf_config import RRHFConfig
from trl_pro.trainers.rrhf_trainer import RRHFTrainer


__all__ = [
    "ListDPOConfig",
    "ListDPOTrainer",
    "PROConfig",
    "PROTrainer",
    "RRHFConfig",
    "RRHFTrainer",
    "RankingConfig",
    "RankingTrainer",
]
