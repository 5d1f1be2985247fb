"""Fixed-point basics: shifts with rounding, saturation, power-of-two quantizers, exact products.

Numpy and the standard library only (this runs in the Lava environment too), written array-API
style: every function takes its namespace from its inputs, so the same code runs on numpy and
jax.numpy arrays and returns the same integers. A format Q.f means the integer q stands for q·2^−f;
"n bits" means the signed range [−2^(n−1), 2^(n−1) − 1].

Integer work is exact in int32: each function checks the widths it is given so that every
intermediate stays within ±2^30 (+1), and raises OverflowError otherwise. Integer inputs of 32 or 64
bits keep their dtype (so numpy can carry int64 when asked, with identical results); narrower ones
widen to `int_dtype`.
"""

import operator

import numpy as np

ROUNDINGS = ("floor", "half_even")
MAX_SHIFT = 30  # shifts by 31 or more are not portable between numpy and XLA on int32
MAX_MAG_BITS = 30  # every intermediate satisfies |v| ≤ 2^30 (+1 from rounding): int32-exact


def namespace(*xs):
  """The array namespace of the inputs: jax.numpy if any input is a jax array, else numpy.

  numpy 2 arrays report numpy, numpy 1.x arrays and Python scalars have no `__array_namespace__`.
  """
  for x in xs:
    xp = x.__array_namespace__() if hasattr(x, "__array_namespace__") else np
    if xp is not np:
      return xp
  return np


def int_dtype(xp, dtype=None):
  """The dtype of new integers: `dtype` when given, else int64 in numpy and int32 elsewhere."""
  if dtype is not None:
    return dtype
  return np.int64 if xp is np else xp.int32


def as_int(x, xp=None):
  """`x` as a signed integer array of at least 32 bits; floats are refused (quantize them)."""
  xp = xp or namespace(x)
  x = xp.asarray(x)
  if x.dtype.kind == "i" and x.dtype.itemsize >= 4:
    return x
  if x.dtype.kind not in "biu":
    raise TypeError(f"expected integers, got {x.dtype}: quantize floats first")
  return x.astype(int_dtype(xp))


def int_range(bits):
  """(lo, hi) = (−2^(bits−1), 2^(bits−1) − 1), for 1 ≤ bits ≤ 32."""
  bits = operator.index(bits)
  if not 1 <= bits <= 32:
    raise ValueError(f"bits must be in [1, 32], got {bits}")
  return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def check_rounding(rounding):
  if rounding not in ROUNDINGS:
    raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")


def check_magnitude(what, mag_bits):
  """Raise unless |value| ≤ 2^mag_bits keeps `what` exact in int32."""
  if mag_bits > MAX_MAG_BITS:
    raise OverflowError(
      f"{what} can reach 2^{mag_bits}, beyond int32 (limit 2^{MAX_MAG_BITS}): "
      "choose fewer bits or a larger shift"
    )


def _check_shift(e):
  e = operator.index(e)
  if abs(e) > MAX_SHIFT:
    raise ValueError(f"shift must be in [-{MAX_SHIFT}, {MAX_SHIFT}], got {e}")
  return e


def _round(q, r, e, rounding):
  """The floor quotient q of n / 2^e with remainder 0 ≤ r < 2^e, rounded as asked (e ≥ 1)."""
  if rounding == "floor":
    return q
  half = 1 << (e - 1)
  up = (r > half) | ((r == half) & ((q & 1) == 1))
  return q + up.astype(q.dtype)


def shift_right(x, e, rounding="floor"):
  """x·2^−e as an integer: floor (`x >> e`, an arithmetic shift) or round half to even.

  e ≤ 0 shifts left (exact; saturate afterwards if the result may not fit); |e| ≤ 30.
  """
  check_rounding(rounding)
  e = _check_shift(e)
  x = as_int(x)
  if e <= 0:
    return x << -e
  return _round(x >> e, x & ((1 << e) - 1), e, rounding)


def shift_right_each(x, e, rounding="floor"):
  """`shift_right` with a shift per element (an integer array broadcast against x).

  Shifts are data here (traced under jit), so the caller bounds them: |e| ≤ 30, and a negative
  (left) shift keeps |x|·2^−e within int32.
  """
  check_rounding(rounding)
  xp = namespace(x, e)
  x, e = as_int(x, xp), as_int(e, xp)
  r_ = xp.clip(e, 0, MAX_SHIFT)
  q = x >> r_
  if rounding == "half_even":
    r = x & ((1 << r_) - 1)
    half = (1 << r_) >> 1  # 0 where e ≤ 0: no remainder, nothing to round
    q = q + ((half > 0) & ((r > half) | ((r == half) & ((q & 1) == 1)))).astype(q.dtype)
  return xp.where(e >= 0, q, x << xp.clip(-e, 0, MAX_SHIFT))


def saturate(x, bits):
  """clip(x, −2^(bits−1), 2^(bits−1) − 1)."""
  lo, hi = int_range(bits)
  xp = namespace(x)
  return xp.clip(as_int(x, xp), lo, hi)


def saturation_count(u, bits):
  """How many elements of `u` (integers before `saturate`, or rounded floats) `bits` would clip."""
  lo, hi = int_range(bits)
  xp = namespace(u)
  u = xp.asarray(u)
  return xp.sum((u < lo) | (u > hi))


def mul_shift(a, b, e, bits, a_bits, b_bits, rounding="floor"):
  """sat((a·b)·2^−e, bits), rounded as `shift_right`, exact in int32.

  |a| ≤ 2^(a_bits−1), |b| ≤ 2^(b_bits−1) (the caller's widths, e.g. from `saturate`). For e > 0,
  b is split as b = b_hi·2^h + b_lo, h = min(e, 31 − a_bits), so that a·b_lo stays within 2^30:
  a·b·2^−e = (a·b_hi + (a·b_lo)·2^−h)·2^−(e−h), floored in two steps, with the remainder put back
  together for rounding. The full product a·b is never formed. Limits: a_bits + b_bits − h ≤ 32
  (for a·b_hi) and a_bits + b_bits − e ≤ 32 (the result). The value is exactly that of a 64-bit
  `(a*b) >> e`: wider models match bit for bit.
  """
  check_rounding(rounding)
  e = _check_shift(e)
  h = max(0, min(e, 31 - a_bits))
  check_magnitude(f"a·b_hi ({a_bits}×{b_bits} bits, split at {h})", a_bits + b_bits - 2 - h)
  check_magnitude(f"(a·b) >> {e} ({a_bits}×{b_bits} bits)", a_bits + b_bits - 2 - e)
  xp = namespace(a, b)
  a, b = as_int(a, xp), as_int(b, xp)
  if e <= 0:
    return saturate((a * b) << -e, bits)
  p_lo = a * (b & ((1 << h) - 1))  # |a·b_lo| < 2^30
  n = a * (b >> h) + (p_lo >> h)  # floor(a·b / 2^h)
  q = n >> (e - h)
  if rounding == "floor":
    return saturate(q, bits)
  r = ((n & ((1 << (e - h)) - 1)) << h) + (p_lo & ((1 << h) - 1))  # a·b mod 2^e, below 2^30
  return saturate(_round(q, r, e, rounding), bits)


def signed_bits(lo: int, hi: int) -> int:
  """Signed bits holding every integer in [lo, hi]."""
  return max((v if v >= 0 else ~v).bit_length() + 1 for v in (int(lo), int(hi)))


def bit_length(v):
  """Elementwise bit length of non-negative integers (0 for 0), by a binary search on shifts."""
  v = as_int(v)
  xp = namespace(v)
  n = xp.zeros_like(v)
  steps = (32, 16, 8, 4, 2, 1) if v.dtype.itemsize == 8 else (16, 8, 4, 2, 1)
  for s in steps:
    big = v >= (1 << s)
    v = xp.where(big, v >> s, v)
    n = n + s * big.astype(n.dtype)
  return n + (v > 0).astype(n.dtype)


def rounded(u, rounding="half_even"):
  """round(u), half to even, or floor(u), in floating point: the one rounding of a float."""
  check_rounding(rounding)
  xp = namespace(u)
  return xp.floor(u) if rounding == "floor" else xp.round(u)


def clip_to(u, bits):
  """`u` (floats or integers) clipped to the signed `bits`-bit range: round, then clip_to."""
  lo, hi = int_range(bits)
  return namespace(u).clip(u, lo, hi)


def round_scaled(x, exp, rounding="half_even"):
  """round(x·2^−exp) in floating point (unsaturated; exact while no overflow or underflow)."""
  xp = namespace(x, exp)
  return rounded(xp.ldexp(xp.asarray(x), -exp), rounding)


def _to_int(u, bits, xp, dtype):
  if not 1 <= bits <= 24:
    raise ValueError(f"float quantization supports 1..24 bits (exact in float32), got {bits}")
  return clip_to(u, bits).astype(int_dtype(xp, dtype))


def quantize(x, exp, bits, rounding="half_even", dtype=None):
  """q = sat(round(x·2^−exp), bits): floats to integers at the power-of-two scale 2^exp.

  `exp` is a Python int or an integer array (per channel, broadcast against x).
  """
  xp = namespace(x, exp)
  return _to_int(round_scaled(x, exp, rounding), bits, xp, dtype)


def quantize_scale(x, scale, bits, rounding="half_even", dtype=None):
  """q = sat(round(x / scale), bits) for a free (not power-of-two) scale: x ≈ q·scale."""
  xp = namespace(x, scale)
  return _to_int(rounded(xp.asarray(x) / scale, rounding), bits, xp, dtype)


def dequantize(q, exp, dtype=None):
  """q·2^exp as floats (float32 unless `dtype`: exact for |q| < 2^24)."""
  xp = namespace(q, exp)
  return xp.ldexp(xp.asarray(q).astype(dtype or xp.float32), exp)


def pow2_exponent(absmax, bits, mode="ceil"):
  """The exponent e of the scale 2^e for values up to `absmax` in `bits` bits.

  "ceil": the smallest e with absmax·2^−e ≤ 2^(bits−1) − 1 (never clips the observed range);
  "nearest": round(log2(absmax / (2^(bits−1) − 1))) (finer, may clip). absmax = 0 gives e = 0.
  """
  if mode not in ("ceil", "nearest"):
    raise ValueError(f"mode must be 'ceil' or 'nearest', got {mode!r}")
  _, qmax = int_range(bits)
  if qmax < 1:
    raise ValueError(f"bits must be at least 2, got {bits}")
  xp = namespace(absmax)
  a = xp.asarray(absmax)
  if a.dtype.kind != "f":
    a = a.astype(np.float64 if xp is np else xp.float32)
  a = xp.where(a > 0, a, qmax)
  idt = int_dtype(xp)
  if mode == "nearest":
    return xp.round(xp.log2(a / qmax)).astype(idt)
  e = xp.ceil(xp.log2(a / qmax)).astype(idt)
  # log2 may be off by an ulp near powers of two; ldexp is exact, so fix e both ways.
  e = xp.where(xp.ldexp(a, -e) > qmax, e + 1, e)
  return xp.where(xp.ldexp(a, 1 - e) <= qmax, e - 1, e)
