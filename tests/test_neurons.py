"""Integer neuron semantics: exact shifts and products, LUT σ/SiLU, inverse sqrt, RMSNorm, MLGRU.

Error bounds are measured (in output LSBs) and pinned just above the measurement, so a change to
the arithmetic shows; the same integers must come out of numpy int64, numpy int32 and jax int32.
"""

import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mmfree.loihi import fixed, neurons

INT32 = st.integers(-(2**31), 2**31 - 1)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _ints(bits, shape):
  lo, hi = fixed.int_range(bits)
  return hnp.arrays(np.int64, shape, elements=st.integers(lo, hi))


# --- shifts, saturation, products -----------------------------------------------------------------


@given(x=hnp.arrays(np.int64, st.integers(1, 50), elements=INT32), e=st.integers(1, 30))
def test_shift_right_matches_numpy_rounding(x, e):
  ties = np.clip((x >> e << e) + (1 << (e - 1)), -(2**31), 2**31 - 1)  # exact halves, odd and even
  for v in (x, ties):
    np.testing.assert_array_equal(fixed.shift_right(v, e, "half_even"), np.round(v / 2.0**e))
    np.testing.assert_array_equal(fixed.shift_right(v, e), np.floor(v / 2.0**e))
    np.testing.assert_array_equal(fixed.shift_right(v, e), v >> e)


@given(x=_ints(20, 8), e=st.integers(0, 10))
def test_shift_left_is_exact(x, e):
  np.testing.assert_array_equal(fixed.shift_right(x, -e), x * 2**e)
  np.testing.assert_array_equal(fixed.shift_right(x, 0, "half_even"), x)


@given(x=hnp.arrays(np.int64, 20, elements=INT32), bits=st.integers(1, 32))
def test_saturate_bounds_and_count(x, bits):
  lo, hi = fixed.int_range(bits)
  y = fixed.saturate(x, bits)
  assert y.min() >= lo and y.max() <= hi
  np.testing.assert_array_equal(y[(x >= lo) & (x <= hi)], x[(x >= lo) & (x <= hi)])
  assert fixed.saturation_count(x, bits) == np.sum(y != x)


@st.composite
def _products(draw):
  a_bits = draw(st.integers(2, 16))
  e = draw(st.integers(-4, 31 - a_bits))
  b_bits = draw(st.integers(2, min(31, 32 - a_bits + e)))
  a, b = draw(_ints(a_bits, 16)), draw(_ints(b_bits, 16))
  return a, b, e, a_bits, b_bits


@given(case=_products(), rounding=st.sampled_from(fixed.ROUNDINGS))
def test_mul_shift_equals_exact_rational(case, rounding):
  a, b, e, a_bits, b_bits = case
  out = fixed.mul_shift(a, b, e, 32, a_bits, b_bits, rounding)
  exact = [Fraction(int(u) * int(v), 1) / Fraction(2) ** e for u, v in zip(a, b, strict=True)]
  ref = [math.floor(q) if rounding == "floor" else round(q) for q in exact]  # round: half to even
  np.testing.assert_array_equal(out, ref)


@given(x=_ints(30, 16), e=hnp.arrays(np.int64, 16, elements=st.integers(-10, 30)),
       rounding=st.sampled_from(fixed.ROUNDINGS))  # fmt: skip
def test_shift_right_each_is_the_exact_quotient_per_element(x, e, rounding):
  x = np.where(e < 0, x >> 11, x)  # left shifts stay within int32
  out = fixed.shift_right_each(x, e, rounding)
  exact = [Fraction(int(u)) / Fraction(2) ** int(k) for u, k in zip(x, e, strict=True)]
  np.testing.assert_array_equal(out, [math.floor(q) if rounding == "floor" else round(q)
                                      for q in exact])  # fmt: skip


@given(acc=_ints(18, 12), beta=st.floats(1e-5, 4.0), e_x=hnp.arrays(np.int64, 12,
       elements=st.integers(-12, 3)), out_frac=st.integers(-4, 24), out_bits=st.integers(4, 24),
       rounding=st.sampled_from(fixed.ROUNDINGS))  # fmt: skip
def test_bitlinear_rescale_equals_exact_rational(acc, beta, e_x, out_frac, out_bits, rounding):
  m_bits = neurons.rescale_m_bits(1024)  # |acc| < 2^17 + 1: 1024 int8 inputs
  m, k = neurons.multiplier(np.float32(beta), m_bits)
  assert 2 ** (m_bits - 1) <= m <= 2**m_bits
  assert abs(Fraction(int(m), 2 ** int(k)) / Fraction(float(np.float32(beta))) - 1) <= Fraction(
    1, 2**m_bits
  )
  out = neurons.bitlinear_rescale(acc, m, k, e_x, out_frac, out_bits, rounding)
  lo, hi = fixed.int_range(out_bits)
  for a, ex, y in zip(acc, e_x, out, strict=True):
    q = Fraction(int(a) * int(m)) * Fraction(2) ** (int(ex) + out_frac - int(k))
    assert y == min(max(math.floor(q) if rounding == "floor" else round(q), lo), hi)


def test_mul_shift_refuses_int32_overflow():
  with pytest.raises(OverflowError, match="int32"):
    fixed.mul_shift(np.array([1]), np.array([1]), 8, 24, 10, 31)  # result up to 2^31
  with pytest.raises(OverflowError, match="int32"):
    fixed.mul_shift(np.array([1]), np.array([1]), 4, 24, 16, 24)  # a·b >> 4 up to 2^34
  # 16-bit a at a shift of 16 (once refused): b splits at 2^15, exact
  a, b = np.array([-(2**15), 2**15 - 1, 12345]), np.array([2**23 - 1, -(2**23), -777])
  np.testing.assert_array_equal(fixed.mul_shift(a, b, 16, 32, 16, 24), (a * b) >> 16)


def test_bit_length():
  v = np.array([0, 1, 2, 3, 4, 255, 256, 2**30, 2**31 - 1, 2**40 + 5])
  np.testing.assert_array_equal(fixed.bit_length(v), [int(u).bit_length() for u in v])


# --- float quantizers ----------------------------------------------------------------------------

FLOATS = st.floats(-1e4, 1e4, width=32).filter(lambda v: abs(v) >= 2**-100 or v == 0)  # ldexp exact


@given(
  x=hnp.arrays(np.float32, 20, elements=FLOATS), exp=st.integers(-12, 8), bits=st.integers(2, 24)
)
def test_quantize_round_trip(x, exp, bits):
  q = fixed.quantize(x, exp, bits)
  lo, hi = fixed.int_range(bits)
  u = x.astype(np.float64) * 2.0**-exp
  inside = (u >= lo) & (u <= hi)
  back = fixed.dequantize(q, exp, np.float64)
  assert np.all(np.abs(back - x)[inside] <= 2.0 ** (exp - 1))
  np.testing.assert_array_equal(q, np.clip(np.round(u), lo, hi))
  assert fixed.saturation_count(fixed.round_scaled(x, exp), bits) == np.sum(q != np.round(u))
  np.testing.assert_array_equal(fixed.quantize_scale(x, 2.0**exp, bits), q)
  floor = fixed.dequantize(fixed.quantize(x, exp, bits, "floor"), exp, np.float64)
  assert np.all((((x - floor) >= 0) & ((x - floor) <= 2.0**exp))[inside])  # < up to rounding


@given(absmax=st.floats(1e-6, 1e6), bits=st.integers(2, 24))
def test_pow2_exponent_ceil_never_clips_and_is_tight(absmax, bits):
  _, qmax = fixed.int_range(bits)
  e = int(fixed.pow2_exponent(absmax, bits))
  assert fixed.round_scaled(absmax, e) <= qmax  # no clipping
  assert math.ldexp(absmax, 1 - e) > qmax  # one finer would clip
  assert abs(int(fixed.pow2_exponent(absmax, bits, "nearest")) - e) <= 1


def test_pow2_exponent_of_zero():
  np.testing.assert_array_equal(fixed.pow2_exponent(np.array([0.0, 127.0]), 8), [0, 0])


# --- LUT σ and SiLU ------------------------------------------------------------------------------

A_Q6 = np.arange(-(2**12), 2**12)  # every 13-bit Q.6 input: |x| < 64, well past x_max


def test_recipe_table():
  lut = neurons.sigmoid_lut()
  assert (lut.in_frac_bits, lut.out_frac_bits, lut.step_bits) == (6, 8, 6)
  assert lut.values == (128, 187, 225, 244, 251, 254, 255, 256, 256)


# Budget: interpolation 2.98 LSB (8 entries) or 0.05 (64), + 0.5 table rounding, + the shift's
# rounding (1 for floor, 0.5 half even). SiLU errors are Q.6 LSBs of a·σ(a).
@pytest.mark.parametrize(
  "table_size, rounding, sigmoid_bound, silu_bound",
  [
    (8, "floor", 4.21, 2.72),
    (8, "half_even", 3.70, 1.85),
    (64, "floor", 1.30, 1.92),
    (64, "half_even", 0.94, 1.19),
  ],
)
def test_sigmoid_and_silu_error(table_size, rounding, sigmoid_bound, silu_bound):
  lut = neurons.sigmoid_lut(table_size)
  s = neurons.sigmoid_int(A_Q6, lut, rounding)
  x = A_Q6 / 64.0
  assert np.abs(s - 256 * _sigmoid(x)).max() <= sigmoid_bound
  assert np.abs(neurons.silu_int(A_Q6, lut, rounding) - 64 * x * _sigmoid(x)).max() <= silu_bound
  assert np.all(np.diff(s) >= 0)
  np.testing.assert_array_equal(s[1:] + s[1:][::-1], 256)  # σ(−x) = 1 − σ(x), exactly
  assert s.max() == lut.values[-1] and s.min() == 256 - lut.values[-1]  # saturates beyond x_max


def test_sigmoid_lut_needs_power_of_two_steps():
  with pytest.raises(ValueError, match="power of two"):
    neurons.sigmoid_lut(6)


# --- forget gate ---------------------------------------------------------------------------------


@given(sig=_ints(10, 32).map(np.abs), lb=_ints(10, 32).map(np.abs))
def test_forget_gate_matches_float_and_one_minus_is_exact(sig, lb):
  sig, lb = np.minimum(sig, 256), np.minimum(lb, 256)
  f = neurons.forget_gate_int(sig, lb, 8)
  ref = 256 * (lb / 256 + (1 - lb / 256) * sig / 256)
  assert np.all((ref - f >= 0) & (ref - f < 1))  # floor: within one LSB
  assert np.all((f >= lb) & (f <= 256))
  np.testing.assert_array_equal(neurons.one_minus(f, 8) + f, 256)
  with pytest.raises(OverflowError):
    neurons.forget_gate_int(sig, lb, 16)


# --- inverse square root -------------------------------------------------------------------------


def test_inv_sqrt_mantissa_is_the_exact_floor():
  m = np.arange(2**14, 2**16)  # every mantissa in [1, 4) at Q.14
  exact = [math.isqrt(2**42 // int(u)) for u in m]
  np.testing.assert_array_equal(neurons.inv_sqrt_int(m, 14, 14, 31), exact)


@pytest.mark.parametrize(
  "in_frac, out_frac, out_bits", [(12, 12, 24), (13, 12, 24), (7, 10, 20), (0, 14, 31), (20, 8, 16)]
)
def test_inv_sqrt_error_monotone_and_zero(in_frac, out_frac, out_bits):
  sweep = np.geomspace(1, 2**31 - 1, 100_000).astype(np.int64)
  v = np.unique(np.concatenate([np.arange(2**16), sweep]))
  y = neurons.inv_sqrt_int(v, in_frac, out_frac, out_bits)
  _, top = fixed.int_range(out_bits)
  assert y[0] == top  # v = 0: the largest value, no division by zero
  assert np.all(np.diff(y) <= 0)
  t = 2.0**out_frac / np.sqrt(v[1:] * 2.0**-in_frac)
  ok = t < top
  np.testing.assert_array_equal(y[1:][~ok], top)
  err = np.abs(y[1:] - t)[ok]
  assert np.all(err <= t[ok] * 2.0**-13 + 1)  # measured: 1 LSB (floor) + 2^-13.6 relative
  assert np.all(err[t[ok] >= 2**10] <= t[ok][t[ok] >= 2**10] * 2.0**-10)


# --- RMSNorm -------------------------------------------------------------------------------------


def _rmsnorm_case(D, x_bits, x_frac, seed=0):
  rng = np.random.default_rng(seed)
  scale = rng.uniform(0.05, 1, size=(8, 1)) * 2 ** (x_bits - 1) / 3
  lo, hi = fixed.int_range(x_bits)
  x_q = np.clip(np.round(rng.standard_normal((8, D)) * scale), lo, hi).astype(np.int64)
  return x_q, rng.uniform(0.5, 2, size=D)


def _rmsnorm_float(x_q, x_frac, gain, eps, out_frac, out_bits):
  x = x_q * 2.0**-x_frac
  y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * gain * 2.0**out_frac
  return np.clip(y, *fixed.int_range(out_bits))


# Measured: the output rounding (1 LSB floor, 1/2 half even) plus 2^-12 relative (r in Q.14-16);
# 16-bit inputs lose up to 1 more LSB to the squares' pre-shift (12 bits at D = 2816).
@pytest.mark.parametrize("D", [64, 96, 2816])
@pytest.mark.parametrize(
  "x_bits, x_frac, r_frac, gain_bits, gain_frac, out_bits, out_frac, floor_lsb, half_even_lsb",
  [
    (8, 4, 16, 16, 12, 8, 4, 1.01, 0.51),
    (16, 10, 14, 12, 8, 8, 4, 2.0, 0.85),
    (8, 4, 16, 16, 12, 16, 12, 1.0, 0.5),
  ],
)
def test_rmsnorm_matches_float(
  D, x_bits, x_frac, r_frac, gain_bits, gain_frac, out_bits, out_frac, floor_lsb, half_even_lsb
):
  x_q, gain = _rmsnorm_case(D, x_bits, x_frac)
  gain_q = np.round(gain * 2.0**gain_frac).astype(np.int64)
  sq_shift = neurons.rms_sq_shift(x_bits, D)
  eps_frac = 2 * x_frac - sq_shift  # the mean square's format
  eps_q = round(2.0**-6 * 2.0**eps_frac)
  g = gain_q * 2.0**-gain_frac
  ref = _rmsnorm_float(x_q, x_frac, g, eps_q * 2.0**-eps_frac, out_frac, out_bits)
  fmt = dict(x_bits=x_bits, x_frac=x_frac, gain_bits=gain_bits, gain_frac=gain_frac)
  fmt |= dict(out_bits=out_bits, out_frac=out_frac, sq_shift=sq_shift, r_frac=r_frac)
  for rounding, lsb in (("floor", floor_lsb), ("half_even", half_even_lsb)):
    y = neurons.rmsnorm_int(x_q, gain_q, eps_q, rounding=rounding, **fmt)
    assert np.all(np.abs(y - ref) <= lsb + 2.0**-12 * np.abs(ref))


def test_rmsnorm_eps_zero_normalizes():
  x_q = np.array([[3, -4, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])  # rms 2.5, 0, 1 (in LSBs)
  kw = dict(x_bits=8, x_frac=0, gain_bits=8, gain_frac=4, out_bits=16, out_frac=8, r_frac=16)
  y = neurons.rmsnorm_int(x_q, np.full(4, 16), 0, **kw)
  np.testing.assert_array_equal(y, [[307, -410, 0, 0], [0, 0, 0, 0], [256, 256, 256, 256]])


# --- MLGRU integrator ----------------------------------------------------------------------------


@given(
  h=_ints(24, (2, 8)),
  c=_ints(24, (2, 8)),
  f=_ints(10, (2, 8)).map(lambda v: np.minimum(abs(v), 256)),
  rounding=st.sampled_from(fixed.ROUNDINGS),
)
def test_mlgru_step_equals_float64_reference(h, c, f, rounding):
  fh = f * h.astype(np.float64) / 2**8  # exact in float64: |f·h| < 2^33
  fh = np.floor(fh) if rounding == "floor" else np.round(fh)
  ref = np.clip(fh + c, -(2**23), 2**23 - 1)
  np.testing.assert_array_equal(neurons.mlgru_step_int(h, f, c, 8, 24, rounding), ref)


def test_mlgru_saturates_and_scans():
  top = 2**23 - 1
  assert neurons.mlgru_step_int(np.array([top]), np.array([256]), np.array([top]), 8, 24) == top
  assert (
    neurons.mlgru_step_int(np.array([-top]), np.array([256]), np.array([-top]), 8, 24) == -top - 1
  )
  rng = np.random.default_rng(0)
  f_T = rng.integers(0, 257, size=(5, 2, 3))
  c_T = rng.integers(-(2**20), 2**20, size=(5, 2, 3))
  h_T = neurons.mlgru_scan_int(f_T, c_T, np.zeros((2, 3), np.int64), 8, 24)
  h = np.zeros((2, 3))
  for t in range(5):
    h = np.clip(np.floor(f_T[t] * h / 256) + c_T[t], -(2**23), top)
    np.testing.assert_array_equal(h_T[t], h)
  with pytest.raises(OverflowError):
    neurons.mlgru_step_int(h_T[0], f_T[0], c_T[0], 8, 31)
  f16 = f_T[0] << 8  # a Q.16 gate: f·h splits at 2^14, exact
  want = np.clip(((f16 * h_T[0]) >> 16) + c_T[0], -(2**23), top)
  np.testing.assert_array_equal(neurons.mlgru_step_int(h_T[0], f16, c_T[0], 16, 24), want)


def test_ternary_matvec():
  rng = np.random.default_rng(0)
  x_q, w_q = rng.integers(-128, 128, size=(4, 96)), rng.integers(-1, 2, size=(96, 32))
  np.testing.assert_array_equal(neurons.ternary_matvec(x_q, w_q, 8), x_q @ w_q)
  with pytest.raises(OverflowError):
    neurons.ternary_matvec(x_q, np.zeros((2**24, 1), np.int8), 8)


# --- one semantics in numpy and jax --------------------------------------------------------------

_rng = np.random.default_rng(1)
_X20 = _rng.integers(-(2**20), 2**20, size=(3, 64))
_POS = np.abs(_X20)
_F8 = _rng.integers(0, 257, size=(3, 64))
_X8 = _rng.integers(-128, 128, size=(3, 96))
_G96 = _rng.integers(2**11, 2**13, size=96)
_LUT8, _LUT64 = neurons.sigmoid_lut(), neurons.sigmoid_lut(64)
_NORM = dict(x_bits=8, x_frac=4, gain_bits=16, gain_frac=12, out_bits=8, out_frac=4, r_frac=16)
INT_CASES = {
  "shift_floor": (lambda x: fixed.shift_right(x, 5), (_X20,)),
  "shift_half_even": (lambda x: fixed.shift_right(x, 5, "half_even"), (_X20,)),
  "shift_left": (lambda x: fixed.shift_right(x, -3), (_X20,)),
  "saturate": (lambda x: fixed.saturate(x, 12), (_X20,)),
  "saturation_count": (lambda x: fixed.saturation_count(x, 12), (_X20,)),
  "mul_shift": (lambda f, h: fixed.mul_shift(f, h, 8, 24, 10, 22, "half_even"), (_F8, _X20)),
  "bit_length": (fixed.bit_length, (_POS,)),
  "sigmoid": (lambda a: neurons.sigmoid_int(a >> 8, _LUT8), (_X20,)),
  "sigmoid64": (lambda a: neurons.sigmoid_int(a >> 8, _LUT64, "half_even"), (_X20,)),
  "silu": (lambda a: neurons.silu_int(a, _LUT8), (_X20,)),
  "forget_gate": (lambda s, lb: neurons.forget_gate_int(s, lb, 8), (_F8, _F8[::-1])),
  "one_minus": (lambda f: neurons.one_minus(f, 8), (_F8,)),
  "inv_sqrt": (neurons.inv_sqrt_int, (_POS,)),
  "inv_sqrt_formats": (lambda v: neurons.inv_sqrt_int(v, 7, 10, 20), (_POS,)),
  "rmsnorm": (lambda x, g: neurons.rmsnorm_int(x, g, 3, **_NORM), (_X8, _G96)),
  "mlgru_step": (lambda h, f, c: neurons.mlgru_step_int(h, f, c, 8, 22), (_X20, _F8, _X20[::-1])),
  "mlgru_scan": (
    lambda f, c, h0: neurons.mlgru_scan_int(f, c, h0, 8, 22, "half_even"),
    (_F8, _X20, _X20[0]),
  ),
  "ternary_matvec": (lambda x, w: neurons.ternary_matvec(x, w, 8), (_X8, _X8.T[:, :5] % 3 - 1)),
  "shift_each": (lambda x, e: fixed.shift_right_each(x, e, "half_even"), (_X20, _F8 % 31)),
  "rescale": (
    lambda a, e: neurons.bitlinear_rescale(a >> 6, 9000, 20, e % 9 - 6, 6, 16, "half_even"),
    (_X20, _F8),
  ),
}


@pytest.mark.parametrize("name", list(INT_CASES))
def test_same_integers_in_numpy_and_jax(name):
  import jax
  import jax.numpy as jnp

  fn, args = INT_CASES[name]
  ref = fn(*args)
  assert ref.dtype == np.int64
  out = fn(*[a.astype(np.int32) for a in args])
  assert out.dtype == np.int32 or name == "saturation_count"  # a count: numpy sums in int64
  np.testing.assert_array_equal(out, ref)
  j_args = [jnp.asarray(a, jnp.int32) for a in args]
  for out in (fn(*j_args), jax.jit(fn)(*j_args)):
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out), ref)


def test_beta_multiplier_is_the_same_in_numpy_and_jax():
  import jax.numpy as jnp

  beta = np.float32(_rng.uniform(1e-5, 4.0, size=200)).astype(np.float32)
  beta[:3] = (0.5, 0.125, 2.0**-7)  # powers of two: frexp's boundary
  m, k = neurons.multiplier(beta, 12)
  jm, jk = neurons.multiplier(jnp.asarray(beta), 12)
  np.testing.assert_array_equal(m, np.asarray(jm))
  np.testing.assert_array_equal(k, np.asarray(jk))
  np.testing.assert_array_equal(m[:3], 2**11)


def test_same_floats_in_numpy_and_jax():
  import jax.numpy as jnp

  x = np.random.default_rng(2).standard_normal(256).astype(np.float32) * 300
  e = np.arange(-8, 8).repeat(16)
  cases = [
    lambda x, e: fixed.quantize(x, e, 8),
    lambda x, e: fixed.quantize(x, -3, 12, "floor"),
    lambda x, e: fixed.quantize_scale(x, 0.37, 8),
    lambda x, e: fixed.dequantize(fixed.quantize(x, e, 8), e),
    lambda x, e: fixed.pow2_exponent(abs(x), 8),
  ]
  for fn in cases:
    ref = fn(x, e)
    np.testing.assert_array_equal(np.asarray(fn(jnp.asarray(x), jnp.asarray(e, jnp.int32))), ref)


def test_neurons_import_no_jax():
  code = (
    "import sys, mmfree.loihi.neurons; "
    "assert not any(m.startswith(('jax', 'flax')) for m in sys.modules)"
  )
  subprocess.run([sys.executable, "-c", code], check=True)
