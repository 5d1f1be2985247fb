"""MLGRU token mixer: an elementwise linear recurrence h_t = f_t ⊙ h_{t−1} + c_t."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mmfree.core.model import ModelConfig
from mmfree.loihi import fixed, neurons
from mmfree.models.layers import BitLinear, RMSNorm
from mmfree.quant import hw as hw_lib
from mmfree.quant.points import point


def scan_associative(f_BxTxD, c_BxTxD, h0_BxD):
  """Parallel over time: composing (f, c) pairs is associative, so depth is O(log T)."""
  c_BxTxD = c_BxTxD.at[:, 0].add(f_BxTxD[:, 0] * h0_BxD)

  def combine(left, right):
    f_l, c_l = left
    f_r, c_r = right
    return f_l * f_r, f_r * c_l + c_r

  _, h_BxTxD = jax.lax.associative_scan(combine, (f_BxTxD, c_BxTxD), axis=1)
  return h_BxTxD


def scan_sequential(f_BxTxD, c_BxTxD, h0_BxD):
  """One step per token with `lax.scan` (the baseline the benchmark compares against)."""

  def step(h_BxD, fc):
    h_BxD = fc[0] * h_BxD + fc[1]
    return h_BxD, h_BxD

  fc = (jnp.swapaxes(f_BxTxD, 0, 1), jnp.swapaxes(c_BxTxD, 0, 1))
  _, h_TxBxD = jax.lax.scan(step, h0_BxD, fc)
  return jnp.swapaxes(h_TxBxD, 0, 1)


def recurrence(f_BxTxD, c_BxTxD, h0_BxD, scan: str):
  """All hidden states h_{0..T−1}; a single token is the O(1) recurrent step."""
  if f_BxTxD.shape[1] == 1:
    return (f_BxTxD[:, 0] * h0_BxD + c_BxTxD[:, 0])[:, None]
  fn = scan_associative if scan == "associative" else scan_sequential
  return fn(f_BxTxD, c_BxTxD, h0_BxD)


class MLGRU(nnx.Module):
  """f = σ(f(x)) raised by the lower bound; c = SiLU(i(x))(1−f); o = o(RMSNorm(g(x))·SiLU(h))."""

  def __init__(self, cfg: ModelConfig, layer_idx: int, rngs: nnx.Rngs):
    H, D = cfg.hidden_size, cfg.inner_size
    # Upstream: xavier-uniform with gain 2^-2.5 for the gates; o is a residual output projection.
    gate_init = jax.nn.initializers.variance_scaling(2**-5, "fan_avg", "uniform")
    o_init = jax.nn.initializers.normal(
      cfg.initializer_range / math.sqrt(2 * cfg.num_hidden_layers)
    )
    kw = dict(
      eps=cfg.rms_norm_eps, precision=cfg.precision, matmul_dtype=cfg.matmul_dtype, rngs=rngs
    )
    self.i_proj = BitLinear(H, D, init=gate_init, **kw)
    self.f_proj = BitLinear(H, D, init=gate_init, **kw)
    self.g_proj = BitLinear(H, D, init=gate_init, **kw)
    self.g_norm = RMSNorm(D, cfg.rms_norm_eps)
    self.o_proj = BitLinear(D, H, init=o_init, **kw)
    self.layer_idx = layer_idx
    self.scan = cfg.scan

  def __call__(self, x_BxTxH, lb_D, h0_BxD):
    """Returns the output [B, T, H] and the last state h_{T−1} [B, D] (float32)."""
    hw = getattr(self, "hw", None)
    lb_D = lb_D if self.layer_idx > 0 else None
    f_pre, i_pre = self.f_proj(x_BxTxH), self.i_proj(x_BxTxH)
    sig_BxTxD = jax.nn.sigmoid(f_pre)
    f_BxTxD = sig_BxTxD if lb_D is None else lb_D + (1 - lb_D) * sig_BxTxD
    c_BxTxD = jax.nn.silu(i_pre) * (1 - f_BxTxD)
    h0_BxD = h0_BxD.astype(jnp.float32)
    if hw is None:
      point(self, "f_sigma", sig_BxTxD)
      f_BxTxD = point(self, "f_lb", f_BxTxD)
      c_BxTxD = point(self, "c", c_BxTxD)
      h_BxTxD = recurrence(f_BxTxD, c_BxTxD, h0_BxD, self.scan)
      h_BxTxD = point(self, "h", h_BxTxD)  # every step's state: what the neuron holds
      s_BxTxD, s_clipped = jax.nn.silu(h_BxTxD), None
    else:
      f_BxTxD, c_BxTxD, h_BxTxD = self._hw_gates(hw, f_pre, i_pre, lb_D, f_BxTxD, c_BxTxD, h0_BxD)
      s_BxTxD, s_clipped = hw_lib.silu(h_BxTxD, hw.cfg)
    g_BxTxD = point(self, "g_norm", self.g_norm(self.g_proj(x_BxTxH)))
    s_BxTxD = point(self, "silu_h", s_BxTxD, clipped=s_clipped)
    if hw is None:
      o_BxTxD = g_BxTxD * s_BxTxD
    else:
      o_BxTxD = hw_lib.product(hw, g_BxTxD, "g_norm", s_BxTxD, "silu_h", "gated")
    o_BxTxD = point(self, "gated", o_BxTxD)
    return self.o_proj(o_BxTxD), h_BxTxD[:, -1]

  def _hw_gates(self, hw, f_pre, i_pre, lb_D, f_float, c_float, h0_BxD):
    """The fused MLGRU neuron in fixed point: LUT σ, lower bound, SiLU(i)·(1−f), integrator."""
    F, cfg = hw.cfg.lut_out_frac, hw.cfg
    sig_q = hw_lib.sigmoid_q(f_pre, cfg)
    point(self, "f_sigma", hw_lib.ste(sig_q * 2.0**-F, jax.nn.sigmoid(f_pre)))
    f_q = sig_q if lb_D is None else hw_lib.forget_q(sig_q, lb_D, cfg)
    f_BxTxD = point(self, "f_lb", hw_lib.ste(f_q * 2.0**-F, f_float))
    if cfg.nonlinearity == "relu":  # the gradient of what runs
      c_float = jax.nn.relu(i_pre) * (1 - f_float)
    W = hw_lib.WIDE_BITS  # SiLU(i) (or ReLU(i)) times 1 − f, in Q.lut_in_frac
    act_q, act_clipped = hw_lib.silu_q(i_pre, cfg)
    c_q = fixed.mul_shift(act_q, neurons.one_minus(f_q, F), F, W, W, F + 2, cfg.rounding)
    c_BxTxD = hw_lib.ste(c_q * 2.0**-cfg.lut_in_frac, c_float)
    c_BxTxD = point(self, "c", c_BxTxD, clipped=act_clipped)
    s_h = hw.scale("h")
    h_float = recurrence(f_BxTxD, c_BxTxD, h0_BxD, self.scan)
    if s_h is None:  # the state left unquantized
      return f_BxTxD, c_BxTxD, point(self, "h", h_float)
    h_BxTxD, h_clipped = hw_lib.integrate(f_q, c_BxTxD, h0_BxD, s_h, cfg)
    return f_BxTxD, c_BxTxD, point(self, "h", hw_lib.ste(h_BxTxD, h_float), clipped=h_clipped)
