"""Lowering and the emulator: a trained, calibrated model's program gives the `hw` model's
integers at every population, its logits and its generated tokens, with exact activity counts."""

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mmfree
from mmfree.algorithms import lower
from mmfree.cli import main
from mmfree.core import files
from mmfree.data.sources import DataConfig, load_data
from mmfree.loihi import bundle_io, emulate, hardware, mapping, program, ranges
from mmfree.quant import calibrate
from mmfree.quant.points import Probe, recorder, set_hw, set_probe
from mmfree.store.checkpoint import build_model, read_params

sys.path.insert(0, str(Path(__file__).parent))  # the lava-nc wheel owns the name `tests`
import design_space as ds  # noqa: E402

T = 64


@pytest.fixture(scope="module")
def run(calibrated_run):
  return calibrated_run


@pytest.fixture(scope="module")
def text():
  return np.asarray(load_data(DataConfig(tokenizer="byte")).val_N[: 2 * T]).reshape(2, T)


def _hw_values(run_dir, tokens_BxT):
  cfg, params = read_params(run_dir)
  model = build_model(cfg.replace(precision="hw"), params)
  set_hw(model, *calibrate.load(run_dir))
  set_probe(model, Probe("values"))
  (logits, _), rec = nnx.jit(recorder(lambda m, t: m(t)))(model, jnp.asarray(tokens_BxT))
  return np.asarray(logits), {k: np.asarray(v[0], np.float64) for k, v in rec.items()}


BRANCHES = ("attn.o_proj.bitlinear_out", "mlp.down_proj.bitlinear_out")  # feed the residuals


def _narrow_branch_outputs(run_dir: Path):
  """Narrower bitlinear_out formats before the residual adds (22 bits: ±1.0 here), so the
  BitLinear's own saturation matters before the branch's point."""
  path = run_dir / files.QUANT / "scales.json"
  scales = json.loads(path.read_text())
  for key in scales:
    if key.endswith(BRANCHES):
      scales[key]["bits"] = 22
  path.write_text(json.dumps(scales))


@pytest.mark.parametrize("policy", ["per_token", "static", "clipped_branches"])
def test_emulator_equals_hw_at_every_population(run, text, tmp_path, policy):
  run_dir = run
  if policy == "static":  # a copy of the run, calibrated with static BitLinear input scales
    run_dir = Path(shutil.copytree(run, tmp_path / "static"))
    main(["quantize", "calibrate", str(run_dir), "--batches", "4", "--seq-len", "32",
          "--quant.bitlinear_input=static"])  # fmt: skip
  if policy == "clipped_branches":
    run_dir = Path(shutil.copytree(run, tmp_path / "clipped"))
    _narrow_branch_outputs(run_dir)
  bundle = lower.lower_run(run_dir, tmp_path / "program")
  prog = bundle_io.load(bundle)
  result = emulate.Emulator(prog).run(text, record=True)
  logits, rec = _hw_values(run_dir, text)
  _, scales = calibrate.load(run_dir)
  L = prog.model["num_hidden_layers"]
  pairs = ds.outputs_by_point(L)
  assert len(pairs) == 7 * L + L - 1 + 1
  for pop, key in pairs.items():
    got = result.outputs[pop]
    assert np.any(got != 0), pop
    np.testing.assert_array_equal(got, rec[key] / scales[key].scale, err_msg=pop)
  np.testing.assert_array_equal(result.logits, logits)
  if policy == "clipped_branches":  # the narrow formats did clip
    clipped = [k for k in rec if k.endswith(BRANCHES) and np.abs(rec[k]).max() >= scales[k].scale
               * (2 ** (scales[k].bits - 1) - 1)]  # fmt: skip
    assert clipped, "no branch output reached its bound"
  # what another backend needs: each population's message format, and activity from its outputs
  emu = emulate.Emulator(prog)
  emu.reset(2)
  for pop, m in emu.step(text[:, 0])[0].items():
    if pop != program.HOST and (f := emulate.out_frac(prog.population(pop))) is not None:
      assert f == m.frac, pop
  recount = emu.activity(result.outputs)
  for pop, counts in result.activity.items():
    for k, v in counts.items():
      np.testing.assert_array_equal(recount[pop][k], v, err_msg=f"{pop} {k}")
  # mutation: one weight flipped in the first MLGRU's input gate changes what the emulator says
  w = prog.arrays["layers.0.attn.i_proj.weight"]
  w_mut = np.array(w)
  w_mut[0, 0] = 1 - abs(int(w_mut[0, 0]))
  mutated = emulate.Emulator(_replace_array(prog, "layers.0.attn.i_proj.weight", w_mut))
  assert not np.array_equal(mutated.run(text, record=True).outputs["layers.0.attn.mlgru"],
                            result.outputs["layers.0.attn.mlgru"])  # fmt: skip


def _replace_array(prog, key, a):
  return dataclasses.replace(prog, arrays={**prog.arrays, key: a})


def test_generation_and_activity(run, text, tmp_path):
  prog = bundle_io.load(lower.lower_run(run, tmp_path / "program", lm_head="host"))
  emu = emulate.Emulator(prog)
  lm = mmfree.load(run, precision="hw")
  new = emu.run(text[:, :16], 12).new
  np.testing.assert_array_equal(new, lm.generate(text[:, :16], 12, temperature=0,
                                                 stop_at_eos=False))  # fmt: skip
  result = emu.run(text[:, : T // 2], record=True)
  # synaptic operations counted independently: non-zero inputs times the non-zero weights of
  # their rows, over the MLGRU's two fan-in groups
  syn = 0
  for proj in ("f_proj", "i_proj"):
    x = result.outputs[f"layers.1.attn.{proj}.in"]
    nnz_row = np.count_nonzero(prog.weights(f"layers.1.attn.{proj}"), axis=1)
    syn += ((x != 0) * nnz_row).sum(axis=(0, 2))
  act = result.activity["layers.1.attn.mlgru"]
  np.testing.assert_array_equal(act["synops"], syn)
  out = result.outputs["layers.1.attn.mlgru"]
  np.testing.assert_array_equal(act["messages"], np.count_nonzero(out, axis=(0, 2)))
  assert (act["updates"] == 2 * prog.population("layers.1.attn.mlgru").size).all()
  # the lowered weights are the model's ternary weights; the mapping places every population
  w_q, _ = lm_weight(run, "layers.0.mlp.down_proj")
  np.testing.assert_array_equal(prog.weights("layers.0.mlp.down_proj"), w_q)
  placed = mapping.place(prog)
  assert {c.population for c in placed.cores} == {q.name for q in prog.populations}


def lm_weight(run_dir, path):
  cfg, params = read_params(run_dir)
  model = build_model(cfg, params)
  module = dict((".".join(map(str, k)), m) for k, m in nnx.iter_modules(model))[path]
  return (np.asarray(a) for a in module.quantized_weight())


def test_lower_cli_and_refusals(run, tmp_path, capsys):
  main(["lower", str(run), "--out", str(tmp_path / "b")])
  out = capsys.readouterr().out
  assert "populations" in out and "| **total** |" in out and "zero" in out
  main(["emulate", str(tmp_path / "b"), "--prompt", "The", "--max-new-tokens", "5"])
  saved = json.loads((tmp_path / "b" / "emulate.json").read_text())
  assert len(saved["new"]) == 5 and saved["tokens"] == len(saved["prompt"]) + 4
  assert (
    saved["per_token"]["updates"] == bundle_io.summary(bundle_io.load(tmp_path / "b"))["neurons"]
  )
  uncalibrated = shutil.copytree(run, tmp_path / "nq", ignore=shutil.ignore_patterns("quant"))
  with pytest.raises(SystemExit, match="mmfree quantize calibrate"):
    main(["lower", str(uncalibrated)])
  free = shutil.copytree(run, tmp_path / "free")
  main(["quantize", "calibrate", str(free), "--batches", "1", "--seq-len", "16",
        "--quant.scale=free", "--quant.rmsnorm=float"])  # fmt: skip
  with pytest.raises(SystemExit, match="quant.scale='pow2'"):
    main(["lower", str(free)])


def test_static_range_check(run, tmp_path):
  prog = bundle_io.load(lower.lower_run(run, tmp_path / "program"))
  rows = {(r["population"], r["value"]): r for r in prog.ranges}
  # independently: 8-bit inputs (−128 at worst) times ±1 over the most non-zeros into one neuron
  nnz = int(np.count_nonzero(prog.weights("layers.0.attn.f_proj"), axis=0).max())
  f_sum = rows[("layers.0.attn.mlgru", "f (fan-in sum)")]
  assert (f_sum["bits"], f_sum["width"]) == ((128 * nnz).bit_length() + 1, 24)
  acc_m = rows[("layers.0.attn.mlgru", "f.acc*m")]
  m = prog.population("layers.0.attn.mlgru").params["f_m"]
  assert acc_m["bits"] == (128 * nnz * m).bit_length() + 1 <= 32
  assert not ranges.failures(prog.ranges)
  assert rows[("layers.1.attn.mlgru", "state h")]["saturates"]  # the design saturates there
  narrow = hardware.replace(hardware.DEFAULT, {"formats.spike_bits": 12})
  with pytest.raises(ValueError, match=r"mlgru: f \(fan-in sum\) needs \d+ bits, holds 12"):
    ranges.require(ranges.check(prog, narrow))
