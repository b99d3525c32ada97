"""Fusion strategies, created by name: weighted, concat, late, gated, attention, tensor, low_rank, cross_attention
(and ``single``, used for models with one input)."""
from ._base import FUSIONS, Fusion, create_fusion, describe_fusions, list_fusions, register_fusion
from .attention import AttentionFusion
from .concat import ConcatFusion
from .cross_attention import CrossAttentionFusion
from .gated import GatedFusion
from .late import LateFusion
from .single import SingleInput
from .tensor import LowRankFusion, TensorFusion
from .weighted import WeightedFusion

__all__ = ["FUSIONS", "Fusion", "create_fusion", "describe_fusions", "list_fusions", "register_fusion",
           "AttentionFusion", "ConcatFusion", "CrossAttentionFusion", "GatedFusion", "LateFusion", "LowRankFusion",
           "SingleInput", "TensorFusion", "WeightedFusion"]
