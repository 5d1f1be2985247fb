"""Placement on neuro-cores and chips, against hand-computed figures; hardware overrides."""

import json

import numpy as np
import pytest

from mmfree.loihi import hardware, mapping
from mmfree.loihi import program as pg

MEM = 128 * 1024  # the default core memory


def _ternary(rng, shape, zeros):
  w = rng.choice(np.array([-1, 1], np.int8), size=shape)
  return np.where(rng.random(shape) < zeros, 0, w).astype(np.int8)


def _program() -> pg.Program:
  """host → norm (4) → big (10000) → up (100) → sparse (50) → out (20) → host."""
  rng = np.random.default_rng(1)
  sparse = np.zeros((100, 50), np.int8)  # exactly 5 non-zeros per target: 95% zeros
  for j in range(50):
    sparse[rng.choice(100, 5, replace=False), j] = rng.choice([-1, 1], 5)
  arrays = {
    "embed": rng.integers(-128, 128, size=(10, 4)).astype(np.int8),
    "norm_big": _ternary(rng, (4, 10000), 1 / 3),
    "big_up": _ternary(rng, (10000, 100), 1 / 3),
    "up_sparse": sparse,
    "sparse_out": _ternary(rng, (50, 20), 1 / 3),
    "logits": np.eye(20, dtype=np.int8),
    "gain": rng.integers(-100, 101, size=50).astype(np.int32),  # 8 signed bits a neuron
  }
  P = pg.Population
  pops = (
    P("norm", "rmsnorm", 4, 0, {}, {}, {"s": 16}, 8),
    P("big", "bitlinear_in", 10000, 0, {}, {}, {"v": 8}, 8),
    P("up", "glu", 100, 1, {}, {}, {"v": 8}, 8),
    P("sparse", "product", 50, 1, {}, {"gain": "gain"}, {}, 8),
    P("out", "readout", 20, None, {}, {}, {}, 32),
  )
  S = pg.Synapses
  syns = (
    S("embed", "host", "norm", "x", 10, 4, 8, 0, "embed"),
    S("norm_big", "norm", "big", "x", 4, 10000, 2, 0, "norm_big"),
    S("big_up", "big", "up", "x", 10000, 100, 2, 0, "big_up"),
    S("up_sparse", "up", "sparse", "x", 100, 50, 2, 0, "up_sparse"),
    S("sparse_out", "sparse", "out", "x", 50, 20, 2, 0, "sparse_out"),
    S("logits", "out", "host", "logits", 20, 20, 2, 0, "logits"),
  )
  io = {"embedding": "host", "sampling": "host", "lm_head": "chip"}
  return pg.Program(pg.VERSION, {}, {}, io, [], {}, [], pops, syns, arrays)


def _place(p, hw=hardware.DEFAULT, placement=None, code=None):
  """`mapping.place` with the instructions per update of `code` ({population: n}; others 0):
  the synthetic kinds here have no kernel parameters to trace."""
  instructions = {q.name: 0 for q in p.populations} | (code or {})
  return mapping.place(p, hw, placement or mapping.Placement(), instructions)


def _cores(m, population):
  return [c for c in m.cores if c.population == population]


def test_hand_computed_placement():
  p = _program()
  m = _place(p)
  assert m.encodings == {
    "norm_big": "dense",  # 4·2 bits a target beats ~2.7 non-zeros · (2 + 2) bits
    "big_up": "dense",
    "up_sparse": "sparse",  # 5 · (2 + 7) bits a target beats 100 · 2
    "sparse_out": "dense",
  }
  assert [(c.population, c.start, c.stop) for c in m.cores] == [
    ("norm", 0, 4),
    ("big", 0, 8192),  # 2 B a neuron: the neuron limit binds
    ("big", 8192, 10000),
    ("up", 0, 52),  # 2500 B of fan-in + 1 B of state a neuron: 52 · 2501 ≤ 131072 < 53 · 2501
    ("up", 52, 100),
    ("sparse", 0, 50),
    ("out", 0, 20),
  ]
  bytes_ = [(c.synapse_bytes, c.state_bytes) for c in m.cores]
  assert bytes_ == [
    (0, 8),  # the host's embedding takes no core memory
    (8192, 8192),
    (1808, 1808),
    (52 * 2500, 52),
    (48 * 2500, 48),
    (-(-50 * (5 * 9 + 8) // 8), 50),  # 5 · (2 + 7) bits of sparse fan-in and an 8-bit row
    # pointer (250 non-zeros) a neuron; the gain's 8 bits of state
    (20 * 50 * 2 // 8, 0),
  ]
  big = _cores(m, "big")
  w = p.arrays["norm_big"]
  assert [c.synapses for c in big] == [np.count_nonzero(w[:, :8192]), np.count_nonzero(w[:, 8192:])]
  assert [c.weights for c in big] == [4 * 8192, 4 * 1808]
  assert {c.chip for c in m.cores} == {0}
  on_chip = ("norm_big", "big_up", "up_sparse", "sparse_out")
  nnz = sum(np.count_nonzero(p.arrays[k]) for k in on_chip)
  weights = sum(p.arrays[k].size for k in on_chip)
  t = m.totals()
  assert (t["cores"], t["chips"], t["neurons"]) == (7, 1, 4 + 10000 + 100 + 50 + 20)
  assert (t["synapses"], t["weights"]) == (nnz, weights)
  assert t["zero_share"] == pytest.approx(1 - nnz / weights)
  assert t["synapse_bytes"] == sum(s for s, _ in bytes_)
  assert t["core_bounds"] == {"population": 5, "neurons": 1, "memory": 1}
  assert t["chip_bounds"] == {"end": 1}


def test_eight_bit_storage_and_block_placement():
  """8-bit weights take 4× a ternary weight's memory in dense groups (and move sparse ones to
  dense when that is smaller); "block" starts each block on a chip of its own."""
  p = _program()
  m = _place(p, placement=mapping.Placement(weights="8bit"))
  assert m.encodings["up_sparse"] == "sparse"  # 5 · (8 + 7) + 8 bits beat 100 · 8
  assert [c.synapse_bytes for c in _cores(m, "big")] == [4 * 8192 * 8 // 8, 4 * 1808]
  up = _cores(m, "up")  # 10,000 · 8 bits + 1 B of state a neuron: 13 a core
  assert [c.stop - c.start for c in up][:2] == [13, 13] and len(up) == 8
  assert {c.bound for c in up[:-1]} == {"memory"} and up[-1].bound == "population"
  b = _place(p, placement=mapping.Placement(policy="block"))
  assert [c.chip for c in b.cores] == [0, 0, 0, 1, 1, 1, 2]  # layer 0, layer 1, model level
  assert b.totals()["chip_bounds"] == {"block": 2, "end": 1}
  small = hardware.replace(hardware.DEFAULT, {"chip.cores": 2})
  t = _place(p, small).totals()
  assert t["chips"] == 4 and t["chip_bounds"] == {"cores": 3, "end": 1}
  with pytest.raises(ValueError, match="placement weights='4bit'"):
    mapping.Placement(weights="4bit")


def test_skip_synapses_are_stored_but_not_ternary_weights():
  p = _program()
  skip = pg.Synapses("out.x" + pg.SKIP, "sparse", "up", "x", 50, 100, 2, 0, "skip")
  w = np.zeros((50, 100), np.int8)
  w[np.arange(50), np.arange(50)] = 1  # identity onto the first 50 neurons
  p = pg.Program(pg.VERSION, {}, {}, p.io, [], {}, [], p.populations, (*p.synapses, skip),
                 {**p.arrays, "skip": w})  # fmt: skip
  base, m = _place(_program()).totals(), _place(p)
  t = m.totals()
  assert (t["synapses"], t["weights"], t["skips"]) == (base["synapses"], base["weights"], 50)
  assert t["zero_share"] == base["zero_share"]
  assert t["synapse_bytes"] > base["synapse_bytes"]  # stored all the same
  assert "| **total** | " in mapping.report(m) and " 50 |" in mapping.report(m)


def test_by_layer_sums_to_totals():
  m = _place(_program())
  layers = m.by_layer()
  assert list(layers) == [0, 1, None]
  assert [t["cores"] for t in layers.values()] == [3, 2 + 1, 1]
  totals = m.totals()
  for f in ("cores", *mapping.SUMMED):
    assert sum(t[f] for t in layers.values()) == totals[f]
  report = mapping.report(m)
  assert "| 0 | 3 | 10,004 |" in report and "| model | 1 | 20 |" in report
  assert "| **total** | 7 |" in report and "Cores: 7, chips: 1 (weights stored min" in report
  assert "Cores bound by population 5, neurons 1, memory 1; chips bound by end 1" in report
  assert "`core.memory` = 131,072 bytes" in report


def test_chips():
  hw = hardware.replace(hardware.DEFAULT, {"chip": {"cores": 2}})
  m = _place(_program(), hw)
  assert [c.chip for c in m.cores] == [0, 0, 1, 1, 2, 2, 3]
  assert m.totals()["chips"] == 4
  hw = hardware.replace(hardware.DEFAULT, {"chip.neurons": 10000})
  assert [c.chip for c in _place(_program(), hw).cores] == [0, 0, 1, 1, 1, 1, 1]


def test_limits():
  hw = hardware.replace(hardware.DEFAULT, {"core.memory": 2000})
  with pytest.raises(
    ValueError,
    match=r"population 'up': neuron 0 alone needs 2500 B of fan-in "
    r"synapses and 1 B of state, more than the 2000 B a core keeps beside 0 B of microcode",
  ):
    _place(_program(), hw)
  hw = hardware.replace(hardware.DEFAULT, {"chip.neurons": 5000})
  with pytest.raises(
    ValueError, match=r"population 'big': one core's .* = \(1, 8192, \d+\) exceed"
  ):
    _place(_program(), hw)


def test_json_overrides_change_the_placement(tmp_path):
  path = tmp_path / "hw.json"
  path.write_text(
    json.dumps({"core": {"neurons": 4096}, "core.memory": {"value": 65536, "source": "measured"}})
  )
  hw = hardware.load_overrides(path)
  assert hw.core.neurons == hardware.Constant(4096, "neurons", f"override from {path}")
  assert hw.core.memory == hardware.Constant(65536, "bytes", "measured")
  assert hw.chip == hardware.DEFAULT.chip
  m = _place(_program(), hw)
  big, up = _cores(m, "big"), _cores(m, "up")
  assert [(c.start, c.stop) for c in big] == [(0, 4096), (4096, 8192), (8192, 10000)]
  assert [(c.start, c.stop) for c in up] == [(0, 26), (26, 52), (52, 78), (78, 100)]  # 26 · 2501
  assert "`core.memory` = 65,536 bytes (measured)" in mapping.report(m)
  # a 150-instruction program takes 600 B of each of up's cores: 25 neurons fit, not 26
  m = _place(_program(), hw, code={"up": 150})
  assert [c.stop - c.start for c in _cores(m, "up")] == [25, 25, 25, 25]
  assert {c.microcode_bytes for c in _cores(m, "up")} == {150 * 32 // 8}
  assert m.totals()["microcode_bytes"] == 4 * 600 and m.instructions["up"] == 150


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"core": {"neuron": 1}}, r"unknown hardware constants \['core.neuron'\]"),
    ({"cores_per_chip": 64}, r"unknown hardware constants \['cores_per_chip'\]"),
    ({"core.memory": {"value": 128, "unit": "KB"}}, r"core.memory is in bytes, got 'KB'"),
    ({"chip.cores": 0}, r"chip.cores must be a positive number"),
    ({"chip.cores": 1.5}, r"chip.cores counts whole neuro-cores"),
    ({"core.memory": {"value": 1, "note": "x"}}, r"an override has only value, unit, source"),
  ],
)
def test_bad_overrides(tmp_path, overrides, match):
  path = tmp_path / "hw.json"
  path.write_text(json.dumps(overrides))
  with pytest.raises(ValueError, match=match) as e:
    hardware.load_overrides(path)
  assert str(path) in str(e.value)


def test_constants_have_units_and_sources():
  consts = hardware.constants()
  assert list(consts)[:2] == ["core.neurons", "core.memory"]
  assert all(c.unit and c.source for c in consts.values())
  assert consts["core.memory"].value == hardware.CORE_SRAM_128KB.value == MEM
  assert hardware.CORE_SRAM_192KB.value == 192 * 1024
  assert "assumption" in consts["core.memory"].source
  assert (consts["chip.cores"].value, consts["chip.neurons"].value) == (128, 1_000_000)
  assert consts["systems.hala_point"].value == 1152
  with pytest.raises(FileNotFoundError, match="no such hardware overrides file"):
    hardware.load_overrides("/nonexistent/hw.json")
