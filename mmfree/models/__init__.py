"""The MatMul-free LM (HGRNBit) in Flax NNX."""

from mmfree.models.config import PRESETS, ModelConfig, preset
from mmfree.models.lm import MMfreeLM

__all__ = ["PRESETS", "MMfreeLM", "ModelConfig", "preset"]
