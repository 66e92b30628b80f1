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
