from .hybrid_encoder import DFineHybridEncoder, HybridEncoder, sincos_position_embedding

__all__ = ['DFineHybridEncoder', 'HybridEncoder', 'sincos_position_embedding']
