"""Quantizers: BitNet ternary weights and int8 activations (hardware-aware levels come later)."""
