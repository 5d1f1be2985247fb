"""RMSNorm and BitLinear (ternary weights, int8 activations, each with its own input RMSNorm)."""

import jax
import jax.numpy as jnp
from flax import nnx

from mmfree.loihi import fixed
from mmfree.quant import bitnet, integers
from mmfree.quant import hw as hw_lib
from mmfree.quant.points import point


class Frozen(nnx.Variable):
  """Inference-only state: not a Param, so optimizers and gradients never see it."""


class RMSNorm(nnx.Module):
  """x / sqrt(mean(x²) + eps) ⊙ w in float32; at `hw` the integer kernel (quant.rmsnorm='int')."""

  def __init__(self, dim: int, eps: float):
    self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
    self.eps = eps

  def __call__(self, x_BxTxD):
    x_BxTxD = point(self, "rms_in", x_BxTxD.astype(jnp.float32))
    w_D = point(self, "rms_gain", self.weight[...])
    hw = getattr(self, "hw", None)
    fmt = None if hw is None else hw_lib.rms_format(hw, x_BxTxD.shape[-1], self.eps)
    ms_BxTx1 = jnp.mean(jnp.square(x_BxTxD), axis=-1, keepdims=True)
    if fmt is None:
      ms_BxTx1 = point(self, "rms_ms", ms_BxTx1)
      return point(
        self, "rms_out", x_BxTxD * point(self, "rms_inv", jax.lax.rsqrt(ms_BxTx1 + self.eps)) * w_D
      )
    # The chip's values, the float norm's gradients (QAT trains through it). The kernel has no
    # mean-square point (its sum of squares is exact); its 1/rms is the rms_inv point.
    y_BxTxD, r_BxTx1, r_clipped = hw_lib.rmsnorm(x_BxTxD, w_D, fmt)
    inv_BxTx1 = hw_lib.ste(r_BxTx1, jax.lax.rsqrt(ms_BxTx1 + self.eps))
    inv_BxTx1 = point(self, "rms_inv", inv_BxTx1, clipped=r_clipped)
    return point(self, "rms_out", hw_lib.ste(y_BxTxD, x_BxTxD * inv_BxTx1 * w_D))


def hw_input(layer: nnx.Module, x_BxTxI):
  """The integer input of a BitLinear at `hw` (its bitlinear_in width, int8 by default): a
  per-token power-of-two shift (no division), or the static calibrated scale of its
  `bitlinear_in` point, which has clipped x to the same width already (and counted it)."""
  hw = getattr(layer, "hw", None)
  if hw is None:
    raise ValueError(
      "precision 'hw' needs calibrated scales: run `mmfree quantize calibrate RUN_DIR`, then "
      "load with mmfree.load(RUN_DIR, precision='hw')"
    )
  bits = hw.cfg.bits_of("bitlinear_in")
  hw_lib.check_input_bits("a BitLinear", x_BxTxI.shape[-1], bits)
  s = hw.scale("bitlinear_in")
  if hw.cfg.bitlinear_input == "static" and s is not None:
    bits = s.bits
    s_x = jnp.asarray(1.0 / s.scale, jnp.float32)  # x already lies on this grid
  else:  # the ceiling exponent maps the token's absmax inside the range: nothing clips
    amax_BxTx1 = jax.lax.stop_gradient(jnp.max(jnp.abs(x_BxTxI), axis=-1, keepdims=True))
    s_x = 2.0 ** -fixed.pow2_exponent(amax_BxTx1, bits).astype(jnp.float32)
  u = x_BxTxI * s_x
  return hw_lib.ste(fixed.clip_to(jnp.round(u), bits), u), s_x, bits


class BitLinear(nnx.Module):
  """y = (x_q · W_q) · β / s_x after the layer's own RMSNorm; `float` skips quantization.

  The kernel is stored [in, out]. After `freeze()` it holds W_q ∈ {-1, 0, 1} and β is kept
  beside it, so inference quantizes weights once instead of on every call.
  """

  def __init__(
    self,
    din: int,
    dout: int,
    *,
    eps: float,
    precision: str,
    init,
    rngs: nnx.Rngs,
    matmul_dtype: str = "float32",
  ):
    self.kernel = nnx.Param(init(rngs.params(), (din, dout), jnp.float32))
    self.norm = RMSNorm(din, eps)
    self.precision = precision
    self.matmul_dtype = matmul_dtype
    self.beta: Frozen | None = None

  def quantized_weight(self):
    """(W_q, β): the ternary kernel and its scale (straight-through gradients to the kernel)."""
    if self.beta is not None:
      return self.kernel[...], self.beta[...]
    return bitnet.weight_ternary(self.kernel[...])

  def freeze(self):
    """Replace the latent kernel with W_q and store β, derived in numpy as the lowering derives
    them (`integers.ternary`): for inference only."""
    if self.beta is None:
      w_q, beta = integers.ternary(self.kernel[...])
      self.kernel = nnx.Param(jnp.asarray(w_q, jnp.float32))
      self.beta = nnx.data(Frozen(jnp.asarray(beta)))

  def __call__(self, x_BxTxI):
    x_BxTxI = point(self, "bitlinear_in", self.norm(x_BxTxI))
    if self.precision == "float":
      if self.beta is not None:
        raise ValueError("a frozen BitLinear holds ternary weights: it cannot run at `float`")
      return self._matmul(x_BxTxI, self.kernel[...])
    if self.precision == "hw":
      x_q, s_BxTx1, x_bits = hw_input(self, x_BxTxI)
    else:
      x_q, s_BxTx1 = bitnet.act_quant_int8(x_BxTxI)
    w_q, beta = self.quantized_weight()
    # Integer-valued operands: the float32 accumulate is exact while |sum| < 2^24.
    acc_BxTxO = point(self, "bitlinear_acc", self._matmul(x_q, w_q))  # counted before its clip
    if self.precision == "hw":
      acc_BxTxO = hw_lib.ste(fixed.clip_to(acc_BxTxO, self.hw.cfg.acc_bits), acc_BxTxO)
    y_BxTxO = acc_BxTxO * (beta / s_BxTx1)
    if self.precision == "hw":
      y_BxTxO = hw_lib.rescale(self.hw, acc_BxTxO, beta, s_BxTx1, y_BxTxO, x_q.shape[-1], x_bits)
    return point(self, "bitlinear_out", y_BxTxO)

  def _matmul(self, x_BxTxI, w_IxO):
    # On rows [B·T, I]: a weight gradient that contracts B and T as one dimension needs no
    # transposed copy of the output gradient (XLA's CPU dot made one per layer, ~15% of a step).
    dt = jnp.dtype(self.matmul_dtype)
    x_NxI = x_BxTxI.reshape(-1, x_BxTxI.shape[-1]).astype(dt)
    y_NxO = jnp.matmul(x_NxI, w_IxO.astype(dt), preferred_element_type=jnp.float32)
    return y_NxO.reshape(*x_BxTxI.shape[:-1], w_IxO.shape[-1])
