"""The quantization stages of `mmfree run`: post-training quantization of a trained run (steps=0),
calibration as a stage, evaluation at several precisions, and QAT from calibrated scales."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import mmfree
from mmfree import configs
from mmfree.algorithms import calibrate as calibration
from mmfree.algorithms.evaluate import with_model_tokenizer
from mmfree.data import pipeline
from mmfree.data.sources import load_data
from mmfree.quant import calibrate
from mmfree.run import run_experiment
from mmfree.store import checkpoint

ROOT = Path(__file__).parent.parent
SMOKE = str(ROOT / "experiments/tiny.py:smoke")
QUANT = {"stages": ("train", "calibrate", "eval"), "eval.precisions": ("bitnet", "hw"),
         "eval.calib_batches": 2, "eval.max_windows": 4}  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  d = tmp_path_factory.mktemp("base")
  run_experiment(configs.load_experiment(SMOKE, {"stages": ("train",)}), d)
  return d


def _eval(run_dir: Path) -> dict:
  return json.loads((run_dir / "eval.json").read_text())


def test_post_training_quantization_takes_the_weights_as_they_are(base, tmp_path):
  exp = configs.load_experiment(SMOKE, {**QUANT, "train.init_from": str(base), "train.steps": 0})
  run_experiment(exp, tmp_path)
  with checkpoint.manager(tmp_path) as mgr:
    assert mgr.all_steps() == [0]
  _, src = checkpoint.read_params(base)
  _, dst = checkpoint.read_params(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, src, dst)
  ev = _eval(tmp_path)
  assert set(ev) == {"bitnet", "hw"} and "saturation_pct" in ev["hw"]
  # The bitnet figure is the base model's own loss, computed independently of the stage.
  val_N = load_data(with_model_tokenizer(exp.data, base)).val_N
  windows = pipeline.eval_windows(val_N, exp.train.seq_len, exp.eval.max_windows)
  nll = mmfree.load(base).token_nll(windows).mean()
  assert ev["bitnet"]["loss"] == pytest.approx(float(nll), rel=1e-6)
  assert abs(ev["hw"]["loss"] - ev["bitnet"]["loss"]) < 0.05 * ev["bitnet"]["loss"]
  # Rerunning finds every stage complete: calibration and evaluation are not redone.
  stamps = [(tmp_path / f).stat().st_mtime_ns for f in ("quant/scales.json", "eval.json")]
  run_experiment(exp, tmp_path)
  assert stamps == [(tmp_path / f).stat().st_mtime_ns for f in ("quant/scales.json", "eval.json")]


def test_qat_trains_at_hw_from_the_calibrated_start(base, tmp_path):
  overrides = {**QUANT, "train.init_from": str(base), "train.steps": 3, "model.precision": "hw",
               "train.warmup_steps": 0, "quant.act_bits": 6}  # fmt: skip
  exp = configs.load_experiment(SMOKE, overrides)
  run_experiment(exp, tmp_path)
  meta = json.loads((tmp_path / "quant/config.json").read_text())
  assert meta["calibration"]["source"] == str(base) and meta["act_bits"] == 6
  # The frozen scales are those of the starting weights: calibrating the base gives the same.
  data_cfg = with_model_tokenizer(exp.data, base)
  calibration.calibrate_run(base, exp.quant, data_cfg, 2, 8, exp.train.seq_len)
  assert calibrate.load(base)[1] == calibrate.load(tmp_path)[1]
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert any("val_loss" in r for r in rows) and rows[-1]["step"] == 3
  trained = mmfree.load(tmp_path)
  assert trained.config.precision == "hw"
  _, before = checkpoint.read_params(base)
  _, after = checkpoint.read_params(tmp_path)
  pairs = zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
  moved = [not np.array_equal(a, b) for a, b in pairs]
  assert any(moved), "QAT left every weight unchanged"
  ev = _eval(tmp_path)
  assert np.isfinite(ev["hw"]["loss"]) and np.isfinite(ev["bitnet"]["loss"])


def test_hw_training_needs_a_model_to_calibrate(tmp_path):
  exp = configs.load_experiment(SMOKE, {"model.precision": "hw"})
  with pytest.raises(ValueError, match="train.init_from"):
    run_experiment(exp, tmp_path)


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"train.steps": -1}, "train.steps=-1"),
    ({"stages": ("eval", "train")}, "in this order"),
    ({"eval.precisions": ("int4",)}, "eval.precisions"),
    ({"quant.act_bits": 40}, "quant.act_bits"),
  ],
)
def test_bad_quantization_configs_are_refused(overrides, message):
  with pytest.raises(ValueError, match=message):
    configs.load_experiment(SMOKE, overrides)
