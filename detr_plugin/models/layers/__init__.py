from .deformable_transformer import DeformableDecoderLayer, DeformableEncoderLayer
from .mlp import FFN, MLP
from .multihead_attention import MultiheadAttention
from .positional_encoding import LearnedPositionalEncoding, SinePositionalEncoding
from .transformer import (DetrDecoderLayer, DetrEncoderLayer, DetrTransformerDecoder,
                          DetrTransformerEncoder)

__all__ = [
    'DeformableEncoderLayer', 'DeformableDecoderLayer',
    'FFN', 'MLP', 'MultiheadAttention', 'SinePositionalEncoding', 'LearnedPositionalEncoding',
    'DetrEncoderLayer', 'DetrDecoderLayer', 'DetrTransformerEncoder', 'DetrTransformerDecoder'
]
from .deformable_detr_transformer import (DeformableDetrTransformerDecoder,  # noqa: E402
                                          DeformableDetrTransformerEncoder)
from .encoder_proposals import EncoderProposals  # noqa: E402
from .multi_scale import LevelAnchors, LevelIndex, MultiScaleLevels  # noqa: E402
from .predictions import DenoisingOutputs, DetectionOutputs, LayerPrediction  # noqa: E402

__all__ += [
    'DeformableDetrTransformerEncoder', 'DeformableDetrTransformerDecoder', 'MultiScaleLevels',
    'LevelAnchors', 'LevelIndex', 'EncoderProposals', 'DenoisingOutputs', 'DetectionOutputs',
    'LayerPrediction'
]
from .csp_rep_layer import ConvNormAct, CSPRepLayer, RepVggBlock  # noqa: E402
from .denoising import ContrastiveDenoising, DenoisingGroups  # noqa: E402
from .dfine_decoder import DFINEDecoder, DFINEDecoderLayer, GatedFusion  # noqa: E402
from .ema import ForeachExpMomentumEMA  # noqa: E402
from .frozen_batch_norm import FrozenBatchNorm2d  # noqa: E402
from .rtdetr_decoder import RTDETRDecoder  # noqa: E402
from .sync_batch_norm import SyncBatchNorm2d  # noqa: E402

__all__ += [
    'ConvNormAct', 'CSPRepLayer', 'RepVggBlock', 'ContrastiveDenoising', 'DenoisingGroups',
    'DFINEDecoder', 'DFINEDecoderLayer', 'GatedFusion',
    'ForeachExpMomentumEMA', 'FrozenBatchNorm2d', 'RTDETRDecoder',
    'SyncBatchNorm2d'
]
from .box_distribution import (BinTargets, boxes_to_bins, distances_to_boxes,  # noqa: E402
                               distribution_to_distances, weighting_function)

__all__ += [
    'BinTargets', 'boxes_to_bins', 'distances_to_boxes', 'distribution_to_distances',
    'weighting_function'
]
from .rep_ncsp_elan import RepNCSPELAN4, SCDown  # noqa: E402

__all__ += ['RepNCSPELAN4', 'SCDown']
