"""Operators: multi-scale deformable attention (CUDA op with a PyTorch fallback) and its module."""
from .ms_deform_attn import cuda_ext_available, multi_scale_deformable_attention
from .ms_deform_attn_module import MultiScaleDeformableAttention

__all__ = ['multi_scale_deformable_attention', 'MultiScaleDeformableAttention',
           'cuda_ext_available']
