"""The integer parameters of a trained model, derived once, in numpy, from its float parameters.

The `hw` model (when frozen for inference) and the lowering both take them from here, so a value
at a rounding boundary (a weight at 0.5·β, a lower bound between two Q.F steps) lands on the same
integer in both, whichever backend trained or runs the model.
"""

import numpy as np

from mmfree.quant.bitnet import WEIGHT_EPS


def ternary(w_IxO) -> tuple[np.ndarray, np.float32]:
  """(W_q ∈ {−1, 0, 1} as int8, β = max(mean|W|, eps) as float32): W ≈ β·W_q."""
  w = np.asarray(w_IxO, np.float32)
  beta = np.float32(max(float(np.mean(np.abs(w), dtype=np.float64)), WEIGHT_EPS))
  return np.clip(np.round(w / beta), -1, 1).astype(np.int8), beta


def lower_bounds(lb_param_LxD) -> np.ndarray:
  """lb_l = cumsum(softmax(Λ, layers))_l − p_0 as float32 [L, D] (lb_0 = 0)."""
  x = np.asarray(lb_param_LxD, np.float64)
  p = np.exp(x - x.max(axis=0))
  p /= p.sum(axis=0)
  return (np.cumsum(p, axis=0) - p[0]).astype(np.float32)
