"""The MatMul-free LM (HGRNBit) in Flax NNX."""

from mmfree.core.model import PRESETS, ModelConfig, preset
from mmfree.models.lm import MMfreeLM

__all__ = ["PRESETS", "MMfreeLM", "ModelConfig", "preset"]
