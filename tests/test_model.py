"""The model: sizes, quantizers, the two forms of the recurrence, freezing."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmfree.models import MMfreeLM, preset
from mmfree.models.layers import BitLinear
from mmfree.models.lm import lower_bounds, set_precision
from mmfree.models.mlgru import scan_associative, scan_sequential
from mmfree.quant import bitnet


def _counts(name):
  model = nnx.eval_shape(lambda: MMfreeLM(preset(name), nnx.Rngs(0)))
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  matrices = sum(x.size for x in leaves if x.ndim == 2) - model.lower_bounds.get_value().size
  return matrices, sum(x.size for x in leaves)


@pytest.mark.parametrize(
  "name, H, L, I, expected",
  [
    ("370m", 1024, 24, 2816, 373.8e6),
    ("1.3b", 2048, 24, 5632, 1.36e9),
    ("2.7b", 2560, 32, 6912, 2.70e9),
  ],
)
def test_preset_parameter_counts(name, H, L, I, expected):
  cfg = preset(name)
  assert cfg.mlp_size == I
  matrices, total = _counts(name)
  # The spec's formula: per layer 4·H·D + H·2I + I·H, plus embedding and lm_head V·H each.
  assert matrices == L * (4 * H * H + 3 * H * I) + 2 * 32000 * H
  # The table rounds the weight matrices; gains and lower bounds add < 0.1%.
  assert matrices == pytest.approx(expected, rel=5e-3)
  assert total == pytest.approx(expected, rel=5e-3)
  if name == "370m":
    assert round(matrices / 1e5) == 3738


def test_lower_bounds_at_init():
  lb = lower_bounds(jnp.zeros((4, 3)))
  np.testing.assert_allclose(lb, np.arange(4)[:, None] / 4 * np.ones((1, 3)), atol=1e-7)


def test_quantizers_values_and_ste():
  x = jax.random.normal(jax.random.key(0), (2, 3, 16)) * 3
  x_q, s = bitnet.act_quant_int8(x)
  assert np.all(np.asarray(x_q) == np.round(np.asarray(x_q)))
  assert np.abs(np.asarray(x_q)).max() == 127
  np.testing.assert_allclose(x_q / s, x, atol=float(np.max(1 / s)))
  w = jax.random.normal(jax.random.key(1), (16, 8))
  w_q, beta = bitnet.weight_ternary(w)
  assert set(np.unique(np.asarray(w_q))) <= {-1.0, 0.0, 1.0}
  np.testing.assert_array_equal(w_q != 0, np.abs(w) >= 0.5 * np.abs(w).mean())
  # Straight-through: the gradient is that of the un-quantized product.
  g = jax.grad(
    lambda w: jnp.sum((x_q @ bitnet.weight_ternary(w)[0]) * bitnet.weight_ternary(w)[1])
  )(w)
  np.testing.assert_allclose(g, jnp.sum(x_q, axis=(0, 1))[:, None] * jnp.ones((1, 8)), rtol=1e-5)


def test_bitlinear_matches_dequantized_product():
  layer = BitLinear(
    16, 8, eps=1e-6, precision="bitnet", init=jax.nn.initializers.normal(1.0), rngs=nnx.Rngs(0)
  )
  x = np.asarray(jax.random.normal(jax.random.key(2), (2, 5, 16)), np.float64)
  w = np.asarray(layer.kernel[...], np.float64)
  xn = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6)
  s = 127 / np.max(np.abs(xn), -1, keepdims=True)
  beta = np.mean(np.abs(w))
  want = (np.clip(np.round(xn * s), -128, 127) / s) @ (np.clip(np.round(w / beta), -1, 1) * beta)
  np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), want, rtol=1e-4, atol=1e-5)


def test_associative_equals_sequential_scan():
  k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
  f = jax.nn.sigmoid(jax.random.normal(k1, (2, 37, 8)))
  c = jax.random.normal(k2, (2, 37, 8))
  h0 = jax.random.normal(k3, (2, 8))
  h_loop, h_prev = [], np.asarray(h0)
  for t in range(37):
    h_prev = np.asarray(f[:, t]) * h_prev + np.asarray(c[:, t])
    h_loop.append(h_prev)
  np.testing.assert_allclose(scan_associative(f, c, h0), np.stack(h_loop, 1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(scan_sequential(f, c, h0), np.stack(h_loop, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["bitnet", "float"])
def test_parallel_and_recurrent_logits_agree(precision):
  cfg = preset("tiny", precision=precision)
  model = MMfreeLM(cfg, nnx.Rngs(0))
  model.lower_bounds[...] = jax.random.normal(jax.random.key(4), model.lower_bounds[...].shape)
  tokens = jax.random.randint(jax.random.key(5), (2, 24), 0, cfg.vocab_size)
  full, h_full = model(tokens)
  h = model.init_state(2)
  steps = []
  for t in range(24):
    logits, h = model(tokens[:, t : t + 1], h)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(h, h_full, rtol=1e-4, atol=1e-5)
  # Prompt in one call, then continue: the state carries over exactly as token by token.
  first, h_mid = model(tokens[:, :10])
  rest, _ = model(tokens[:, 10:], h_mid)
  np.testing.assert_allclose(jnp.concatenate([first, rest], 1), full, rtol=1e-4, atol=1e-4)


def test_sequential_scan_config_gives_same_logits():
  cfg = preset("tiny")
  tokens = jax.random.randint(jax.random.key(6), (1, 16), 0, cfg.vocab_size)
  a = MMfreeLM(cfg, nnx.Rngs(0))(tokens)[0]
  b = MMfreeLM(cfg.replace(scan="sequential"), nnx.Rngs(0))(tokens)[0]
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_freeze_and_precision_switch():
  cfg = preset("tiny")
  model = MMfreeLM(cfg, nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(7), (2, 8), 0, cfg.vocab_size)
  before = model(tokens)[0]
  set_precision(model, "float")
  as_float = model(tokens)[0]
  assert not np.allclose(before, as_float)
  set_precision(model, "bitnet")
  model.freeze()
  assert set(np.unique(np.asarray(model.lm_head.kernel[...]))) <= {-1.0, 0.0, 1.0}
  np.testing.assert_allclose(model(tokens)[0], before, rtol=1e-6, atol=1e-6)
  set_precision(model, "float")
  with pytest.raises(ValueError, match="frozen"):
    model(tokens)


def test_training_gradients_reach_every_parameter():
  cfg = preset("tiny")
  model = MMfreeLM(cfg, nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tokens = jax.random.randint(jax.random.key(8), (2, 9), 0, cfg.vocab_size)

  def loss(params):
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])[0]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

  grads = jax.grad(loss)(params)
  for path, g in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(grads))[0]:
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
    assert np.any(g != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_bad_config_is_refused():
  with pytest.raises(ValueError, match="model.precision"):
    preset("tiny", precision="int3")
  with pytest.raises(ValueError, match="unknown model preset"):
    preset("7b")


def test_package_import_does_not_load_jax():
  code = "import sys, mmfree; assert 'jax' not in sys.modules, 'jax imported'"
  subprocess.run([sys.executable, "-c", code], check=True)


def test_bfloat16_matmuls_are_exact_at_bitnet():
  cfg = preset("tiny")
  tokens = jax.random.randint(jax.random.key(9), (2, 12), 0, cfg.vocab_size)
  a = MMfreeLM(cfg, nnx.Rngs(0))(tokens)[0]
  b = MMfreeLM(cfg.replace(matmul_dtype="bfloat16"), nnx.Rngs(0))(tokens)[0]
  np.testing.assert_array_equal(a, b)  # integer operands: bf16 loses nothing
  f32 = MMfreeLM(cfg.replace(precision="float"), nnx.Rngs(0))(tokens)[0]
  bf16 = MMfreeLM(cfg.replace(precision="float", matmul_dtype="bfloat16"), nnx.Rngs(0))(tokens)[0]
  assert not np.array_equal(f32, bf16)
  np.testing.assert_allclose(f32, bf16, atol=0.05)
