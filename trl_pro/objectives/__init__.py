"""Ranking objectives: one short definition each, on scores the loss core has already computed.

A `RankingObjective` says how a candidate's token log-probs become its score, the loss terms of a ranking, and how
the terms make the rank loss; the loss core (`trl_pro.loss_core`) owns everything else. A new objective costs one
class here, not a copy of a trainer.
"""

from trl_pro.objectives.base import RankingObjective
from trl_pro.objectives.list_dpo import ListDPOObjective, all_pairs_loss, lipo_lambda_loss, plackett_luce_loss
from trl_pro.objectives.pro import PROObjective, pro_loss, pro_loss_terms
from trl_pro.objectives.rrhf import RRHFObjective, rrhf_loss, rrhf_loss_terms


__all__ = [
    "ListDPOObjective",
    "PROObjective",
    "RRHFObjective",
    "RankingObjective",
    "all_pairs_loss",
    "lipo_lambda_loss",
    "plackett_luce_loss",
    "pro_loss",
    "pro_loss_terms",
    "rrhf_loss",
    "rrhf_loss_terms",
]
