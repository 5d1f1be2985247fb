"""The `hw` level: values on the grids of their frozen scales, equal to the numpy integer kernels
applied to the recorded inputs, close to `bitnet` after calibration, and trainable (STE)."""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mmfree
from mmfree.cli import main
from mmfree.core.quant import QuantConfig, Scale
from mmfree.data.sources import DataConfig, load_data
from mmfree.loihi import fixed, neurons
from mmfree.models.lm import lower_bounds
from mmfree.quant import calibrate, hw
from mmfree.quant.points import Probe, recorder, set_probe

SMOKE = str(Path(__file__).parent.parent / "experiments/tiny.py:smoke")


@pytest.fixture(scope="module")
def run(calibrated_run):
  return calibrated_run


@pytest.fixture(scope="module")
def text_tokens():
  data = load_data(DataConfig(tokenizer="byte"))
  return np.asarray(data.val_N[:96]).reshape(1, 96)  # real text: the held-out corpus


def _model(run_dir, **quant):
  """The run's model at `hw` with its calibrated scales; `quant` overrides its QuantConfig."""
  from mmfree.quant.points import set_hw
  from mmfree.store.checkpoint import build_model, read_params

  cfg, params = read_params(Path(run_dir))
  model = build_model(cfg.replace(precision="hw"), params)
  qcfg, scales = calibrate.load(run_dir)
  set_hw(model, qcfg.replace(**quant), scales)
  return model


def _values(model, tokens_BxT):
  """{'module.path.point': the value the forward pass held there (float64)}."""
  set_probe(model, Probe("values"))
  _, rec = nnx.jit(recorder(lambda m, t: m(t)[0]))(model, jnp.asarray(tokens_BxT))
  set_probe(model, None)
  return {k: np.asarray(v[0], np.float64) for k, v in rec.items()}


def _nll(model, tokens_BxT):
  """Mean next-token loss (nats)."""
  logits = model(jnp.asarray(tokens_BxT[:, :-1]))[0]
  targets = jnp.asarray(tokens_BxT[:, 1:])
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))


def test_hw_values_equal_the_integer_kernels(run, text_tokens):
  model = _model(run)
  qcfg, scales = calibrate.load(run)
  rec = _values(model, text_tokens)
  F, f_in = qcfg.lut_out_frac, qcfg.lut_in_frac

  # Every quantized point holds integers times its scale, within its bits.
  for key, s in scales.items():  # the fixed formats too: gates in Q.F, integer accumulators
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


def test_hw_bitlinears_equal_the_integer_rescale(run, text_tokens):
  model = _model(run)
  qcfg, scales = calibrate.load(run)
  rec = _values(model, text_tokens)
  layers = {".".join(map(str, path)): m for path, m in nnx.iter_modules(model)}
  outs = sorted(k.removesuffix("bitlinear_out") for k in scales if k.endswith("bitlinear_out"))
  assert len(outs) == 2 * 6 + 1  # 6 BitLinears per block, and the lm_head
  for p in outs:
    w_q, beta = (np.asarray(a) for a in layers[p.removesuffix(".")].quantized_weight())
    x = rec[p + "bitlinear_in"]  # the norm's output, on its grid: per-token int8 from here
    e_x = fixed.pow2_exponent(np.abs(x).max(-1, keepdims=True), 8)
    x_q = np.clip(np.round(np.ldexp(x, -e_x)), -128, 127).astype(np.int64)
    lo, hi = fixed.int_range(qcfg.acc_bits)
    acc = np.clip(neurons.ternary_matvec(x_q, w_q.astype(np.int64)), lo, hi)
    np.testing.assert_array_equal(rec[p + "bitlinear_acc"], acc, err_msg=p)
    m, k = neurons.multiplier(np.float32(beta), neurons.rescale_m_bits(x.shape[-1]))
    s = scales[p + "bitlinear_out"]
    y_q = neurons.bitlinear_rescale(acc, m, k, e_x, hw.frac_of(s), s.bits, qcfg.rounding)
    np.testing.assert_array_equal(rec[p + "bitlinear_out"] / s.scale, y_q, err_msg=p)
    # β's multiplier is within half a step of β, and the rescale near the float product
    assert abs(m * 2.0**-k / beta - 1) <= 2.0 ** -(neurons.rescale_m_bits(x.shape[-1]) - 1)
    ref = acc * float(beta) * np.ldexp(1.0, e_x)
    assert np.all(np.abs(y_q * s.scale - ref) <= s.scale + 1e-3 * np.abs(ref)), p


def _norms(scales):
  """The module paths (with a trailing '.', '' for none) of every RMSNorm."""
  return sorted(k.removesuffix("rms_out") for k in scales if k.endswith("rms_out"))


def test_hw_rmsnorms_equal_the_integer_kernel(run, text_tokens):
  model = _model(run)
  qcfg, scales = calibrate.load(run)
  assert qcfg.rmsnorm == "int"
  rec = _values(model, text_tokens)
  eps = model.config.rms_norm_eps
  frac = lambda s: -round(math.log2(s.scale))  # pow2 scales: Q formats
  norms = _norms(scales)
  # every norm: the blocks', the MLGRU's g_norm, the final norm, each BitLinear's own
  assert {"layers.0.attn_norm.", "layers.1.mlp_norm.", "layers.0.attn.g_norm.", "norm.",
          "lm_head.norm.", "layers.1.mlp.down_proj.norm."} <= set(norms)  # fmt: skip
  assert len(norms) == 2 * 9 + 2  # per layer 2 + g_norm + 6 BitLinears; final norm, lm_head's
  for p in norms:
    s_x, s_g, s_r, s_y = (scales[p + n] for n in ("rms_in", "rms_gain", "rms_inv", "rms_out"))
    x_q = (rec[p + "rms_in"] / s_x.scale).astype(np.int64)
    g_q = (rec[p + "rms_gain"] / s_g.scale).astype(np.int64)
    np.testing.assert_array_equal(x_q, rec[p + "rms_in"] / s_x.scale, err_msg=p)
    sq_shift = neurons.rms_sq_shift(s_x.bits, x_q.shape[-1])
    fmt = dict(x_bits=s_x.bits, x_frac=frac(s_x), gain_bits=s_g.bits, gain_frac=frac(s_g),
               out_bits=s_y.bits, out_frac=frac(s_y), sq_shift=sq_shift, r_frac=frac(s_r),
               r_bits=s_r.bits, rounding=qcfg.rounding)  # fmt: skip
    eps_q = round(eps * 2.0 ** (2 * frac(s_x) - sq_shift))
    y_q = neurons.rmsnorm_int(x_q, g_q, eps_q, **fmt)
    assert y_q.dtype == np.int64 and np.any(y_q != 0), p
    np.testing.assert_array_equal(rec[p + "rms_out"] / s_y.scale, y_q, err_msg=p)
    # mutation: the other rounding moves some outputs by one step, and the equality sees it
    other = "floor" if qcfg.rounding == "half_even" else "half_even"
    assert np.any(neurons.rmsnorm_int(x_q, g_q, eps_q, **(fmt | {"rounding": other})) != y_q), p


def test_float_rmsnorm_and_the_cost_of_integer_norms(run, text_tokens):
  float_norms = _model(run, rmsnorm="float")
  rec = _values(float_norms, text_tokens)
  _, scales = calibrate.load(run)
  for p in _norms(scales):  # float32 x·(1/rms)·w from the quantized internals, then quantized
    x, inv, w = (rec[p + n].astype(np.float32) for n in ("rms_in", "rms_inv", "rms_gain"))
    y, s = x * inv * w, scales[p + "rms_out"]
    np.testing.assert_array_equal(
      rec[p + "rms_out"] / s.scale, fixed.quantize_scale(y, s.scale, s.bits), err_msg=p
    )
  bitnet = mmfree.load(run).token_nll(text_tokens).mean()
  int_loss, float_loss = _nll(_model(run), text_tokens), _nll(float_norms, text_tokens)
  # measured: int +0.003%, float +0.010% (runs/tiny, full eval: +0.32%, +0.34%)
  assert abs(int_loss / bitnet - 1) < 0.002 and abs(float_loss / bitnet - 1) < 0.002


def test_rms_format_from_scales_and_its_fallbacks():
  cfg = QuantConfig()
  scales = {"rms_in": Scale(2.0**-3, 8), "rms_gain": Scale(2.0**-9, 12),
            "rms_inv": Scale(2.0**-17, 24), "rms_out": Scale(2.0**-4, 8)}  # fmt: skip

  def fmt_of(cfg, drop=None):
    return hw.rms_format(hw.Hw(cfg, tuple(i for i in scales.items() if i[0] != drop)), 256, 1e-3)

  fmt = fmt_of(cfg)
  assert (fmt.x_frac, fmt.gain_frac, fmt.r_frac, fmt.out_frac) == (3, 9, 17, 4)
  assert (fmt.x_bits, fmt.gain_bits, fmt.r_bits, fmt.out_bits) == (8, 12, 24, 8)
  assert fmt.sq_shift == 0 and fmt.eps_q == round(1e-3 * 2**6)
  # float norms: asked for, or a point without a scale (disabled)
  assert fmt_of(cfg.replace(rmsnorm="float")) is None
  assert all(fmt_of(cfg, drop=name) is None for name in scales)
  with pytest.raises(ValueError, match="not a power of two"):
    hw.frac_of(Scale(0.3, 8))
  # formats the kernel cannot hold exactly: an error that names them and the way out
  tiny_gain = dataclasses.replace(fmt, gain_frac=0)  # r·gain up to 2^34
  with pytest.raises(OverflowError, match=r"gain_frac=0.*quant.rmsnorm='float'"):
    hw.rmsnorm(jnp.ones((2, 256)), jnp.ones((256,)), tiny_gain)


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

  grads = jax.grad(lambda params: _nll(nnx.merge(graphdef, params), text_tokens))(params)
  for path, g in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(grads))[0]:
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
  assert np.any(np.asarray(grads["layers"][0]["attn"]["i_proj"]["kernel"]) != 0)
  # through the integer RMSNorms: their gains and what feeds them
  assert np.any(np.asarray(grads["layers"][0]["attn_norm"]["weight"]) != 0)
  assert np.any(np.asarray(grads["layers"][0]["attn"]["g_proj"]["norm"]["weight"]) != 0)


def test_hw_without_calibration_says_what_to_run(tmp_path):
  main(["train", "--config", SMOKE, "--workdir", str(tmp_path)])
  with pytest.raises(FileNotFoundError, match="mmfree quantize calibrate"):
    mmfree.load(tmp_path, precision="hw")


def test_eval_reports_saturation_at_hw(run):
  from mmfree.algorithms.evaluate import evaluate_model

  r = evaluate_model(run, DataConfig(tokenizer="byte"), 32, "hw", max_windows=8)
  assert r["precision"] == "hw" and 0 <= r["saturation_pct"] <= 100
  assert {"h", "c", "gated", "glu_prod"} <= set(r["saturation_pct_by_point"])
  sat = mmfree.load(run, precision="hw").saturation(np.arange(1, 40)[None])
  assert all(0 <= a <= n for a, n in sat.values()) and any(n > 0 for _, n in sat.values())


def test_a_point_counts_exactly_the_values_it_clips():
  """Inputs with a known clipped share, read back by the `measure` probe: the point's own clips
  and those a kernel reports (`clipped`), each value once."""
  from mmfree.quant.points import point, set_scales

  class Holder(nnx.Module):
    def __call__(self, x, clipped=None):
      return point(self, "p", x, clipped)

  m = Holder()
  set_scales(m, {"p": Scale(0.5, 4)})  # q ∈ [−8, 7]: |x| up to 3.5 (and −4) fits
  set_probe(m, Probe("measure", rounding="half_even"))
  x = jnp.asarray(np.linspace(-6, 6, 2 * 5 * 12).reshape(2, 5, 12), jnp.float32)
  u = np.round(np.asarray(x) / 0.5)
  outside = (u < -8) | (u > 7)
  kernel = np.zeros(x.shape, bool)
  kernel[0, 0, :3] = True  # three more a kernel clipped, inside the point's range here
  kernel[0, 0, 0] = outside[0, 0, 0]  # and one it clipped that the point clips too: once
  for mask, want in ((None, outside), (jnp.asarray(kernel), outside | kernel)):
    _, rec = recorder(lambda mod, v, c=mask: mod(v, c))(m, x)
    (r,) = rec["p"]
    assert np.sum(r["saturated"]) == want.sum() and np.sum(r["count"]) == x.size
    np.testing.assert_array_equal(r["saturated"], want.sum(axis=(1, 2)))  # per batch row


def test_static_inputs_clip_to_their_own_width(run, tmp_path, text_tokens):
  """The silent clip of static 12-bit activations into int8 BitLinear inputs cannot recur: the
  bitlinear_in scale is chosen for the width its integers are clipped to (8 by default, 12 when
  asked, where the accumulate stays exact), and its reported saturation is what was clipped."""
  static = Path(shutil.copytree(run, tmp_path / "static"))
  args = ["quantize", "calibrate", str(static), "--batches", "2", "--seq-len", "32",
          "--quant.bitlinear_input=static", "--quant.act_bits=12"]  # fmt: skip
  main(args)
  _, scales = calibrate.load(static)
  inputs = {k: s for k, s in scales.items() if k.endswith("bitlinear_in")}
  assert inputs and all(s.bits == 8 for s in inputs.values())
  loss8 = _nll(_model(static), text_tokens)
  main([*args, "--quant.input_bits=12"])
  _, scales = calibrate.load(static)
  assert all(scales[k].bits == 12 for k in inputs)
  model = _model(static)
  rec = _values(model, text_tokens)
  widest = max(np.abs(rec[k] / scales[k].scale).max() for k in inputs)
  assert widest > 127  # the integers use the wider range: nothing clips them to int8
  assert float(_nll(model, text_tokens)) <= float(loss8) + 1e-3
  # A known clipped share: one BitLinear's input scale made 8× finer; its inputs (the values of
  # its norm's output, upstream of the change) predict exactly what clips.
  key = "layers.0.attn.f_proj.bitlinear_in"
  x = rec["layers.0.attn.f_proj.norm.rms_out"]
  finer = Scale(scales[key].scale / 8, 12)
  u = np.round(x / finer.scale)
  want = int(np.sum((u < -2048) | (u > 2047)))
  assert 0 < want < x.size
  path = static / "quant" / "scales.json"
  saved = json.loads(path.read_text())
  saved[key] = dataclasses.asdict(finer)
  path.write_text(json.dumps(saved))
  tokens = np.concatenate([text_tokens, text_tokens[:, -1:]], axis=1)
  _, sat = mmfree.load(static, precision="hw").token_nll_saturation(tokens)
  assert float(np.sum(sat[key][0])) == want


def test_input_widths_that_cannot_accumulate_exactly_are_refused(run, tmp_path):
  with pytest.raises(ValueError, match=r"f_proj\.bitlinear_in: 24-bit inputs .* at most"):
    hw.check_input_bits("layers.0.attn.f_proj", 64, 24)
  hw.check_input_bits("lm_head", 2048, 13)  # 2048·2^12 = 2^23: exact
  copy = Path(shutil.copytree(run, tmp_path / "wide"))
  with pytest.raises(SystemExit, match="bitlinear_in"):
    main(["quantize", "calibrate", str(copy), "--batches", "1", "--seq-len", "16",
          "--quant.input_bits=24"])  # fmt: skip
