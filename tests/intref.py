"""A plain integer reference of the fused neuron kernels, for tests only.

Written from the documented semantics (docstrings of `mmfree.loihi.fixed` / `neurons` and
spec/quantization.md), deliberately independent of them: no mmfree import, one element at a time,
Python ints (no overflow) and exact rationals (`Fraction`) instead of bit tricks. A format Q.f
means the integer q stands for q·2^−f; "n bits" is the signed range [−2^(n−1), 2^(n−1) − 1].
"""

import functools
import math
from fractions import Fraction

ROUNDINGS = ("floor", "half_even")
M = 14  # inv_sqrt's mantissa format: m ∈ [1, 4) in Q.14


@functools.cache
def pow2(e):
  """2^e exactly, for any integer e."""
  return Fraction(2) ** e


def round_q(q, rounding):
  """The rational q rounded to an integer: floor, or to nearest with ties to even."""
  if rounding == "floor":
    return math.floor(q)
  if rounding == "half_even":
    return round(Fraction(q))  # Fraction.__round__: ties to even
  raise ValueError(rounding)


def int_range(bits):
  """(−2^(bits−1), 2^(bits−1) − 1)."""
  return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def saturate(x, bits):
  """x clipped to the signed bits-bit range."""
  lo, hi = int_range(bits)
  return min(max(x, lo), hi)


def shift_right(x, e, rounding="floor"):
  """x·2^−e rounded to an integer (e ≤ 0: the exact x·2^|e|)."""
  return round_q(Fraction(x) * pow2(-e), rounding)


def mul_shift(a, b, e, bits, a_bits=None, b_bits=None, rounding="floor"):
  """sat(round(a·b·2^−e), bits), exactly; a_bits/b_bits only check the caller's bounds."""
  assert a_bits is None or abs(a) <= 2 ** (a_bits - 1), (a, a_bits)
  assert b_bits is None or abs(b) <= 2 ** (b_bits - 1), (b, b_bits)
  return saturate(shift_right(a * b, e, rounding), bits)


def bit_length(v):
  """Bits of v ≥ 0 (0 for 0)."""
  n = 0
  while v >= 2**n:
    n += 1
  return n


def signed_bits(lo, hi):
  """The fewest signed bits holding every integer in [lo, hi]."""
  n = 1
  while not (-(2 ** (n - 1)) <= lo and hi <= 2 ** (n - 1) - 1):
    n += 1
  return n


# --- σ, SiLU, the forget gate ---------------------------------------------------------------------


def sigmoid_lut(table_size, in_frac, out_frac, x_max):
  """(values, step_bits): round(σ(k·x_max/T)·2^out_frac) for k = 0..T, and log2 of the step
  x_max·2^in_frac/T (in input LSBs), which must be a power of two ≥ 1."""
  step = Fraction(x_max) * 2**in_frac / table_size
  s = 0
  while 2**s < step:
    s += 1
  if 2**s != step:
    raise ValueError(f"step {step} is not a power of two ≥ 1")
  values = [
    round(2**out_frac / (1 + math.exp(-k * x_max / table_size))) for k in range(table_size + 1)
  ]
  return values, s


def sigmoid_int(a, values, step_bits, out_frac, rounding="floor"):
  """σ(a), a in Q.in_frac, by linear interpolation; σ(−x) = 1 − σ(x); lut[T] beyond x_max."""
  T, s = len(values) - 1, step_bits
  u = min(abs(a), T * 2**s)
  i = min(u // 2**s, T - 1)
  r = u - i * 2**s
  y = values[i] + shift_right((values[i + 1] - values[i]) * r, s, rounding)
  return y if a >= 0 else 2**out_frac - y


def silu_int(a, values, step_bits, out_frac, rounding="floor"):
  """round(σ(a)·a·2^−out_frac), in a's format (|SiLU(a)| ≤ |a|: nothing to saturate)."""
  return shift_right(sigmoid_int(a, values, step_bits, out_frac, rounding) * a, out_frac, rounding)


def forget_gate_int(sig, lb, F, rounding="floor"):
  """f = lb + round((2^F − lb)·σ·2^−F): lb + (1 − lb)·σ in Q.F."""
  return lb + shift_right((2**F - lb) * sig, F, rounding)


def one_minus(f, F):
  return 2**F - f


# --- inverse square root, RMSNorm -----------------------------------------------------------------


def inv_sqrt_unsat(v, in_frac, out_frac):
  """The unsaturated inv_sqrt: floor(y_m·2^(out_frac − 14 − j)), None (∞) for v ≤ 0.

  v·2^−in_frac = m·2^−14·4^j with the top 15 or 16 bits of v kept in m ∈ [2^14, 2^16), and
  y_m = floor(2^14/sqrt(m·2^−14)) = floor(sqrt(2^42/m)) exactly.
  """
  if v <= 0:
    return None
  p = v.bit_length() - 1
  par = (p - in_frac) % 2
  s = p - par - M
  m = v // 2**s if s >= 0 else v * 2**-s
  assert 2**M <= m < 2 ** (M + 2)
  y_m = math.isqrt(2**42 // m)  # floor(sqrt(floor(x))) = floor(sqrt(x))
  j = (p - in_frac - par) // 2
  return math.floor(y_m * pow2(out_frac - M - j))


def inv_sqrt_int(v, in_frac=12, out_frac=12, out_bits=24):
  """(y, clipped): 2^out_frac/sqrt(v·2^−in_frac) as `inv_sqrt_unsat`, saturated to out_bits
  (v ≤ 0 gives the maximum, and counts as clipped)."""
  top = 2 ** (out_bits - 1) - 1
  y = inv_sqrt_unsat(v, in_frac, out_frac)
  if y is None or y > top:
    return top, True
  return y, False


def sqrt_const(D):
  """(h, k, c): h minimal with 2^h ≥ √D; c = round(√D·2^k) for the largest k ≤ 30 with
  bits(c) + 1 + k + h ≤ 31."""
  h = 0
  while 4**h < D:
    h += 1
  for k in range(30, -1, -1):
    N = D * 4**k  # c = round(sqrt(N)); sqrt(N) > n + 1/2 iff N > n² + n (no ties: N is an integer)
    n = math.isqrt(N)
    c = n + 1 if N - n * n > n else n
    if bit_length(c) + 1 + k + h <= 31:
      return h, k, c
  raise OverflowError(D)


def rms_sq_shift(x_bits, D):
  """The smallest s ≥ 0 with D·floor(2^(2·x_bits−2)/2^s) ≤ 2^30."""
  s = 0
  while D * (2 ** (2 * x_bits - 2) // 2**s) > 2**30:
    s += 1
  return s


def rmsnorm_int(
  x,
  gain,
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
):
  """One row: (y list, r, r_clipped, y_clipped list), the step list of `rmsnorm_int`.

  Clips are judged against the unsaturated chain: r_clipped when the r computed from the
  unsaturated inverse sqrt exceeds r_bits; y_clipped where y exceeds out_bits.
  """
  D = len(x)
  sq_shift = rms_sq_shift(x_bits, D) if sq_shift is None else sq_shift
  S = sum(shift_right(xi * xi, sq_shift, rounding) for xi in x)
  h, k, c = sqrt_const(D)
  V, in_frac, rp_frac = S + D * eps_q, 2 * x_frac - sq_shift, r_frac + h
  rp, _ = inv_sqrt_int(V, in_frac, rp_frac, r_bits + 1)
  r = saturate(shift_right(c * rp, k + h, rounding), r_bits)
  rp_u = inv_sqrt_unsat(V, in_frac, rp_frac)
  r_clipped = rp_u is None or shift_right(c * rp_u, k + h, rounding) > 2 ** (r_bits - 1) - 1
  e = x_frac + r_frac - out_frac
  d = max(0, e + x_bits - 31)
  rg_bits = gain_bits + r_bits - gain_frac - d
  y, y_clipped = [], []
  for xi, g in zip(x, gain, strict=True):
    rg = saturate(shift_right(r * g, gain_frac + d, rounding), rg_bits)
    u = shift_right(xi * rg, e - d, rounding)
    y.append(saturate(u, out_bits))
    y_clipped.append(y[-1] != u)
  return y, r, r_clipped, y_clipped


# --- the integrator, synapses, the BitLinear rescale ----------------------------------------------


def mlgru_step_int(h, f, c, F, state_bits, rounding="floor"):
  """(h', clipped): h' = sat(sat(round(f·h·2^−F), state_bits) + c, state_bits)."""
  v = saturate(shift_right(f * h, F, rounding), state_bits) + c
  h_new = saturate(v, state_bits)
  return h_new, h_new != v


def mlgru_scan_int(f_T, c_T, h0, F, state_bits, rounding="floor"):
  """The states h_1..h_T of one neuron."""
  h, out = h0, []
  for f, c in zip(f_T, c_T, strict=True):
    h, _ = mlgru_step_int(h, f, c, F, state_bits, rounding)
    out.append(h)
  return out


def ternary_matvec(x, w_IxO):
  """y_o = Σ_i x_i·w_io."""
  return [sum(xi * row[o] for xi, row in zip(x, w_IxO, strict=True)) for o in range(len(w_IxO[0]))]


def acc_bits_bound(n_in, x_bits=8):
  """Signed bits of the largest |Σ x·w|, |x| ≤ 2^(x_bits−1), w ternary."""
  return signed_bits(-n_in * 2 ** (x_bits - 1), n_in * 2 ** (x_bits - 1))


def bitlinear_rescale(acc, m, k, e_x, out_frac, out_bits, rounding="floor"):
  """sat(round(acc·m·2^(e_x + out_frac − k)), out_bits), exactly."""
  return saturate(round_q(Fraction(acc * m) * pow2(e_x + out_frac - k), rounding), out_bits)


def multiplier(value, m_bits):
  """(m, k): value = mant·2^exp (frexp), m = round(mant·2^m_bits) ties to even, k = m_bits − exp."""
  mant, exp = math.frexp(value)
  return round(Fraction(mant) * 2**m_bits), m_bits - exp


# --- float quantizers (fixed.quantize, fixed.pow2_exponent) ---------------------------------------


def quantize(x, exp, bits, rounding="half_even"):
  """sat(round(x·2^−exp), bits) with x a float taken exactly."""
  return saturate(round_q(Fraction(x) * pow2(-exp), rounding), bits)


def _floor_log2(q):
  """floor(log2 q) for a rational q > 0."""
  e = q.numerator.bit_length() - q.denominator.bit_length()
  while pow2(e) > q:
    e -= 1
  while pow2(e + 1) <= q:
    e += 1
  return e


def pow2_exponent(absmax, bits, mode="ceil"):
  """ "ceil": the smallest e with absmax·2^−e ≤ qmax = 2^(bits−1) − 1; "nearest": round(log2(
  absmax/qmax)) (exactly: up iff (absmax/qmax)² ≥ 2^(2·floor + 1)); 0 for absmax = 0."""
  qmax = 2 ** (bits - 1) - 1
  if absmax == 0:
    return 0
  q = Fraction(absmax) / qmax
  f = _floor_log2(q)
  if mode == "ceil":
    return f if pow2(f) == q else f + 1
  return f + 1 if q * q >= pow2(2 * f + 1) else f


def threshold(q, thr):
  """An activation threshold: q sent as 0 when |q| < thr."""
  return 0 if abs(q) < thr else q


def sigma_delta(values, thr):
  """The messages a sigma-delta sender sends for one neuron's values over time, and what its
  receiver holds after each: a change from the last value sent goes out when it is non-zero and
  at least thr in magnitude; the receiver adds up what arrives."""
  sent, held, last, total = [], [], 0, 0
  for v in values:
    change = v - last
    d = change if change != 0 and abs(change) >= thr else 0
    last += d
    total += d
    sent.append(d)
    held.append(total)
  return sent, held
