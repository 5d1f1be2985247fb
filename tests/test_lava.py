"""The Lava backend, in the Python 3.10 Lava environment (made here once: `mmfree lava setup`):
Lava's fixed-point simulation gives the emulator's integers at every population, its logits and
its generated tokens, and leaves no process behind, on success or on error."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmfree.cli import main
from mmfree.data.sources import DataConfig, load_data
from mmfree.loihi import backend, program

VENV = Path(os.environ.get("MMFREE_LAVA_VENV", Path(__file__).parent.parent / ".venv-lava"))
T, NEW = 16, 6


@pytest.fixture(scope="module")
def venv():
  backend.setup(VENV)  # idempotent; concurrent workers wait on its lock
  return VENV


@pytest.fixture(scope="module")
def run(calibrated_run):
  return calibrated_run


@pytest.fixture(scope="module")
def prompt():
  return [int(t) for t in load_data(DataConfig(tokenizer="byte")).val_N[:T]]


def _same(lava, emu):
  assert backend.mismatches(lava, emu) == []
  assert lava.logits.shape == (1, T + NEW - 1, emu.logits.shape[-1])
  assert any(np.any(v != 0) for k, v in lava.outputs.items() if k != program.HOST)
  for pop, counts in emu.activity.items():
    for k, v in counts.items():
      np.testing.assert_array_equal(lava.activity[pop][k], v, err_msg=f"{pop} {k}")


def main_lower(run_dir, out, *flags):
  main(["lower", str(run_dir), "--out", str(out), *flags])
  return out


def test_lava_equals_the_emulator_and_leaves_no_process(venv, run, prompt, tmp_path):
  bundle = main_lower(run, tmp_path / "program")
  started = []
  lava, seconds = backend.run_lava(bundle, prompt, NEW, venv, timeout=600,
                                   on_start=started.append)  # fmt: skip
  emu, _ = backend.run_emulator(bundle, prompt, NEW)
  _same(lava, emu)
  assert seconds["timesteps"] > T and not backend.group_alive(started[0].pid)


def test_static_inputs_and_host_lm_head(venv, run, prompt, tmp_path):
  """Static BitLinear input scales (no exponent messages) and the lm_head on the host."""
  static = Path(shutil.copytree(run, tmp_path / "static"))
  main(["quantize", "calibrate", str(static), "--batches", "4", "--seq-len", "32",
        "--quant.bitlinear_input=static"])  # fmt: skip
  bundle = main_lower(static, tmp_path / "program", "--lm-head", "host")
  lava, _ = backend.run_lava(bundle, prompt, NEW, venv, timeout=600)
  _same(lava, backend.run_emulator(bundle, prompt, NEW)[0])


def test_a_failing_run_is_killed_with_its_workers(venv, run, tmp_path):
  bundle = main_lower(run, tmp_path / "program")
  manifest = json.loads((bundle / program.MANIFEST).read_text())
  mlgru = next(q for q in manifest["populations"] if q["kind"] == "mlgru")
  mlgru["params"]["sigma_bits"] = 40  # valid JSON, but the kernel refuses it inside Lava's run
  (bundle / program.MANIFEST).write_text(json.dumps(manifest))
  started = []
  with pytest.raises(RuntimeError, match=r"attn\.mlgru:\nTraceback[\s\S]*bits"):
    backend.run_lava(bundle, [1, 2, 3], 0, venv, timeout=120, on_start=started.append)
  assert not backend.group_alive(started[0].pid)
  with pytest.raises(RuntimeError, match="lava-loihi"):  # no chip here: a clear refusal
    backend.run_lava(bundle, [1], 0, venv, timeout=120, hardware=True)


def test_measure_cli_verifies_against_the_emulator(venv, run, tmp_path, capsys):
  bundle = main_lower(run, tmp_path / "program")
  main(["measure", str(bundle), "--backend", "lava", "--prompt", "The", "--max-new-tokens", "3",
        "--verify", "--venv", str(venv), "--out", str(tmp_path / "m.json")])  # fmt: skip
  assert "bit-exact with the emulator" in capsys.readouterr().out
  report = json.loads((tmp_path / "m.json").read_text())
  assert report["backend"] == "lava" and report["verified"] and len(report["new"]) == 3
  steps = report["tokens"]
  assert all(len(v["updates"]) == steps for v in report["per_step"].values())
  # the cost model on Lava's activity: the same prediction as on the emulator's
  main(["measure", str(bundle), "--prompt", "The", "--max-new-tokens", "3",
        "--out", str(tmp_path / "e.json")])  # fmt: skip
  emu = json.loads((tmp_path / "e.json").read_text())
  for key in ("generation", "prefill", "energy_mj_per_token", "neurobench"):
    assert report[key] == emu[key], key


def test_setup_without_python_310_says_what_to_install(tmp_path, monkeypatch):
  monkeypatch.setattr(backend, "PYTHON", "3.99")
  with pytest.raises(RuntimeError, match=r"needs Python 3\.99 .* install it"):
    backend.setup(tmp_path / "venv")
  assert not backend.venv_python(tmp_path / "venv").exists()
