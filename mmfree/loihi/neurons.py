"""Integer semantics of the neuron kinds: LUT σ and SiLU, forget gate, inverse square root,
RMSNorm, the MLGRU integrator, ternary synapses, the BitLinear rescale, and the event-driven
senders (activation threshold, sigma-delta).

Written once for the hardware-aware JAX model, the emulator and the Lava process models: numpy and
the standard library only, array-API style (see `fixed`), so each function returns the same
integers on numpy and jax.numpy inputs, exact in int32 for the widths it checks. Formats are Q.f
(q stands for q·2^−f); rounding is "floor" (an arithmetic shift, the default) or "half_even".
"""

import dataclasses
import math
import operator

import numpy as np

from mmfree.loihi.fixed import (
  as_int,
  bit_length,
  check_magnitude,
  int_range,
  mul_shift,
  namespace,
  saturate,
  shift_right,
  shift_right_each,
)


@dataclasses.dataclass(frozen=True)
class SigmoidLut:
  """σ at the breakpoints k·2^step_bits (input LSBs), k = 0..len(values)−1, in Q.out_frac_bits.

  len(values) − 1 segments (the table size) cover [0, x_max); the last value is σ beyond x_max.
  """

  values: tuple[int, ...]
  in_frac_bits: int
  out_frac_bits: int
  step_bits: int


def sigmoid_lut(table_size=8, in_frac_bits=6, out_frac_bits=8, x_max=8.0):
  """round(σ(k·x_max/table_size)·2^out_frac), k = 0..table_size (the default: the known recipe).

  The step x_max·2^in_frac/table_size must be a power of two input LSBs: the segment index is then
  a shift, the position within it a mask.
  """
  step = x_max * 2**in_frac_bits / table_size
  step_bits = round(math.log2(step)) if step >= 1 else -1
  if step_bits < 0 or 2**step_bits != step:
    raise ValueError(
      f"x_max·2^in_frac/table_size = {step} must be a power of two ≥ 1 (input LSBs per segment)"
    )
  check_magnitude("σ interpolation product", out_frac_bits + step_bits)
  check_magnitude("σ input range", math.ceil(math.log2(table_size)) + step_bits)
  x_K = np.arange(table_size + 1) * (x_max / table_size)
  values = np.round(2.0**out_frac_bits / (1.0 + np.exp(-x_K))).astype(np.int64)
  return SigmoidLut(tuple(int(v) for v in values), in_frac_bits, out_frac_bits, step_bits)


def sigmoid_int(a_q, lut, rounding="floor"):
  """σ(a) in Q.out_frac for a in Q.in_frac, by linear interpolation in the table.

  With u = min(|a|, T·2^s) (T segments of 2^s LSBs), i = min(u >> s, T − 1), r = u − i·2^s:
  σ⁺ = lut[i] + ((lut[i+1] − lut[i])·r) >> s, and σ(a) = σ⁺ for a ≥ 0, 2^out_frac − σ⁺ for a < 0
  (σ(−x) = 1 − σ(x), so the table holds x ≥ 0 only). Beyond x_max it is lut[T].
  """
  xp = namespace(a_q)
  a = as_int(a_q, xp)
  T, s = len(lut.values) - 1, lut.step_bits
  table_K = xp.asarray(lut.values, dtype=a.dtype)
  u = xp.abs(xp.clip(a, -(T << s), T << s))  # clip first: |−2^31| does not fit int32
  i = xp.minimum(u >> s, T - 1)
  lo = xp.take(table_K, i)
  y = lo + shift_right((xp.take(table_K, i + 1) - lo) * (u - (i << s)), s, rounding)
  return xp.where(a < 0, (1 << lut.out_frac_bits) - y, y)


def silu_int(a_q, lut, rounding="floor"):
  """SiLU(a) = (a·σ(a)) >> out_frac, in the input's format Q.in_frac (|a_q| ≤ 2^30).

  |SiLU(a)| ≤ |a|, so the result needs no saturation.
  """
  f = lut.out_frac_bits
  return mul_shift(sigmoid_int(a_q, lut, rounding), a_q, f, 32, f + 1, 31, rounding)


def forget_gate_int(sig_q, lb_q, frac_bits, rounding="floor"):
  """f = lb + ((2^frac − lb)·σ) >> frac: the lower-bounded gate lb + (1 − lb)·σ, all in Q.frac.

  σ, lb ∈ [0, 2^frac] (lb per neuron, broadcast), so f ∈ [lb, 2^frac]; frac ≤ 15.
  """
  check_magnitude(f"forget gate product (Q.{frac_bits})", 2 * frac_bits)
  xp = namespace(sig_q, lb_q)
  lb = as_int(lb_q, xp)
  return lb + shift_right(((1 << frac_bits) - lb) * as_int(sig_q, xp), frac_bits, rounding)


def one_minus(f_q, frac_bits):
  """1 − f = 2^frac − f, exact in Q.frac."""
  return (1 << frac_bits) - as_int(f_q)


# inv_sqrt_int works on a mantissa m ∈ [1, 4) in Q.14 and y ≈ 1/sqrt(m) ∈ (1/2, 1] in Q.14 (Newton
# may overshoot by 2 LSB): m·((y·y) >> 14) < 2^31 and y·(3·2^14 − ·) < 2^31, int32-exact.
_M = 14
# Seeds: 1/sqrt at the right end of each quarter of [1, 4), floor(2^14/sqrt((k+5)/4)), via isqrt:
# the worst is 10.6% low, and Newton's error squares each step (3 steps: under 2^-14).
_SEED = tuple(math.isqrt((1 << (2 * _M + 2)) // (k + 5)) for k in range(12))
_CORRECTIONS = 2  # 3+ Newton steps with floors end within 2 of the exact floor (tests: every m)
_MAX_LSHIFT = 16  # y·2^16 < 2^31; outputs that need more saturate (y ≥ 2^13 makes them ≥ 2^30)


def _fits_under(y, m):
  """y²·m ≤ 2^(3·14), i.e. y ≤ 2^14/sqrt(m·2^−14), without forming the 44-bit product.

  With z = y² = z_hi·2^14 + z_lo: z·m = 2^14·q + r, q = z_hi·m + (z_lo·m >> 14), r < 2^14.
  """
  z = y * y
  lo = (z & ((1 << _M) - 1)) * m
  q = (z >> _M) * m + (lo >> _M)
  return (q < 1 << (2 * _M)) | ((q == 1 << (2 * _M)) & ((lo & ((1 << _M) - 1)) == 0))


def inv_sqrt_int(v, in_frac_bits=12, out_frac_bits=12, out_bits=24, iterations=3, clips=False):
  """y = 2^out_frac / sqrt(v·2^−in_frac), floored, saturated to out_bits (v = 0 gives the maximum).

  Defaults are Lava InvSqrt's formats (24-bit, fraction base 12); v ≥ 0 (negatives count as 0).
  Normalize v·2^−in_frac = m·4^j with m ∈ [1, 4) in Q.14: m = v >> (p − par − 14), p the top bit of
  v, par ∈ {0, 1} making the exponent even (bits of v below the top 15 or 16 drop). Then exactly
  y_m = floor(2^14 / sqrt(m·2^−14)): a 12-entry seed on the top 4 bits of m, `iterations` Newton
  steps y ← (y·(3·2^14 − ((m·((y·y) >> 14)) >> 14))) >> 15, and ±1 corrections (2 each way) that
  compare y²·m with 2^42 exactly. Result y_m·2^(out_frac − 14 − j), floored: monotone
  non-increasing in v. Fewer than 3 iterations leave the corrections short (inexact, not monotone).
  With `clips`, returns (y, the mask of values the saturation changed).
  """
  if not 1 <= out_bits <= 31:
    raise ValueError(f"out_bits must be in [1, 31], got {out_bits}")
  xp = namespace(v)
  v = xp.maximum(as_int(v, xp), 0)
  p = bit_length(v) - 1
  par = (p - in_frac_bits) & 1  # parity: 4^j needs an even exponent
  s = p - par - _M
  m = xp.where(s >= 0, v >> xp.clip(s, 0, 30), v << xp.clip(-s, 0, 30))
  k = xp.clip((m >> (_M - 2)) - 4, 0, len(_SEED) - 1)
  y = xp.take(xp.asarray(_SEED, dtype=v.dtype), k)
  for _ in range(iterations):
    t = (m * ((y * y) >> _M)) >> _M
    y = (y * ((3 << _M) - t)) >> (_M + 1)
  for _ in range(_CORRECTIONS):  # down to the exact floor, then up to it
    y = y - (~_fits_under(y, m)).astype(y.dtype)
  for _ in range(_CORRECTIONS):
    y = y + _fits_under(y + 1, m).astype(y.dtype)
  r = _M + ((p - in_frac_bits - par) >> 1) - out_frac_bits  # right shift, negative: left
  _, top = int_range(out_bits)
  over = -r > _MAX_LSHIFT  # y·2^−r ≥ 2^13·2^17 = 2^30: beyond any out_bits ≤ 31 would hold
  left = xp.where(over, top, y << xp.clip(-r, 0, _MAX_LSHIFT))
  unsat = xp.where(r >= 0, y >> xp.clip(r, 0, 30), left)
  y = xp.where(v == 0, top, xp.minimum(unsat, top))
  if clips:
    return y, (v == 0) | over | (unsat > top)
  return y


def rms_sum_sq_mag_bits(D, x_bits, sq_shift):
  """log2 of the largest |Σ (x² >> sq_shift)| over D inputs of x_bits bits."""
  return math.log2(D) + 2 * x_bits - 2 - sq_shift


def rms_sq_shift(x_bits, D):
  """The smallest pre-shift of the squares keeping the sum of D of them within 2^30."""
  return next(s for s in range(2 * x_bits) if D * ((1 << (2 * x_bits - 2)) >> s) <= 1 << 30)


def _sqrt_const(D):
  """(h, k, c): 2^h ≥ √D (h minimal) and c = round(√D·2^k) with c·2^(k+h) int32-exact."""
  h = ((D - 1).bit_length() + 1) // 2
  for k in range(30, -1, -1):
    c = (math.isqrt(D << (2 * k + 2)) + 1) >> 1
    if c.bit_length() + 1 + k + h <= 31:
      return h, k, c
  raise OverflowError(f"no int32-exact √D for D={D}")


def rmsnorm_int(
  x_q,
  gain_q,
  eps_q=0,
  *,
  x_bits,
  x_frac,
  gain_bits,
  gain_frac,
  out_bits,
  out_frac,
  sq_shift=None,
  r_frac=12,
  r_bits=24,
  rounding="floor",
  clips=False,
):
  """RMSNorm over the last axis: y = sat(x·r·gain) in Q.out_frac, r ≈ 1/sqrt(mean(x²) + eps).

  x in Q.x_frac (x_bits ≤ 16), gain in Q.gain_frac, eps_q in the mean-square format
  Q.(2·x_frac − sq_shift) (eps_q = 0 still gives x/rms). Steps, every one int32-exact:
    S = Σ (x² >> sq_shift)                      sum of squares, ≤ 2^30 (sq_shift: `rms_sq_shift`)
    r' = inv_sqrt_int(S + D·eps_q) in Q.(r_frac + h)   1/sqrt(S/D + eps) = √D/sqrt(S + D·eps)
    r = (c·r') >> (k + h) in Q.r_frac, r_bits   c = round(√D·2^k), 2^h ≥ √D: no division by D
    rg = (r·gain) >> (gain_frac + d)            d = max(0, x_frac + r_frac − out_frac + x_bits − 31)
    y = sat((x·rg) >> (x_frac + r_frac − out_frac − d), out_bits)   d keeps x·rg int32-exact
  √D has relative error ≤ 2^−15 (none when D is a power of 4). r's precision is r_frac's: pick it so
  that 1/rms has ~16 significant bits (r ≤ 2^(r_bits − 1 − r_frac) bounds 1/rms from above).
  With `clips`, returns (y, r, {"r": tokens whose r saturated [.., 1], "y": outputs that did}).
  """
  if not 1 <= x_bits <= 16:
    raise ValueError(f"x_bits must be in [1, 16] (x² within int32), got {x_bits}")
  xp = namespace(x_q, gain_q)
  x, g = as_int(x_q, xp), as_int(gain_q, xp)
  D = x.shape[-1]
  sq_shift = rms_sq_shift(x_bits, D) if sq_shift is None else sq_shift
  eps_q = operator.index(eps_q)
  check_magnitude(f"sum of {D} squares >> {sq_shift}", rms_sum_sq_mag_bits(D, x_bits, sq_shift))
  check_magnitude(f"D·eps_q = {D}·{eps_q}", math.log2(max(D * eps_q, 1)) + 1)
  h, k, c = _sqrt_const(D)
  sq = shift_right(x * x, sq_shift, rounding)
  S = xp.sum(sq, axis=-1, keepdims=True, dtype=x.dtype)
  r_hD, r_hD_clipped = inv_sqrt_int(S + D * eps_q, 2 * x_frac - sq_shift, r_frac + h,
                                     r_bits + 1, clips=True)  # fmt: skip
  c_bits = c.bit_length() + 1
  r_wide = mul_shift(xp.asarray(c, dtype=x.dtype), r_hD, k + h, 32, c_bits, r_bits + 1, rounding)
  r = saturate(r_wide, r_bits)
  e = x_frac + r_frac - out_frac
  d = max(0, e + x_bits - 31)
  rg_bits = gain_bits + r_bits - gain_frac - d
  rg = mul_shift(g, r, gain_frac + d, rg_bits, gain_bits, r_bits, rounding)
  y_wide = mul_shift(x, rg, e - d, 32, x_bits, rg_bits, rounding)
  y = saturate(y_wide, out_bits)
  if clips:
    return y, r, {"r": r_hD_clipped | (r != r_wide), "y": y != y_wide}
  return y


def mlgru_step_int(h_q, f_q, c_q, f_frac, state_bits, rounding="floor", clips=False):
  """h ← sat(((f·h) >> f_frac) + c, state_bits): the MLGRU integrator, elementwise over [B, D].

  f ∈ [0, 2^f_frac] (Q.f_frac), h and c within state_bits. Exact in int32 for f_frac ≤ 15 and
  state_bits ≤ 30 (24-bit state with a Q.8 gate fits: see `mul_shift`). With `clips`, returns
  (h, the mask of states the saturation changed).
  """
  check_magnitude(f"MLGRU state + candidate ({state_bits} bits)", state_bits)
  fh = mul_shift(f_q, h_q, f_frac, state_bits, f_frac + 1, state_bits, rounding)  # |fh| ≤ |h|
  v = fh + as_int(c_q, namespace(fh))
  h = saturate(v, state_bits)
  return (h, h != v) if clips else h


def mlgru_scan_int(f_TxBxD, c_TxBxD, h0_BxD, f_frac, state_bits, rounding="floor"):
  """All states h_1..h_T of `mlgru_step_int` from h0, stacked as [T, B, D]."""
  xp = namespace(f_TxBxD, c_TxBxD, h0_BxD)
  h, h_T = as_int(h0_BxD, xp), []
  for f, c in zip(f_TxBxD, c_TxBxD, strict=True):
    h = mlgru_step_int(h, f, c, f_frac, state_bits, rounding)
    h_T.append(h)
  return xp.stack(h_T)


def threshold_int(q, threshold):
  """q with the values of magnitude below `threshold` sent as 0 (an activation threshold)."""
  xp = namespace(q)
  q = as_int(q, xp)
  return xp.where(xp.abs(q) < threshold, xp.zeros_like(q), q)


def delta_step_int(q, last, threshold):
  """(d, last + d): the sigma-delta message of q against the last value sent, d = q − last where
  |q − last| reaches `threshold` and is not 0, else 0 (silent). The receiver's Σ w·d over steps
  is Σ w·(last + d): at threshold 0 it sees q exactly."""
  xp = namespace(q, last)
  change = as_int(q, xp) - as_int(last, xp)
  d = xp.where((change != 0) & (xp.abs(change) >= threshold), change, xp.zeros_like(change))
  return d, last + d


def ternary_matvec(x_q, w_q_IxO, x_bits=None):
  """Σ_i x_i·w_io with w ∈ {−1, 0, 1}: the exact integer accumulate of a synapse group.

  With x_bits given, raise unless I·2^(x_bits−1) fits int32.
  """
  I = w_q_IxO.shape[0]
  if x_bits is not None:
    check_magnitude(f"ternary accumulate of {I} {x_bits}-bit inputs", math.log2(I) + x_bits - 1)
  xp = namespace(x_q, w_q_IxO)
  x = as_int(x_q, xp)
  return xp.matmul(x, as_int(w_q_IxO, xp).astype(x.dtype))


def acc_bits_bound(n_in, x_bits=8):
  """Signed bits of the largest |Σ x·w| over n_in inputs of x_bits bits and ternary weights."""
  return (n_in << (x_bits - 1)).bit_length() + 1


def rescale_m_bits(n_in, x_bits=8):
  """The multiplier's width that keeps acc·m within int32 (16 at most: finer than β needs)."""
  return min(16, 31 - acc_bits_bound(n_in, x_bits))


def multiplier(value, m_bits):
  """(m, k) with value ≈ m·2^−k, m = round(mantissa·2^m_bits) ∈ [2^(m_bits−1), 2^m_bits] for
  value > 0 (0 gives m = 0). frexp and ldexp are exact, so numpy and jax give the same (m, k)."""
  xp = namespace(value)
  mant, exp = xp.frexp(xp.asarray(value))
  m = xp.round(xp.ldexp(mant, m_bits))
  idt = np.int64 if xp is np else xp.int32
  return m.astype(idt), (m_bits - exp).astype(idt)


def bitlinear_rescale(acc, m, k, e_x, out_frac, out_bits, rounding="floor"):
  """y = sat(round(acc·m·2^(e_x + out_frac − k)), out_bits): a BitLinear's accumulator times its
  weight scale β = m·2^−k and its input scale 2^e_x (per token or static), in Q.out_frac.

  k and e_x may be arrays (traced under jit): the shift s = k − e_x − out_frac is per element.
  acc·m must fit int32 (choose m's width with `rescale_m_bits`). Left shifts (s < 0) saturate
  without overflowing, at any distance; right shifts beyond 30 give what the exact quotient
  rounds to.
  """
  xp = namespace(acc, m, k, e_x)
  acc = as_int(acc, xp)
  m, k, e_x = (as_int(a, xp).astype(acc.dtype) for a in (m, k, e_x))  # acc's width throughout
  v = acc * m
  s = k - e_x - out_frac
  lo, hi = int_range(out_bits)
  n = xp.clip(-s, 0, 30)
  # v·2^n within [lo, hi] ⇔ ceil(lo/2^n) ≤ v ≤ floor(hi/2^n); beyond 30, any v ≠ 0 saturates.
  top, bottom = xp.asarray(hi, v.dtype) >> n, (xp.asarray(lo, v.dtype) + (1 << n) - 1) >> n
  left = xp.where(v > top, hi, xp.where(v < bottom, lo, v << n))
  left = xp.where(-s > 30, xp.where(v > 0, hi, xp.where(v < 0, lo, xp.zeros_like(v))), left)
  # Right shifts past 30 in two steps of at most 30: floor(floor(v/2^30)/2^(s−30)) = floor(v/2^s).
  far = xp.clip(s - 30, 0, 30)
  right = shift_right_each(v, xp.clip(s, 0, 30), rounding)
  right = xp.where(s > 30, (v >> 30) >> far, right)
  if rounding == "half_even":  # |v| ≤ 2^31: beyond 31 the quotient rounds to 0; at 31 to ±1
    half = xp.asarray(1 << 30, v.dtype)
    right = xp.where(s > 31, 0, xp.where(s == 31, (v > half).astype(v.dtype)
                                         - (v < -half).astype(v.dtype), right))  # fmt: skip
  return xp.where(s < 0, left, saturate(right, out_bits))
