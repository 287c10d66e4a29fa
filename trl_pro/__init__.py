"""trl-pro: Preference Ranking Optimization (PRO) and the listwise preference family for Hugging Face TRL."""

from trl_pro.utils.quiet import quiet_bitsandbytes


quiet_bitsandbytes()

from trl_pro.objectives.list_dpo import lipo_lambda_loss, plackett_luce_loss  # noqa: E402
from trl_pro.objectives.pro import pro_loss  # noqa: E402
from trl_pro.objectives.rrhf import rrhf_loss  # noqa: E402
from trl_pro.trainers.list_dpo_config import ListDPOConfig  # noqa: E402
from trl_pro.trainers.list_dpo_trainer import ListDPOTrainer  # noqa: E402
from trl_pro.trainers.pro_config import PROConfig  # noqa: E402
from trl_pro.trainers.pro_trainer import PROTrainer  # noqa: E402
from trl_pro.trainers.ranking_config import RankingConfig  # noqa: E402
from trl_pro.trainers.rrhf_config import RRHFConfig  # noqa: E402
from trl_pro.trainers.rrhf_trainer import RRHFTrainer  # noqa: E402


__version__ = "0.1.0"

__all__ = [
    "ListDPOConfig",
    "ListDPOTrainer",
    "PROConfig",
    "PROTrainer",
    "RRHFConfig",
    "RRHFTrainer",
    "RankingConfig",
    "lipo_lambda_loss",
    "plackett_luce_loss",
    "pro_loss",
    "rrhf_loss",
]
