"""Calibration: observers, frozen scales, saturation and error statistics, the quant/ files."""

import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from mmfree.core.quant import ALL_POINTS, QuantConfig
from mmfree.models import MMfreeLM, preset
from mmfree.quant import calibrate, hw


@pytest.fixture(scope="module")
def model_and_batches():
  cfg = preset("tiny")
  model = MMfreeLM(cfg, nnx.Rngs(0))
  model.lower_bounds[...] = jax.random.normal(jax.random.key(1), model.lower_bounds.shape)
  keys = jax.random.split(jax.random.key(2), 3)
  batches = [np.asarray(jax.random.randint(k, (2, 16), 0, cfg.vocab_size)) for k in keys]
  return model, batches


def test_pow2_ceil_scales_never_clip_what_they_were_calibrated_on(model_and_batches):
  scales, stats = calibrate.calibrate(*model_and_batches, QuantConfig())
  # per-token BitLinear inputs are quantized by the layer, not with a frozen scale; the integer
  # norm's sum of squares is exact (no mean-square format)
  assert {calibrate.point_name(k) for k in scales} == set(ALL_POINTS) - {"bitlinear_in", "rms_ms"}
  for key, s in scales.items():
    assert math.log2(s.scale) == round(math.log2(s.scale)), key  # a shift
    assert stats[key]["saturation"] == 0, key
    qmax = 2 ** (s.bits - 1) - 1
    if calibrate.point_name(key) in hw.FIXED_POINTS:  # the kernels' formats, not calibrated
      assert s == hw.fixed_format(calibrate.point_name(key), QuantConfig()), key
      continue
    # ceil: the smallest power of two covering the range
    assert stats[key]["observed"] <= qmax * s.scale < 2 * stats[key]["observed"] + 1e-30, key
  assert all(s.bits == 16 for k, s in scales.items() if k.endswith(".h"))


def test_more_bits_means_less_error_and_percentile_clips(model_and_batches):
  _, s8 = calibrate.calibrate(*model_and_batches, QuantConfig(act_bits=8))
  _, s12 = calibrate.calibrate(*model_and_batches, QuantConfig(act_bits=12))
  eight = [k for k in s8 if s8[k]["bits"] == 8]
  assert all(s12[k]["rel_error"] <= s8[k]["rel_error"] for k in eight)
  assert np.mean([s12[k]["rel_error"] / max(s8[k]["rel_error"], 1e-12) for k in eight]) < 0.2
  _, pct = calibrate.calibrate(
    *model_and_batches,
    QuantConfig(observer="percentile", percentile=90.0, scale="free", rmsnorm="float"),
  )
  assert any(s["saturation"] > 0 for s in pct.values())
  assert all(s["observed"] <= s8[k]["observed"] + 1e-6 for k, s in pct.items() if k in s8)


def test_disabled_points_get_no_scale_and_files_round_trip(model_and_batches, tmp_path):
  cfg = QuantConfig(disabled=("h", "rms_inv"), bits=("c=12",), rounding="floor")
  scales, stats = calibrate.calibrate(*model_and_batches, cfg)
  assert not any(calibrate.point_name(k) in ("h", "rms_inv") for k in scales)
  assert all(s.bits == 12 for k, s in scales.items() if k.endswith(".c"))
  calibrate.save(tmp_path, cfg, scales, stats, {"batches": 3})
  cfg2, scales2 = calibrate.load(tmp_path)
  assert cfg2 == cfg and scales2 == scales
  assert json.loads((tmp_path / "quant/config.json").read_text())["calibration"]["batches"] == 3
  with pytest.raises(FileNotFoundError, match="mmfree quantize calibrate"):
    calibrate.load(tmp_path / "elsewhere")


def test_one_module_takes_its_own_width(model_and_batches):
  """'module.path.point=bits' beats 'point=bits' there alone; a path the model lacks is refused."""
  cfg = QuantConfig(bits=("residual=10", "layers.0.residual=12", "layers.1.attn.silu_h=6"))
  scales, _ = calibrate.calibrate(*model_and_batches, cfg)
  assert scales["layers.0.residual"].bits == 12 and scales["layers.1.residual"].bits == 10
  assert scales["layers.1.attn.silu_h"].bits == 6 and scales["layers.0.attn.silu_h"].bits == 8
  with pytest.raises(ValueError, match=r"does not have: \['layers.7.residual'\]"):
    calibrate.calibrate(*model_and_batches, QuantConfig(bits=("layers.7.residual=12",)))
  with pytest.raises(ValueError, match="checked model-wide"):
    QuantConfig(bits=("layers.0.bitlinear_in=6",))


def test_calibrate_cli_on_a_trained_run(tmp_path, capsys):
  from pathlib import Path

  from mmfree.cli import main

  smoke = str(Path(__file__).parent.parent / "experiments/tiny.py:smoke")
  main(["train", "--config", smoke, "--workdir", str(tmp_path)])
  main(["quantize", "calibrate", str(tmp_path), "--batches", "2", "--seq-len", "16",
        "--quant.act_bits=6", "--quant.disabled=('h',)"])  # fmt: skip
  out = capsys.readouterr().out
  assert "| c |" in out and "| h |" not in out
  cfg, scales = calibrate.load(tmp_path)
  assert cfg.act_bits == 6 and scales
