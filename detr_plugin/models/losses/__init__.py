from .decoupled_distillation import (DecoupledDistillationLoss, DistillationBalance,
                                     decoupled_distillation_loss, distillation_balance)
from .fine_grained_localization import (FineGrainedLocalizationLoss,
                                        fine_grained_localization_loss)
from .giou_loss import GIoULoss
from .matchability_aware import MatchabilityAwareLoss, matchability_aware_loss
from .varifocal_loss import RTDETRVarifocalLoss, varifocal_loss

__all__ = [
    'RTDETRVarifocalLoss', 'varifocal_loss', 'FineGrainedLocalizationLoss',
    'fine_grained_localization_loss', 'DecoupledDistillationLoss', 'DistillationBalance',
    'decoupled_distillation_loss', 'distillation_balance', 'MatchabilityAwareLoss',
    'matchability_aware_loss', 'GIoULoss'
]
