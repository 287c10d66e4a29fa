"""Loss core: from the final hidden states of the response-predicting positions to the loss of a ranking objective
(PRO's Eq. 7 by default; RRHF with `trl_pro.objectives.rrhf.RRHFObjective`; see `trl_pro.objectives`).

Modules (Triton is optional and imported only when the Triton implementation runs):
- `dispatch`: `ranking_loss_from_hidden`, the entry point of the trainer, over the implementations.
- `fused`: `FusedRankingLossFunction`, the autograd Function of the fused core, and `fused_ranking_loss`.
- `head`: the model's forward with the loss core in place of the logits (`add_ranking_loss_head`).
- `shared_prompt`: the shared-prompt layout's attention masks and position ids.
- `torch_path`: the chunked token-level algorithm in torch (the CPU path, readable twin of the kernels), and the
  ranking level of every objective in torch with autograd's gradient.
- `triton/token_logprob`: logits tiles + online log-sum-exp forward, logits-gradient tiles backward.
- `triton/pro_ranking`: PRO only, one program per prompt, cascade with dynamic temperature, loss and d loss / d scores;
  tested against `trl_pro.objectives.pro.PROObjective`, the one torch definition of PRO.
- `reference`: eager [T, V] references, for tests and benchmarks only.
"""

from trl_pro.loss_core.common import RankingLossOutput, TileConfig
from trl_pro.loss_core.dispatch import ranking_loss_from_hidden, ranking_loss_from_sums
from trl_pro.loss_core.fused import FusedRankingLossFunction, fused_ranking_loss


__all__ = [
    "FusedRankingLossFunction",
    "RankingLossOutput",
    "TileConfig",
    "fused_ranking_loss",
    "ranking_loss_from_hidden",
    "ranking_loss_from_sums",
]
