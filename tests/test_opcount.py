"""Operation counts by tracing the integer kernels: tracing changes no integer, dead code and folds
are left out, hand counts of `product` and the LIF reference, and the quant settings move counts."""

import dataclasses
import json

import numpy as np
import pytest

from mmfree.algorithms import lower
from mmfree.loihi import cost, emulate, mapping, measure, opcount, program
from mmfree.quant import calibrate
from mmfree.store.checkpoint import read_params

VARIANTS = {"base": {}, "lut32": {"lut_size": 32}, "relu": {"nonlinearity": "relu"},
            "floor": {"rounding": "floor"}, "act6": {"act_bits": 6}}  # fmt: skip


def _scales(run, qcfg) -> dict:
  """The scales `qcfg` chooses for the ranges the run's calibration observed."""
  stats = json.loads((run / "quant" / "stats.json").read_text())
  out = {k: calibrate.point_scale(k, st["observed"], qcfg)
         for k, st in stats.items()}  # fmt: skip
  return {k: v for k, v in out.items() if v is not None}


@pytest.fixture(scope="module")
def programs(calibrated_run):
  """The calibrated 2-layer model lowered with each variant of its QuantConfig (the saved
  scales; a variant of other widths has the scales it chooses for the same observed ranges)."""
  cfg, params = read_params(calibrated_run)
  qcfg, scales = calibrate.load(calibrated_run)
  base = dataclasses.replace(qcfg, lut_size=8, nonlinearity="silu", rounding="half_even")
  out = {}
  for name, kw in VARIANTS.items():
    q = dataclasses.replace(base, **kw)
    out[name] = lower.lower(params, cfg, q, _scales(calibrated_run, q) if "act_bits" in kw
                            else scales)  # fmt: skip
  return out


@pytest.fixture(scope="module")
def ops(programs):
  return {name: opcount.program_ops(p) for name, p in programs.items()}


class TracedEmulator(emulate.Emulator):
  """The emulator with every port and state a traced int32 input (the width `opcount` traces)."""

  def reset(self, batch: int):
    super().reset(batch)
    self.state = {k: opcount.traced(v) for k, v in self.state.items()}

  def _matmul(self, q, synapses):  # the synapses' work is not traced: a fresh input per port
    return opcount.traced(super()._matmul(np.asarray(q), synapses))


@pytest.mark.parametrize("variant", ["base", "floor"])
def test_tracing_changes_no_integer(programs, variant):
  prog = programs[variant]
  tokens = np.random.default_rng(0).integers(0, prog.model["vocab_size"], (2, 6))
  want = emulate.Emulator(prog).run(tokens, record=True)
  got = TracedEmulator(prog).run(tokens, record=True)
  assert isinstance(got.outputs["readout"], opcount.Traced)  # the trace reached the end
  for name, q in want.outputs.items():
    np.testing.assert_array_equal(np.asarray(got.outputs[name]), q, err_msg=name)
  np.testing.assert_array_equal(np.asarray(got.logits), want.logits)
  assert {k: list(v) for k, v in got.clips.items()} == {k: list(v) for k, v in want.clips.items()}
  assert want.clips  # the bookkeeping ran (its masks, traced, are dead code)
  for name, a in want.activity.items():
    assert {k: list(v) for k, v in got.activity[name].items()} == {
      k: list(v) for k, v in a.items()
    }, name


def test_dead_code_and_folds():
  x = opcount.traced(np.arange(-4, 4)[None])
  y = np.clip(x, -2, 2)
  mask = y != x  # bookkeeping: never reaches y
  assert opcount.count([y])["compare"] == 2 * 8
  assert opcount.count([y, mask])["compare"] == 3 * 8
  assert opcount.count([np.clip(x, -(2**31), 2)])["compare"] == 8  # int32's bound binds nothing
  assert sum(opcount.count([(x << 0) + 0, x * 1, x & -1]).values()) == 0  # identities
  assert not isinstance(x * 0, opcount.Traced)  # a constant
  taken = np.where(np.ones(8, bool), x + 1, x * 3)  # a constant choice: the other branch is dead
  assert opcount.count([taken]) == {**dict.fromkeys(opcount.OPS, 0), "add": 8}
  chosen = np.where(x > 0, x + 1, x * 3)  # on data: both branches and the select
  assert opcount.count([chosen])["select"] == 8 and opcount.count([chosen])["multiply"] == 8
  table = np.arange(9)
  read = opcount.NAMESPACE.take(table, x & 7)
  assert opcount.count([read])["lut"] == 8 and opcount.count([read])["lut_steps"] == 8 * 4
  s = np.sum(x, axis=-1, keepdims=True)
  assert opcount.count([s])["add"] == 7  # 8 values to one: 7 adds
  assert opcount.count([np.abs(x).max(axis=-1)]) == {**dict.fromkeys(opcount.OPS, 0),
                                                     "compare": 8 + 7}  # fmt: skip


def _product_by_hand(p: dict) -> dict:
  """`Emulator.product` read off the kernel: sat(mul_shift(a, b, e, 32, ...), out_bits). With
  h = min(e, 31 − a_bits) > 0: b & (2^h − 1), a·that, b >> h, a·that, p_lo >> h, their sum, then
  q = n >> (e − h) unless e = h. Half-even: r = ((n & (2^(e−h) − 1)) << h) + (p_lo & (2^h − 1))
  (only the second term when e = h), then up = (r > half) | ((r == half) & ((q & 1) == 1)) and
  q + up. The saturation to 32 bits is the identity in int32; to out_bits, two compares."""
  e = p["a_frac"] + p["b_frac"] - p["out_frac"]
  h = max(0, min(e, 31 - p["a_bits"]))
  assert e > 0 and h > 0
  ops = {"add": 2, "multiply": 2, "shift": 2 + (e > h), "compare": 2}
  if p["rounding"] == "half_even":
    ops["add"] += 1 + 2 * (e > h) + 4
    ops["shift"] += e > h
    ops["compare"] += 3
  return ops


@pytest.mark.parametrize("variant", ["base", "floor"])
def test_product_equals_a_hand_count(programs, ops, variant):
  prog = programs[variant]
  gated = [q for q in prog.populations if q.kind == "product"]
  assert gated
  for pop in gated:
    want = {**dict.fromkeys(opcount.OPS, 0), **_product_by_hand(pop.params)}
    assert ops[variant][pop.name] == want, pop.name


def test_quant_settings_move_counts(programs, ops):
  def by_kind(variant, key=None):
    out = {}
    for pop in programs[variant].populations:
      o = ops[variant][pop.name]
      out.setdefault(pop.kind, []).append(opcount.instructions(o) if key is None else o[key])
    return out

  base, lut32 = by_kind("base"), by_kind("lut32")
  for kind in ("mlgru", "glu"):
    assert by_kind("lut32", "lut_steps")[kind] > by_kind("base", "lut_steps")[kind]
    assert lut32[kind] > base[kind]
    assert by_kind("relu")[kind] < base[kind]
  assert by_kind("relu", "lut")["glu"] == [0.0] * len(base["glu"])  # ReLU reads no table
  floor = by_kind("floor")
  for kind in base:  # half-even rounding adds its remainder tests everywhere
    assert all(f < b for f, b in zip(floor[kind], base[kind], strict=True)), kind
  # σ table of 8 segments (9 entries: 4 steps) or 32 (33: 6): mlgru reads it 6 times, glu twice
  assert set(by_kind("base", "lut_steps")["glu"]) == {2 * 4}
  assert set(by_kind("lut32", "lut_steps")["glu"]) == {2 * 6}


def test_every_kind_gets_a_count(programs, ops):
  prog = programs["base"]
  assert {q.kind for q in prog.populations} == set(program.KINDS)
  for pop in prog.populations:
    o = ops["base"][pop.name]
    assert opcount.instructions(o) > 0, pop.name
    assert o["state_read"] == o["state_write"] == len(pop.state_bits)
  one = prog.populations[4]
  assert opcount.kernel_ops(prog, one.name) == ops["base"][one.name]


def test_lif_reference_equals_a_hand_count():
  # u − (u·δu >> 12) + x: multiply, shift, 2 adds; v − (v·δv >> 12) + u + bias: multiply, shift,
  # 3 adds; v > θ: a compare; the reset: a select; u and v: read and written once each
  want = {"add": 5, "multiply": 2, "shift": 2, "compare": 1, "select": 1, "lut": 0,
          "lut_steps": 0, "state_read": 2, "state_write": 2}  # fmt: skip
  assert opcount.lif_ops() == want
  assert opcount.LIF_INSTRUCTIONS == 15


def test_kinds_move_time_and_energy_at_fixed_sparsity(programs):
  """LUT size, nonlinearity and activation width each move the predicted time and energy per
  token with the activity (every synop, message and update count) held at the base program's."""
  base = programs["base"]
  tokens = np.random.default_rng(1).integers(0, base.model["vocab_size"], (1, 8))
  totals = measure.activity_totals(emulate.Emulator(base).run(tokens))
  r = {}
  for name in ("base", "lut32", "relu", "act6"):
    w = cost.workload(programs[name], mapping.place(programs[name]), totals, tokens.shape[1])
    r[name] = cost.predict(w, prompts=())
  for name in ("lut32", "relu", "act6"):  # the same activity (memory follows the microcode)
    for k in ("synops_per_token", "processed_synops_per_token", "messages_per_token"):
      assert r[name]["neurobench"][k] == r["base"]["neurobench"][k], (name, k)

  def moved(name, part):
    """(generation time's change, dynamic energy's change) of `part` against the base."""
    g, e = r[name]["generation"]["ms_by_part"], r[name]["energy_mj_per_token"]
    g0, e0 = r["base"]["generation"]["ms_by_part"], r["base"]["energy_mj_per_token"]
    return np.sign(g[part] - g0[part]), np.sign(e[part] - e0[part])

  assert moved("lut32", "updates") == (1, 1)  # a longer σ table search: more instructions
  assert moved("relu", "updates") == (-1, -1)  # no table at all
  assert moved("act6", "messages") == (-1, -1)  # 6-bit graded spikes: narrower messages
  for name in ("lut32", "relu", "act6"):
    assert r[name]["generation"]["ms_per_token"] != r["base"]["generation"]["ms_per_token"]
    assert r[name]["generation"]["mj_per_token"] != r["base"]["generation"]["mj_per_token"]
