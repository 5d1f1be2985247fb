"""The Loihi 2 cost model against hand-computed figures; energy follows activity; the fit."""

import json

import numpy as np
import pytest

from mmfree.loihi import cost, fit, hardware, mapping
from mmfree.loihi import program as pg

# Round constants, so every figure below can be computed by hand.
UNIT = {
  "time": {"synop": 1, "update": 10, "message": 100, "barrier": 1000, "barrier_hop": 10_000,
           "interchip": 100_000, "host": 0},
  "energy": {"synop": 1, "update": 2, "message": 3, "interchip": 4, "static": 5},
  "core.neurons": 3,  # a: cores [0, 3) [3, 4); b: [0, 3) [3, 6)
  "chip.cores": 2,  # a on chip 0, b on chip 1
}  # fmt: skip
HW = hardware.replace(hardware.DEFAULT, UNIT)
ACTIVITY = {"a": {"synops": 8, "messages": 6, "updates": 8},  # over 2 tokens
            "b": {"synops": 40, "messages": 4, "updates": 12}}  # fmt: skip


def _program() -> pg.Program:
  """host → a (4) → b (6) → host, every a→b weight ±1."""
  rng = np.random.default_rng(0)
  arrays = {
    "embed": np.eye(4, dtype=np.int8),
    "ab": rng.choice(np.array([-1, 1], np.int8), (4, 6)),
    "out": np.eye(6, dtype=np.int8),
  }
  P, S = pg.Population, pg.Synapses
  pops = (P("a", "rmsnorm", 4, 0, {}, {}, {}, 8), P("b", "bitlinear_in", 6, 1, {}, {}, {}, 8))
  syns = (S("embed", "host", "a", "x", 4, 4, 2, 0, "embed"),
          S("ab", "a", "b", "x", 4, 6, 2, 0, "ab"),
          S("out", "b", "host", "logits", 6, 6, 2, 0, "out"))  # fmt: skip
  io = {"embedding": "host", "sampling": "host", "lm_head": "chip"}
  return pg.Program(pg.VERSION, {}, {}, io, [], {}, [], pops, syns, arrays)


def _workload(activity=ACTIVITY) -> cost.Workload:
  p = _program()
  return cost.workload(p, mapping.place(p, HW), activity, tokens=2)


def test_hand_computed_prediction():
  w = _workload()
  assert w.chips == 2 and w.depth == (1, 2)
  # per token: a sends 3 messages, each routed to b's 2 cores, both on the other chip
  np.testing.assert_allclose(w.work["routed"], [4.5, 1.5, 0, 0])
  np.testing.assert_allclose(w.work["interchip"], [4.5, 1.5, 0, 0])
  np.testing.assert_allclose(w.work["synops"], [3, 1, 10, 10])  # a: by neurons (host fan-in)
  r = cost.predict(w, HW, prompts=(1, 3))
  barrier = 1000 + 1 * 10_000  # two chips: one hop
  level_a = (3 * 1 + 3 * 10 + 4.5 * 100) + 6 * 100_000 + barrier  # busiest core, chip 0's link
  level_b = (10 * 1 + 3 * 10) + barrier
  gen = level_a + level_b
  assert r["generation"]["ms_per_token"] == pytest.approx(1e3 * gen)
  assert r["generation"]["timesteps_per_token"] == 2
  assert r["prefill"]["us_per_timestep"] == pytest.approx(1e6 * level_a)  # a's core is busiest
  dynamic = 24 * 1 + 10 * 2 + 6 * 3 + 6 * 4  # synops, updates, routed, inter-chip per token
  assert r["energy_mj_per_token"]["dynamic"] == pytest.approx(1e3 * dynamic)
  assert r["generation"]["mj_per_token"] == pytest.approx(1e3 * (dynamic + 5 * 2 * gen))
  assert r["prefill"]["mj_per_token"] == pytest.approx(1e3 * (dynamic + 5 * 2 * level_a))
  assert r["ttft_ms"]["3"] == pytest.approx(1e3 * (2 * level_a + gen))
  nb = r["neurobench"]
  assert nb["activation_sparsity"] == pytest.approx(1 - 5 / 10)  # 5 messages of 10 outputs
  assert nb["dense_synops_per_token"] == 24 and nb["synops_per_token"] == 24
  layers = cost.by_layer(r["by_population"])
  assert [(x["layer"], x["cores"]) for x in layers] == [(0, 2), (1, 2)]
  assert sum(x["generation_us"] for x in layers) == pytest.approx(1e6 * gen)


def test_energy_moves_with_activity_alone():
  """Same program, mapping and constants: only the counted activity differs."""
  base = cost.predict(_workload(), HW)
  more = {**ACTIVITY, "a": {**ACTIVITY["a"], "messages": 10}}  # 2 more messages a token
  r = cost.predict(_workload(more), HW)
  d = r["energy_mj_per_token"]
  assert d["dynamic"] - base["energy_mj_per_token"]["dynamic"] == pytest.approx(
    1e3 * (4 * 3 + 4 * 4)  # each routed to 2 cores, across the chip boundary
  )
  assert r["generation"]["mj_per_token"] > base["generation"]["mj_per_token"]
  silent = {k: dict.fromkeys(v, 0) for k, v in ACTIVITY.items()}
  r0 = cost.predict(_workload(silent), HW)
  assert r0["energy_mj_per_token"]["dynamic"] == 0
  barriers = 2 * (1000 + 10_000)
  assert r0["generation"]["mj_per_token"] == pytest.approx(1e3 * 5 * 2 * barriers)


def test_workload_json_round_trip():
  w = _workload()
  back = cost.Workload.from_json(json.loads(json.dumps(w.to_json())))
  assert cost.predict(back, HW) == cost.predict(w, HW)
  with pytest.raises(ValueError, match=r"missing \['work'\]"):
    cost.Workload.from_json({k: v for k, v in w.to_json().items() if k != "work"})


@pytest.mark.parametrize("chips, hops", [(1, 0), (2, 1), (4, 2), (8, 4), (1152, 66)])
def test_mesh_hops(chips, hops):
  assert cost.mesh_hops(chips) == hops


def test_default_constants_have_sources_and_derivations():
  c = hardware.constants()
  assert c["time.synop"].value == pytest.approx(140_544 / 380e12)  # Hala Point per core
  assert c["time.update"].value == pytest.approx(140_544 / 240e12)
  # Hala Point's 2,600 W at both peak rates, split 23.6 : 81 (Loihi 1) between the two kinds
  e_s, e_n = c["energy.synop"].value, c["energy.update"].value
  assert 380e12 * e_s + 240e12 * e_n == pytest.approx(2600)
  assert e_n / e_s == pytest.approx(81 / 23.6)
  for name in ("time", "energy"):
    group = [k for k in c if k.startswith(name + ".")]
    assert group and all(c[k].source for k in group)
  labelled = [k for k in c if "assumption" in c[k].source or "Loihi 1 fallback" in c[k].source]
  assert {"energy.static", "energy.interchip", "time.barrier", "time.host"} <= set(labelled)


def test_toml_constants_file(tmp_path):
  path = tmp_path / "hw.toml"
  path.write_text('[time]\nsynop = 2e-9\n\n[energy.static]\nvalue = 0.5\nsource = "measured"\n')
  hw = hardware.load_overrides(path)
  assert hw.time.synop == hardware.Constant(2e-9, "s", f"override from {path}")
  assert hw.energy.static == hardware.Constant(0.5, "W", "measured")
  path.write_text("[time\n")
  with pytest.raises(ValueError, match="not valid TOML"):
    hardware.load_overrides(path)
  with pytest.raises(ValueError, match="energy.static must be a non-negative number of W"):
    hardware.replace(hardware.DEFAULT, {"energy.static": -1})


def _measured_run(tmp_path, name: str) -> tuple:
  """A run directory whose measure.json holds the test workload; the true constants' figures."""
  d = tmp_path / name
  (d / "program").mkdir(parents=True)
  (d / "config.json").write_text("{}")
  (d / "measure.json").write_text(json.dumps({"workload": _workload().to_json()}))
  truth = hardware.replace(HW, {"time.synop": 3.0, "energy.static": 7.0})
  return d, cost.predict(_workload(), truth)


def test_fit_recovers_constants_and_records_rows(tmp_path):
  d, true = _measured_run(tmp_path, "run")
  g, p = true["generation"], true["prefill"]
  rows = [{"run": "run", "tokens_per_s": g["tokens_per_s"], "mj_per_token": g["mj_per_token"]},
          {"run": "run", "phase": "prefill", "tokens_per_s": p["tokens_per_s"]}]  # fmt: skip
  (tmp_path / "rows.json").write_text(json.dumps(rows))
  base = tmp_path / "base.json"
  base.write_text(json.dumps(UNIT))
  out = tmp_path / "fitted.json"
  table = fit.fit_file(tmp_path / "rows.json", out, base=str(base))
  assert len(table) == 2
  saved = json.loads(out.read_text())
  assert saved["time.synop"]["value"] == pytest.approx(3.0, rel=1e-4)
  assert saved["energy.static"]["value"] == pytest.approx(7.0, rel=1e-4)
  assert saved["fit"]["rows"][0]["measured"]["tokens_per_s"] == g["tokens_per_s"]
  hw = hardware.load_overrides(out, base=HW)  # the record is not a constant
  got = cost.predict(_workload(), hw)["generation"]
  assert got["mj_per_token"] == pytest.approx(g["mj_per_token"], rel=1e-4)
  assert "fitted by `mmfree measure --fit" in hw.time.synop.source


@pytest.mark.parametrize(
  "rows, free, match",
  [
    ([{"run": "run", "tokens_per_s": 1.0}], fit.FREE, "1 measured figures cannot fix 2"),
    ([{"run": "run", "tokens_per_s": 1.0}], ("core.memory",), r"cannot fit \['core.memory'\]"),
    ([{"run": "run", "tokens_per_s": 1.0}], ("time.host",), "from zero"),
    ([{"run": "nowhere", "tokens_per_s": 1.0}], fit.FREE, "run `mmfree measure"),
    ([{"run": "run"}], fit.FREE, "needs a positive tokens_per_s"),
    ([{"run": "run", "tokens_per_s": 1.0, "phase": "decode"}], fit.FREE, "phase 'decode'"),
  ],
)
def test_fit_refuses_bad_rows(tmp_path, rows, free, match):
  _measured_run(tmp_path, "run")
  (tmp_path / "rows.json").write_text(json.dumps(rows))
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    fit.fit_file(tmp_path / "rows.json", tmp_path / "out.json", free)
