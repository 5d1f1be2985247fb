"""The `hw` level: values on the grids of their frozen scales, equal to the numpy integer kernels
applied to the recorded inputs, close to `bitnet` after calibration, and trainable (STE)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mmfree
from mmfree.cli import main
from mmfree.data.sources import DataConfig, load_data
from mmfree.loihi import fixed, neurons
from mmfree.models.lm import lower_bounds
from mmfree.quant import calibrate, hw
from mmfree.quant.points import Probe, recorder, set_probe

SMOKE = str(Path(__file__).parent.parent / "experiments/tiny.py:smoke")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  d = tmp_path_factory.mktemp("hw")
  main(
    [
      "train",
      "--config",
      SMOKE,
      "--workdir",
      str(d),
      "--config.train.steps=20",
      "--config.model.num_hidden_layers=2",
    ]
  )  # layer 1 has a lower bound
  main(["quantize", "calibrate", str(d), "--batches", "4", "--seq-len", "32"])
  return d


@pytest.fixture(scope="module")
def text_tokens():
  data = load_data(DataConfig(tokenizer="byte"))
  return np.asarray(data.val_N[:96]).reshape(1, 96)  # real text: the held-out corpus


def _model(run_dir):
  from mmfree.api import read_params
  from mmfree.quant.points import set_hw
  from mmfree.train.checkpoint import build_model

  cfg, params = read_params(Path(run_dir))
  model = build_model(cfg.replace(precision="hw"), params)
  set_hw(model, *calibrate.load(run_dir))
  return model


def test_hw_values_equal_the_integer_kernels(run, text_tokens):
  model = _model(run)
  qcfg, scales = calibrate.load(run)
  set_probe(model, Probe("values"))
  _, rec = nnx.jit(recorder(lambda m, t: m(t)[0]))(model, jnp.asarray(text_tokens))
  rec = {k: np.asarray(v[0], np.float64) for k, v in rec.items()}
  F, f_in = qcfg.lut_out_frac, qcfg.lut_in_frac

  # Every quantized point holds integers times its scale, within its bits.
  for key, s in scales.items():
    if calibrate.point_name(key) in hw.FIXED_POINTS:
      continue
    q = rec[key] / s.scale
    np.testing.assert_array_equal(q, np.round(q), err_msg=key)
    lo, hi = fixed.int_range(s.bits)
    assert q.min() >= lo and q.max() <= hi, key

  lut = neurons.sigmoid_lut(qcfg.lut_size, f_in, F, qcfg.lut_x_max)
  lb = np.asarray(lower_bounds(model.lower_bounds[...]))
  as_q = lambda x, s: fixed.quantize_scale(x, s.scale, s.bits, qcfg.rounding)
  for layer in range(model.config.num_hidden_layers):
    p = f"layers.{layer}.attn."
    sig_q = rec[p + "f_sigma"] * 2**F
    np.testing.assert_array_equal(sig_q, np.round(sig_q))
    f_q = sig_q.astype(np.int64)
    if layer > 0:  # the fixed-point lower bound
      lb_q = fixed.quantize(lb[layer], -F, F + 2, qcfg.rounding)
      f_q = neurons.forget_gate_int(f_q, lb_q, F, qcfg.rounding)
    np.testing.assert_array_equal(rec[p + "f_lb"] * 2**F, f_q)
    # The saturating integrator, step by step, from the recorded gates and inputs.
    s_h = scales[p + "h"]
    c_q = as_q(rec[p + "c"], s_h)
    h_q = neurons.mlgru_scan_int(
      np.swapaxes(f_q, 0, 1), np.swapaxes(c_q, 0, 1), np.zeros_like(c_q[:, 0]), F, s_h.bits,
      qcfg.rounding,
    )  # fmt: skip
    np.testing.assert_array_equal(rec[p + "h"] / s_h.scale, np.swapaxes(h_q, 0, 1))
    # SiLU(h) by the LUT, requantized to its point; the gated product likewise.
    silu = neurons.silu_int(fixed.quantize(rec[p + "h"], -f_in, hw.WIDE_BITS, qcfg.rounding), lut,
                            qcfg.rounding) * 2.0**-f_in  # fmt: skip
    s_silu = scales[p + "silu_h"]
    np.testing.assert_array_equal(rec[p + "silu_h"] / s_silu.scale, as_q(silu, s_silu))
    gated = rec[p + "g_norm"] * rec[p + "silu_h"]
    np.testing.assert_array_equal(rec[p + "gated"] / scales[p + "gated"].scale,
                                  as_q(gated, scales[p + "gated"]))  # fmt: skip
    m = f"layers.{layer}.mlp."
    gate = fixed.quantize(rec[m + "glu_gate"], -f_in, hw.WIDE_BITS, qcfg.rounding)
    glu_silu = neurons.silu_int(gate, lut, qcfg.rounding) * 2.0**-f_in
    s_gs = scales[m + "glu_silu"]
    np.testing.assert_array_equal(rec[m + "glu_silu"] / s_gs.scale, as_q(glu_silu, s_gs))


def test_hw_is_close_to_bitnet_after_calibration_and_generates(run, text_tokens):
  bitnet = mmfree.load(run).token_nll(text_tokens).mean()
  lm = mmfree.load(run, precision="hw")
  assert abs(lm.token_nll(text_tokens).mean() / bitnet - 1) < 0.05
  prompt = text_tokens[:, :8]
  new = lm.generate(prompt, 6, temperature=0, stop_at_eos=False)
  logits = lm.logits(np.concatenate([prompt, new], axis=1))
  np.testing.assert_array_equal(new, logits[:, 7:-1].argmax(-1))  # the recurrent step is exact


def test_hw_trains_with_straight_through_gradients(run, text_tokens):
  model = _model(run)
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(params):
    logits = nnx.merge(graphdef, params)(jnp.asarray(text_tokens[:, :-1]))[0]
    targets = jnp.asarray(text_tokens[:, 1:])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))

  grads = jax.grad(loss)(params)
  for path, g in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(grads))[0]:
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
  assert np.any(np.asarray(grads["layers"][0]["attn"]["i_proj"]["kernel"]) != 0)


def test_hw_without_calibration_says_what_to_run(tmp_path):
  main(["train", "--config", SMOKE, "--workdir", str(tmp_path)])
  with pytest.raises(FileNotFoundError, match="mmfree quantize calibrate"):
    mmfree.load(tmp_path, precision="hw")


def test_eval_reports_saturation_at_hw(run):
  from mmfree.evaluate import evaluate_model

  r = evaluate_model(run, DataConfig(tokenizer="byte"), 32, "hw", max_windows=8)
  assert r["precision"] == "hw" and 0 <= r["saturation_pct"] <= 100
  assert {"h", "c", "gated", "glu_prod"} <= set(r["saturation_pct_by_point"])
  sat = mmfree.load(run, precision="hw").saturation(np.arange(1, 40)[None])
  assert all(0 <= a <= n for a, n in sat.values()) and any(n > 0 for _, n in sat.values())
