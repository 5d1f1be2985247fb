"""The `hw` precision level: the model as the chip computes it, with straight-through gradients.

Every enabled quantization point holds `q · s` with its frozen calibrated scale `s`; σ and SiLU
are the integer LUT kernels, the forget gate is fixed point, the MLGRU state is the saturating
integer integrator, and RMSNorms are the integer kernel (`quant.rmsnorm='int'`). The integer
arithmetic is `mmfree.loihi.neurons`, the same functions the emulator runs, applied to int32 jax
arrays. Values are exact; gradients flow as if through the `bitnet` computation (`ste`).
"""

import contextlib
import contextvars
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from mmfree.core.quant import WIDE_BITS, QuantConfig, Scale
from mmfree.loihi import fixed, neurons

sg = jax.lax.stop_gradient
# Points whose format the kernels fix (Q.lut_out_frac gates, integer accumulators): no calibration.
FIXED_POINTS = ("f_sigma", "f_lb", "bitlinear_acc")


@dataclasses.dataclass(frozen=True)
class Hw:
  """A module's part of the `hw` level (static): the QuantConfig and its points' frozen scales."""

  cfg: QuantConfig
  scales: tuple[tuple[str, Scale], ...]

  def scale(self, name: str) -> Scale | None:
    return dict(self.scales).get(name)


def fixed_format(name: str, cfg: QuantConfig) -> Scale:
  """The format of a FIXED_POINTS point: gates in Q.lut_out_frac (up to 1 inclusive), and
  accumulators as integers of acc_bits."""
  if name == "bitlinear_acc":
    return Scale(1.0, cfg.acc_bits)
  return Scale(2.0**-cfg.lut_out_frac, cfg.lut_out_frac + 2)


_INFERENCE = contextvars.ContextVar("hw_inference", default=False)


@contextlib.contextmanager
def inference():
  """Trace the `hw` level for inference: no straight-through float paths (XLA drops them)."""
  token = _INFERENCE.set(True)
  try:
    yield
  finally:
    _INFERENCE.reset(token)


def materialize(*q):
  """The integer results of a kernel, computed once: XLA:CPU would otherwise copy the kernel's
  long elementwise chain into the fusion of every consumer (about 2× the `hw` forward time)."""
  return jax.lax.optimization_barrier(q if len(q) > 1 else q[0])


def ste(value, float_value):
  """The value of `value`, the gradient of `float_value` (`u − sg(u)` is exactly zero); under
  `inference`, the value alone."""
  if _INFERENCE.get():
    return sg(value)
  return sg(value) + (float_value - sg(float_value))


def fake_quant(x, s: Scale, rounding: str):
  """sat(round(x / s)) · s, with a straight-through gradient."""
  q = fixed.clip_to(fixed.rounded(x / s.scale, rounding), s.bits)
  return ste(q * s.scale, x)


@functools.cache
def lut(table_size: int, in_frac: int, out_frac: int, x_max: float) -> neurons.SigmoidLut:
  return neurons.sigmoid_lut(table_size, in_frac, out_frac, x_max)


def _lut(cfg: QuantConfig) -> neurons.SigmoidLut:
  return lut(cfg.lut_size, cfg.lut_in_frac, cfg.lut_out_frac, cfg.lut_x_max)


def lut_input(x, cfg: QuantConfig, bits: int):
  """x in the LUT's input format Q.lut_in_frac, as int32."""
  return fixed.quantize(sg(x), -cfg.lut_in_frac, bits, cfg.rounding, jnp.int32)


def sigma_bits(cfg: QuantConfig) -> int:
  """Enough input bits to reach the end of the table, where σ saturates."""
  return math.ceil(math.log2(cfg.lut_x_max)) + cfg.lut_in_frac + 1


def sigmoid_q(x, cfg: QuantConfig):
  """σ(x) in Q.lut_out_frac (int32) by the interpolating LUT."""
  return neurons.sigmoid_int(lut_input(x, cfg, sigma_bits(cfg)), _lut(cfg), cfg.rounding)


def silu(x, cfg: QuantConfig):
  """(SiLU(x) by the LUT (ReLU when the config relufies) in Q.lut_in_frac, the mask of inputs
  clipped to the table's WIDE_BITS input)."""
  exact = jax.nn.relu(x) if cfg.nonlinearity == "relu" else jax.nn.silu(x)
  q, clipped = silu_q(x, cfg)
  return ste(q * 2.0**-cfg.lut_in_frac, exact), clipped


def silu_q(x, cfg: QuantConfig):
  """(SiLU(x) by the LUT, or ReLU, in Q.lut_in_frac (int32) over WIDE_BITS inputs, the mask of
  inputs that did not fit them)."""
  u = fixed.round_scaled(sg(x), -cfg.lut_in_frac, cfg.rounding)
  x_q = fixed.clip_to(u, WIDE_BITS)
  clipped, x_q = x_q != u, x_q.astype(jnp.int32)
  if cfg.nonlinearity == "relu":
    return jnp.maximum(x_q, 0), clipped
  return materialize(neurons.silu_int(x_q, _lut(cfg), cfg.rounding), clipped)


def send(x_BxTxD, s: Scale, levers: dict):
  """What the receivers of a message point see under its event-driven levers (`levers_of`): the
  activation threshold's values, or the sum of the sigma-delta messages since the first token (at
  threshold 0, the values themselves), with a straight-through gradient."""
  q = fixed.quantize_scale(sg(x_BxTxD), s.scale, s.bits, "half_even", jnp.int32)  # on the grid
  if "threshold" in levers:
    q = neurons.threshold_int(q, levers["threshold"])
  if levers.get("delta", 0) > 0:  # at 0 every change is sent: the receivers see q

    def step(last_BxD, q_BxD):
      _, last_BxD = neurons.delta_step_int(q_BxD, last_BxD, levers["delta"])
      return last_BxD, last_BxD

    _, r_TxBxD = jax.lax.scan(step, jnp.zeros_like(q[:, 0]), jnp.swapaxes(q, 0, 1))
    q = jnp.swapaxes(r_TxBxD, 0, 1)
  return ste(q * s.scale, x_BxTxD)


def product(hw: Hw, a, name_a: str, b, name_b: str, name_out: str):
  """a·b for point `name_out` by an integer multiply and shift of points a and b's integers when
  all three have power-of-two scales (else the float product). Unsaturated: the point clips, and
  counts it."""
  s_a, s_b, s_o = (hw.scale(n) for n in (name_a, name_b, name_out))
  if None in (s_a, s_b, s_o) or hw.cfg.scale != "pow2":
    return a * b
  f_a, f_b, r = frac_of(s_a), frac_of(s_b), hw.cfg.rounding
  a_q = fixed.quantize(sg(a), -f_a, s_a.bits, r, jnp.int32)  # on their grids: exact
  b_q = fixed.quantize(sg(b), -f_b, s_b.bits, r, jnp.int32)
  q = materialize(fixed.mul_shift(a_q, b_q, f_a + f_b - frac_of(s_o), 32, s_a.bits, s_b.bits, r))
  return ste(q * s_o.scale, a * b)


def forget_q(sig_q, lb_D, cfg: QuantConfig):
  """f = lb + (1 − lb)·σ in Q.lut_out_frac, with lb quantized to the same format."""
  F = cfg.lut_out_frac
  lb_q = fixed.quantize(sg(lb_D), -F, F + 2, cfg.rounding, jnp.int32)
  return neurons.forget_gate_int(sig_q, lb_q, F, cfg.rounding)


def integrate(f_q, c, h0, s_h: Scale, cfg: QuantConfig):
  """h_t = sat(((f_t·h_{t−1}) >> F) + c_t) in the state format s_h, all steps [B, T, D], and the
  mask of steps where c did not fit the state's format or the state saturated."""
  F = cfg.lut_out_frac
  u = fixed.rounded(sg(c) / s_h.scale, cfg.rounding)
  c_q = fixed.clip_to(u, s_h.bits)
  c_clipped, c_q = c_q != u, c_q.astype(jnp.int32)
  h0_q = fixed.quantize_scale(sg(h0), s_h.scale, s_h.bits, cfg.rounding, jnp.int32)

  def step(h_q, fc):
    h_q, clipped = neurons.mlgru_step_int(h_q, fc[0], fc[1], F, s_h.bits, cfg.rounding, True)
    return h_q, (h_q, clipped)

  _, (h_TxBxD, sat_TxBxD) = jax.lax.scan(step, h0_q, (jnp.swapaxes(f_q, 0, 1),
                                                       jnp.swapaxes(c_q, 0, 1)))  # fmt: skip
  return jnp.swapaxes(h_TxBxD, 0, 1) * s_h.scale, c_clipped | jnp.swapaxes(sat_TxBxD, 0, 1)


def rescale(hw: Hw, acc_BxTxO, beta, s_x, y_BxTxO, n_in: int, x_bits: int):
  """A BitLinear's output in its bitlinear_out format by the integer rescale (β as a multiplier
  and shift, the input scale s_x = 2^−e_x a shift), unsaturated (the point clips, and counts it);
  with free scales, the float `y_BxTxO`."""
  s = hw.scale("bitlinear_out")
  if s is None or hw.cfg.scale != "pow2":
    return y_BxTxO
  m, k = neurons.multiplier(sg(beta), neurons.rescale_m_bits(n_in, x_bits))
  e_x = 1 - jnp.frexp(jnp.asarray(s_x, jnp.float32))[1]  # s_x = 2^(p − 1): exact
  acc_q = sg(acc_BxTxO).astype(jnp.int32)  # integers below 2^24: exact
  y_q = materialize(neurons.bitlinear_rescale(acc_q, m, k, e_x, frac_of(s), 32, hw.cfg.rounding))
  return ste(y_q * s.scale, y_BxTxO)


def check_input_bits(path: str, n_in: int, bits: int):
  """Refuse BitLinear input widths whose accumulate is not exact: the float32 sum of n_in ternary
  products of `bits`-bit integers must stay within 2^24."""
  if neurons.acc_bits_bound(n_in, bits) > 26:  # |sum| ≤ n_in·2^(bits−1) ≤ 2^24
    fits = max((b for b in range(2, 25) if neurons.acc_bits_bound(n_in, b) <= 26), default=1)
    raise ValueError(
      f"{path}.bitlinear_in: {bits}-bit inputs over a fan-in of {n_in} can sum past 2^24, where "
      f"the accumulate is no longer exact: set quant.input_bits (or 'bitlinear_in=' in "
      f"quant.bits) to at most {fits}"
    )


def frac_of(s: Scale) -> int:
  """f of the format Q.f that the power-of-two scale s = 2^−f stands for."""
  mantissa, exp = math.frexp(s.scale)
  if mantissa != 0.5:
    raise ValueError(
      f"scale {s.scale} is not a power of two: the integer RMSNorm needs quant.scale='pow2' "
      "(or quant.rmsnorm='float')"
    )
  return 1 - exp


@dataclasses.dataclass(frozen=True)
class RmsFormat:
  """The static arguments of `neurons.rmsnorm_int` for one norm, from its frozen scales."""

  eps_q: int
  x_bits: int
  x_frac: int
  gain_bits: int
  gain_frac: int
  out_bits: int
  out_frac: int
  sq_shift: int
  r_frac: int
  r_bits: int
  rounding: str


def rms_format(hw: Hw, D: int, eps: float) -> RmsFormat | None:
  """The integer RMSNorm's formats: x, gain and y those of the rms_in, rms_gain and rms_out
  points, r = 1/rms that of rms_inv (its calibrated range). None: the float norm (rmsnorm='float'
  or a disabled point)."""
  s = {n: hw.scale(n) for n in ("rms_in", "rms_gain", "rms_inv", "rms_out")}
  if hw.cfg.rmsnorm != "int" or None in s.values():
    return None
  x_bits, x_frac = s["rms_in"].bits, frac_of(s["rms_in"])
  sq_shift = neurons.rms_sq_shift(x_bits, D)
  return RmsFormat(
    eps_q=round(eps * 2.0 ** (2 * x_frac - sq_shift)),  # eps in the mean square's format
    x_bits=x_bits,
    x_frac=x_frac,
    gain_bits=s["rms_gain"].bits,
    gain_frac=frac_of(s["rms_gain"]),
    out_bits=s["rms_out"].bits,
    out_frac=frac_of(s["rms_out"]),
    sq_shift=sq_shift,
    r_frac=frac_of(s["rms_inv"]),
    r_bits=s["rms_inv"].bits,
    rounding=hw.cfg.rounding,
  )


def rmsnorm(x, gain_D, fmt: RmsFormat):
  """(y = x·r·gain by the integer kernel, unsaturated (the rms_out point saturates it), r = 1/rms
  as the kernel holds it, the mask of tokens whose r saturated), as floats.

  x and gain lie on their formats' grids already (their points), so converting them is exact.
  """
  x_q = fixed.quantize(sg(x), -fmt.x_frac, fmt.x_bits, fmt.rounding, jnp.int32)
  g_q = fixed.quantize(sg(gain_D), -fmt.gain_frac, fmt.gain_bits, fmt.rounding, jnp.int32)
  # 32 bits: no clip here, so that the rms_out point's clip (same result) counts saturation.
  kw = dataclasses.asdict(fmt) | {"out_bits": 32}
  try:
    y_q, r_q, clipped = materialize(*neurons.rmsnorm_int(x_q, g_q, **kw, clips=True))
  except (OverflowError, ValueError) as e:
    raise type(e)(
      f"integer RMSNorm (D={x.shape[-1]}) cannot run exactly in the formats {fmt} calibrated for "
      f"its rms_in, rms_gain, rms_inv and rms_out points: {e}. Change their widths "
      "(quant.bits, quant.gain_bits) or set quant.rmsnorm='float'"
    ) from e
  r = r_q.astype(jnp.float32) * 2.0**-fmt.r_frac
  return y_q.astype(jnp.float32) * 2.0**-fmt.out_frac, r, clipped["r"]
