"""BitNet b1.58 quantizers with straight-through gradients.

Forward values are exact integers (so the integer accumulate `x_q @ w_q` is exact in float32);
gradients pass as if quantization were the identity, as in the reference implementation.
"""

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient

ACT_EPS = 1e-5  # floor of max|x| in the per-token scale
WEIGHT_EPS = 1e-5  # floor of mean|W| in the per-tensor scale


def _ste(q, u):
  """Value of `q`, gradient of `u`: `u - sg(u)` is exactly zero, so the forward stays exact."""
  return sg(q) + (u - sg(u))


def act_quant_int8(x_BxTxD):
  """Per-token absmax int8: returns (x_q, s_x) with x ≈ x_q / s_x, x_q ∈ [-128, 127]."""
  s_BxTx1 = 127.0 / jnp.maximum(jnp.max(jnp.abs(x_BxTxD), axis=-1, keepdims=True), ACT_EPS)
  s_BxTx1 = sg(s_BxTx1)
  u = x_BxTxD * s_BxTx1
  return _ste(jnp.clip(jnp.round(u), -128, 127), u), s_BxTx1


def weight_beta(w_IxO):
  """Per-tensor absmean scale β = max(mean|W|, eps)."""
  return jnp.maximum(jnp.mean(jnp.abs(w_IxO)), WEIGHT_EPS)


def weight_ternary(w_IxO):
  """Ternary absmean: returns (w_q ∈ {-1, 0, 1}, β) with W ≈ β · w_q."""
  beta = sg(weight_beta(w_IxO))
  u = w_IxO / beta
  return _ste(jnp.clip(jnp.round(u), -1, 1), u), beta
