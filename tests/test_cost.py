"""The Loihi 2 cost model against hand-computed figures; energy follows activity (the fit of its
constants: test_fit.py)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mmfree.loihi import cost, hardware

sys.path.insert(0, str(Path(__file__).parent))  # the lava-nc wheel owns the name `tests`
import two_pops  # noqa: E402

# Round constants, so every figure below can be computed by hand.
UNIT = {
  "time": {"synop": 1, "update": 10, "message": 100, "barrier": 1000, "barrier_hop": 10_000,
           "interchip": 100_000, "host": 0, "idle": 0},
  "energy": {"synop": 1, "update": 2, "message": 3, "interchip": 4, "static": 5, "idle": 0,
             "host": 0},
  "formats.header_bits": 8,  # 8-bit spikes: a message moves twice a header-only one
  "core.neurons": 3,  # a: cores [0, 3) [3, 4); b: [0, 3) [3, 6)
  "chip.cores": 2,  # a on chip 0, b on chip 1
}  # fmt: skip
HW = hardware.replace(hardware.DEFAULT, UNIT)
ACTIVITY = {"a": {"synops": 8, "messages": 6, "updates": 8},  # over 2 tokens
            "b": {"synops": 40, "messages": 4, "updates": 12}}  # fmt: skip


def _workload(activity=ACTIVITY) -> cost.Workload:
  p = two_pops.program(4, 6)
  return cost.workload(p, two_pops.place(p, HW), activity, tokens=2)


def test_hand_computed_prediction():
  w = _workload()
  assert w.chips == 2 and w.depth == (1, 2)
  # per token: a sends 3 messages, each routed to b's 2 cores, both on the other chip
  np.testing.assert_allclose(w.work["routed"], [4.5, 1.5, 0, 0])
  np.testing.assert_allclose(w.work["interchip"], [4.5, 1.5, 0, 0])
  np.testing.assert_allclose(w.work["synops"], [3, 1, 10, 10])  # a: by neurons (host fan-in)
  r = cost.predict(w, HW, prompts=(1, 3))
  barrier = 1000 + 1 * 10_000  # two chips: one hop
  level_a = (3 * 1 + 3 * 10 + 2 * 4.5 * 100) + 2 * 6 * 100_000 + barrier  # busiest core, link
  level_b = (10 * 1 + 3 * 10) + barrier
  gen = level_a + level_b
  assert r["generation"]["ms_per_token"] == pytest.approx(1e3 * gen)
  parts = r["generation"]["ms_by_part"]  # a's and b's busiest cores, chip 0's link, 2 barriers
  assert parts == pytest.approx({"synops": 1e3 * (3 + 10), "updates": 1e3 * (30 + 30),
                                 "messages": 1e3 * 900, "idle": 0, "chip_links": 1e3 * 1_200_000,
                                 "barrier": 1e3 * 2 * barrier, "host": 0})  # fmt: skip
  assert sum(parts.values()) == pytest.approx(r["generation"]["ms_per_token"])
  assert r["generation"]["timesteps_per_token"] == 2
  assert r["prefill"]["us_per_timestep"] == pytest.approx(1e6 * level_a)  # a's core is busiest
  dynamic = 24 * 1 + 10 * 2 + 2 * 6 * 3 + 2 * 6 * 4  # synops, updates, routed, inter-chip
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
    1e3 * 2 * (4 * 3 + 4 * 4)  # each routed to 2 cores, across the chip boundary, 2 headers
  )
  assert r["generation"]["mj_per_token"] > base["generation"]["mj_per_token"]
  silent = {k: dict.fromkeys(v, 0) for k, v in ACTIVITY.items()}
  r0 = cost.predict(_workload(silent), HW)
  assert r0["energy_mj_per_token"]["dynamic"] == 0
  barriers = 2 * (1000 + 10_000)
  assert r0["generation"]["mj_per_token"] == pytest.approx(1e3 * 5 * 2 * barriers)


def test_dense_groups_process_their_zero_weights():
  """A dense group charges every stored weight of a sending source, zeros included."""
  p = two_pops.program(4, 6)
  p.arrays["ab"][:, :3] = 0  # half of a→b's weights zero: still dense at 2 bits
  m = two_pops.place(p, HW)
  assert m.encodings["ab"] == "dense"
  w = cost.workload(p, m, ACTIVITY, tokens=2)
  # b's counted 20 synops a token, plus 3 messages of a, each meeting 6 − 12/4 zero weights
  assert w.work["synops"][2:].sum() == pytest.approx(20 + 3 * 3)


def test_workload_json_round_trip():
  w = _workload()
  back = cost.Workload.from_json(json.loads(json.dumps(w.to_json())))
  assert cost.predict(back, HW) == cost.predict(w, HW)
  with pytest.raises(ValueError, match=r"missing \['work'\]"):
    cost.Workload.from_json({k: v for k, v in w.to_json().items() if k != "work"})


@pytest.mark.parametrize("chips, hops", [(1, 0), (2, 1), (4, 2), (8, 4), (1152, 66)])
def test_mesh_hops(chips, hops):
  assert cost.mesh_hops(chips) == hops


def test_idle_updates_width_and_host():
  """Idle neurons slow a timestep and cost energy; wider spikes cost more; the host apart."""
  hw = hardware.replace(HW, {"time": {"idle": 1000, "host": 0.5}, "energy": {"idle": 7, "host": 3}})
  base, r = cost.predict(_workload(), HW), cost.predict(_workload(), hw)
  # generation: 2 levels, each core's 3 or 1 (a) / 3 and 3 (b) neurons idle in the other level
  assert r["energy_mj_per_token"]["idle_generation"] == pytest.approx(1e3 * 10 * 1 * 7)
  # each level's timestep: the longest of its busiest working core and the others' idle time
  # (3 neurons · 1000 s on a's first and both of b's cores), plus link and barrier
  links_barrier = 2 * 6 * 100_000 + 11_000
  level_a = max(3 * 1 + 3 * 10 + 2 * 4.5 * 100, 3 * 1000) + links_barrier
  level_b = max(10 * 1 + 3 * 10, 3 * 1000) + 11_000
  gen = level_a + level_b
  assert r["generation"]["ms_per_token"] == pytest.approx(1e3 * (gen + 0.5))
  assert r["host"] == {"ms_per_token": 500.0, "mj_per_token": 1500.0,
                       "share_of_generation_time": pytest.approx(0.5 / (gen + 0.5))}  # fmt: skip
  assert r["prefill"] == {**base["prefill"]}  # every level busy: nobody idles
  wide = hardware.replace(HW, {"formats.header_bits": 4})  # 8-bit payload: 3 headers, not 2
  d0, d1 = base["energy_mj_per_token"], cost.predict(_workload(), wide)["energy_mj_per_token"]
  assert d1["messages"] == pytest.approx(1.5 * d0["messages"])
  assert d1["interchip"] == pytest.approx(1.5 * d0["interchip"])


def test_default_constants_have_sources_tiers_and_the_system_ceiling():
  c = hardware.constants()
  assert c["time.synop"].value == pytest.approx(140_544 / 380e12)  # Hala Point per core
  assert c["time.update"].value == pytest.approx(140_544 / 240e12)
  # Hala Point's ceiling: dynamic energy at both peak rates plus every chip's static power stays
  # within its 2,600 W maximum (the per-operation energies exclude static power).
  e_s, e_n, static = c["energy.synop"].value, c["energy.update"].value, c["energy.static"].value
  assert 380e12 * e_s + 240e12 * e_n + 1152 * static <= 2600 * (1 + 1e-9)
  assert e_n / e_s == pytest.approx(81 / 23.6)  # Loihi 1's proportions
  assert 0.2118 <= static <= 0.2148  # the measured Loihi 2 board's range
  assert c["time.barrier"].value == pytest.approx(1.164e-6)  # measured empty timesteps
  for k, v in c.items():
    assert v.source and v.tier in hardware.TIERS and v.tier not in ("override", "fitted"), k
  tiers = {k: v.tier for k, v in c.items()}
  assert tiers["energy.static"] == tiers["time.barrier"] == "measured"
  assert {tiers[k] for k in ("energy.interchip", "time.host", "energy.host")} == {"assumption"}
  assert tiers["time.barrier_hop"] == tiers["time.message"] == "loihi1"
  # Loihi 1's simulated 23.6 pJ per synop alone would break the ceiling at Hala Point's rate.
  assert 380e12 * 23.6e-12 > 2600


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
