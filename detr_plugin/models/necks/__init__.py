from .hybrid_encoder import HybridEncoder, sincos_position_embedding

__all__ = ['HybridEncoder', 'sincos_position_embedding']
