"""Bit-exactness across the design space: drawn QuantConfigs (every value of every axis in some
draw: widths 4–16, state widths, LUT sizes and formats, floor rounding, nearest powers of two,
ReLU, static and per-token inputs of 6–12 bits, one module's own widths, event-driven levers:
sigma-delta at threshold 0 everywhere, thresholds and deltas above 0) on random tiny models
(hidden sizes that are not powers of two, 1–3 layers, lower bound on and off, expand_ratio 2, the
lm_head on chip and on the host), calibrated on random tokens and lowered: the `hw` model and
the emulator give the same integers at every population, the same logits and the same clips at
every point; Lava joins on two draws (sigma-delta at 0, and levers above 0)."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the lava-nc wheel owns the name `tests`
import design_space as ds  # noqa: E402

from mmfree.loihi import backend, bundle_io, emulate  # noqa: E402

DRAWS = 8
NOT_COUNTED = ("rms_gain", "f_sigma", "f_lb")  # a parameter's clip (lowering time), fixed formats
VENV = Path(os.environ.get("MMFREE_LAVA_VENV", Path(__file__).parent.parent / ".venv-lava"))


def test_every_axis_value_is_drawn():
  for axes, part in ((ds.AXES, "q"), (ds.MODEL_AXES, "m")):
    for name, values in axes.items():
      drawn = {ds.pick(axes, i)[name] for i in range(DRAWS)}
      assert drawn == set(values), (part, name)


@pytest.mark.parametrize("i", range(DRAWS))
def test_hw_equals_the_emulator(i):
  d = ds.draw(i)
  params, scales, prog = ds.build(d)
  tokens = np.random.default_rng(100 + i).integers(0, ds.VOCAB, (ds.B, ds.T))
  result = emulate.Emulator(prog).run(tokens, record=True)
  logits, values, saturated = ds.hw_run(d, params, scales, tokens)
  for pop, key in ds.outputs_by_point(d.cfg.num_hidden_layers).items():
    np.testing.assert_array_equal(result.outputs[pop], values[key] / scales[key].scale,
                                  err_msg=f"draw {i}: {pop}")  # fmt: skip
  np.testing.assert_array_equal(result.logits, logits, err_msg=f"draw {i}: logits")
  clips = ds.emulator_clips(result)
  hw_clips = {k: n for k, n in saturated.items() if not k.endswith(NOT_COUNTED) and n}
  assert {k: n for k, n in clips.items() if n} == hw_clips, f"draw {i}: clips"


@pytest.mark.parametrize("i", [1, 2])  # the lm_head on chip and on the host
def test_lava_equals_the_emulator(i, tmp_path):
  backend.setup(VENV)
  _, _, prog = ds.build(ds.draw(i))
  bundle = bundle_io.save(prog, tmp_path / "program")
  prompt = [int(t) for t in np.random.default_rng(i).integers(0, ds.VOCAB, 6)]
  lava, _ = backend.run_lava(bundle, prompt, 2, VENV, timeout=600)
  emu, _ = backend.run_emulator(bundle, prompt, 2)
  assert backend.mismatches(lava, emu) == []
