"""Loihi 2 latency, throughput and energy of a program, from its mapping and observed activity.

The model (spec/loihi2.md, "The cost model"; constants in `hardware.py`):
- Activity per token is what the emulator or Lava counted on real tokens, per population, plus
  the zero weights a dense synapse group processes for every message it receives. A
  population's cores share it: synaptic operations by their stored fan-in synapses (by neurons
  where all fan-in comes from the host), updates and messages by their neurons (assumption:
  activity is even over a population's neurons).
- A message is routed once to every core holding one of its targets; those on other chips also
  cross a chip link.
- A message of a b-bit graded spike moves header + b bits: its time and energy are a header-only
  spike's times (1 + b / header_bits), on chip and across chip links.
- A neuron update of a kind costs its instructions per update (`opcount`, traced from the
  kind's integer kernel) over a LIF neuron's (`opcount.LIF_INSTRUCTIONS`) times a LIF update's
  time and energy: the per-update constants are LIF figures. A core runs its microcoded neurons
  one after another (measured on Loihi 2), so its update time is the sum over its neurons.
- A core's work per token: synops·t_synop + updates·(instructions / LIF's)·t_update + routed
  messages·t_message. A timestep lasts as long as its busiest core, plus its busiest chip link,
  plus the barrier (the measured timestep floor, plus a hop time per chip-to-chip hop across
  the near-square mesh).
- Idle updates: in a timestep where a neuron has no input it still updates, at the idle cost
  (time per neuron on its core, energy per neuron). In generation a token passes one level per
  timestep, so every neuron idles in every level but its own; in prefill every level is busy.
  The idle cost is one per neuron whatever its kind (assumption: a neuron without input skips
  its program; Loihi 1's inactive-update figures).
- Generation: a token passes the pipeline alone, one timestep per depth level, each as long as that
  level's busiest core; then the host samples. Prefill streams a token per timestep once the
  pipeline is full, every level busy at once. TTFT(P) = (P - 1) prefill timesteps + one pass.
- Energy per token: Σ activity × energy per operation, idle updates, plus static power × chips ×
  time per token. The host's work (embedding lookup, sampling) has its own time and power,
  reported apart: Intel's benchmarks leave the host outside the power boundary.
"""

import dataclasses
import math

import numpy as np

from mmfree.loihi import hardware, opcount
from mmfree.loihi.mapping import Mapping
from mmfree.loihi.program import HOST, Program, is_skip

KINDS = ("synops", "updates", "routed", "interchip")  # the work a core does per token
PROMPTS = (1, 16, 64, 128, 256, 500, 1024, 2048)  # prompt lengths of the TTFT scaling


@dataclasses.dataclass(frozen=True)
class Workload:
  """A mapped program's work per token, per core: all the cost model needs (plain data)."""

  populations: tuple  # names, in program order
  layers: tuple  # block index per population (None: model-level)
  depth: tuple  # timesteps after the host, per population
  core_population: np.ndarray  # [C] index into populations
  core_chip: np.ndarray  # [C]
  core_neurons: np.ndarray  # [C]
  work: dict  # KINDS name -> float64 [C], per token
  messages: np.ndarray  # [P] graded spikes sent per token, per population (before routing)
  message_bits: tuple  # payload bits of each population's graded spikes
  instructions: tuple  # microcode instructions per neuron update, per population
  neurons: int
  synapses: int  # non-zero ternary weights on chip
  dense_synops: int  # per token, were every weight and message non-zero
  effective_synops: float  # per token, non-zero weight × non-zero message (the counted ones)
  memory_bytes: int  # synapse and state memory on chip
  tokens: int  # tokens the activity was observed on

  @property
  def chips(self) -> int:
    return int(self.core_chip.max()) + 1

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["work"] = {k: v.tolist() for k, v in self.work.items()}
    for k in ("core_population", "core_chip", "core_neurons", "messages"):
      d[k] = d[k].tolist()
    return d

  @classmethod
  def from_json(cls, d: dict) -> "Workload":
    names = {f.name for f in dataclasses.fields(cls)}
    missing = sorted(names - set(d))
    if missing:
      raise ValueError(f"workload: missing {missing}: rerun `mmfree measure` to rewrite it")
    d = {**d, "work": {k: np.asarray(d["work"][k], np.float64) for k in KINDS}}
    d |= {k: tuple(d[k]) for k in ("populations", "layers", "depth", "message_bits",
                                   "instructions")}  # fmt: skip
    d |= {k: np.asarray(d[k], np.int64) for k in ("core_population", "core_chip", "core_neurons")}
    return cls(**{**d, "messages": np.asarray(d["messages"], np.float64)})


def workload(program: Program, mapping: Mapping, activity: dict, tokens: int) -> Workload:
  """`activity`: {population: {"synops"|"messages"|"updates": total over `tokens` tokens}}."""
  names = [q.name for q in program.populations]
  missing = sorted(set(names) - set(activity))
  if missing:
    raise ValueError(f"activity has no counts for populations {missing[:5]}: measure the bundle")
  index = {n: i for i, n in enumerate(names)}
  pop_C = np.array([index[c.population] for c in mapping.cores])
  chip_C = np.array([c.chip for c in mapping.cores])
  stored_C = np.array([c.synapses + c.skips for c in mapping.cores], np.float64)
  neurons_C = np.array([c.neurons for c in mapping.cores], np.float64)
  per_token = {k: np.array([activity[n][k] for n in names], np.float64) / tokens
               for k in ("synops", "messages", "updates")}  # fmt: skip
  effective = float(per_token["synops"].sum())
  per_token["synops"] += _dense_zeros(program, mapping, index, per_token["messages"])
  stored_P, neurons_P = np.zeros(len(names)), np.zeros(len(names))
  np.add.at(stored_P, pop_C, stored_C)
  np.add.at(neurons_P, pop_C, neurons_C)
  neuron_share = neurons_C / neurons_P[pop_C]
  # Synapses from the host (the embedding's) are not stored on chip: share those by neurons.
  syn_share = np.where(stored_P[pop_C] > 0, stored_C / np.maximum(stored_P[pop_C], 1), neuron_share)
  sent_C = per_token["messages"][pop_C] * neuron_share
  dest, off_chip = _destinations(program, pop_C, chip_C)
  t, depth = mapping.totals(), program.depths()
  return Workload(
    populations=tuple(names),
    layers=tuple(q.layer for q in program.populations),
    depth=tuple(depth[n] for n in names),
    core_population=pop_C,
    core_chip=chip_C,
    core_neurons=neurons_C.astype(np.int64),
    work={
      "synops": per_token["synops"][pop_C] * syn_share,
      "updates": per_token["updates"][pop_C] * neuron_share,
      "routed": sent_C * dest[pop_C],
      "interchip": sent_C * off_chip,
    },
    messages=per_token["messages"],
    message_bits=tuple(q.out_bits for q in program.populations),
    instructions=tuple(float(mapping.instructions[n]) for n in names),
    neurons=t["neurons"],
    synapses=t["synapses"],
    dense_synops=sum(  # a skip connection is one add per neuron, not an n × n product
      (s.n_out if is_skip(s) else s.n_in * s.n_out)
      for s in program.synapses
      if HOST not in (s.source, s.target)
    ),
    memory_bytes=t["synapse_bytes"] + t["state_bytes"] + t["microcode_bytes"],
    effective_synops=effective,
    tokens=tokens,
  )


def _dense_zeros(program: Program, mapping: Mapping, index: dict, messages_P) -> np.ndarray:
  """[P] synaptic operations on zero weights per token: a dense group processes every stored
  weight of a sending source (measured on Loihi 2: dense connections do not cull zeros), while
  the counted activity has the non-zero ones. Each message is taken to meet its group's mean
  row of non-zero weights (activity even over sources)."""
  extra = np.zeros(len(index))
  for s in program.synapses:
    if mapping.encodings.get(s.name) == "dense":
      zeros = s.n_out - program.nnz(s.name) / s.n_in  # per message: stored − mean non-zero
      extra[index[s.target]] += messages_P[index[s.source]] * zeros
  return extra


def _destinations(program: Program, pop_C: np.ndarray, chip_C: np.ndarray):
  """(cores each population's messages go to [P], of those the ones off each core's chip [C])."""
  index = {q.name: i for i, q in enumerate(program.populations)}
  dest = np.zeros(len(index))
  off_chip = np.zeros(len(pop_C))
  for s in program.synapses:
    if HOST in (s.source, s.target):
      continue
    target_chips = chip_C[pop_C == index[s.target]]
    dest[index[s.source]] += len(target_chips)
    src = pop_C == index[s.source]
    off_chip[src] += (target_chips[None, :] != chip_C[src][:, None]).sum(1)
  return dest, off_chip


def mesh_hops(chips: int) -> int:
  """Chip-to-chip hops across a near-square mesh of `chips` (its diameter)."""
  a = math.isqrt(chips)
  return (a - 1) + (math.ceil(chips / a) - 1)


def _headers(w: Workload, hw: hardware.Hardware) -> dict:
  """{"routed", "interchip"}: each core's messages per token in header-only spikes, a b-bit
  spike costing (1 + b / header_bits) of them, [C] each."""
  bits_C = np.asarray(w.message_bits, np.float64)[w.core_population]
  width_C = 1 + bits_C / hw.formats.header_bits.value
  return {k: w.work[k] * width_C for k in ("routed", "interchip")}


def lif_updates(w: Workload) -> np.ndarray:
  """Each core's neuron updates per token in LIF updates: × instructions / LIF's, [C]."""
  scale_C = np.asarray(w.instructions, np.float64)[w.core_population] / opcount.LIF_INSTRUCTIONS
  return w.work["updates"] * scale_C


def _core_parts(w: Workload, hw: hardware.Hardware, headers: dict, lif_C: np.ndarray) -> dict:
  """Each core's time per token by kind of work, [C] each."""
  t = hw.time
  return {"synops": w.work["synops"] * t.synop.value, "updates": lif_C * t.update.value,
          "messages": headers["routed"] * t.message.value}  # fmt: skip


def _step_parts(w: Workload, hw: hardware.Hardware, cores: np.ndarray, parts: dict,
                core_s: np.ndarray, idle_C: np.ndarray, link_C: np.ndarray) -> dict:  # fmt: skip
  """One timestep in which `cores` (a mask) work and the others idle, by what sets its length:
  the busiest working core (its synops, updates, messages) or the longest idle one, the busiest
  chip link, the barrier."""
  links = np.zeros(w.chips)
  np.add.at(links, w.core_chip[cores], link_C[cores])
  out = dict.fromkeys((*parts, "idle"), 0.0)
  busy = int(np.argmax(np.where(cores, core_s, -1.0))) if cores.any() else None
  idle = idle_C[~cores].max(initial=0.0)
  if busy is not None and core_s[busy] >= idle:
    out.update({k: float(v[busy]) for k, v in parts.items()})
  else:
    out["idle"] = float(idle)
  out["chip_links"] = float(links.max() * hw.time.interchip.value)
  out["barrier"] = hw.time.barrier.value + mesh_hops(w.chips) * hw.time.barrier_hop.value
  return out


def predict(w: Workload, hw: hardware.Hardware = hardware.DEFAULT, prompts=PROMPTS) -> dict:
  """Throughput, latency and energy per token; breakdowns per population and layer."""
  headers, lif_C = _headers(w, hw), lif_updates(w)
  parts = _core_parts(w, hw, headers, lif_C)
  core_s = sum(parts.values())
  step = (parts, core_s, w.core_neurons * hw.time.idle.value, headers["interchip"])
  depth_C = np.asarray(w.depth)[w.core_population]
  levels = sorted(set(w.depth))
  level_parts = {d: _step_parts(w, hw, depth_C == d, *step) for d in levels}
  level_s = {d: sum(p.values()) for d, p in level_parts.items()}
  host_s = hw.time.host.value
  gen_s = sum(level_s.values()) + host_s
  prefill_parts = _step_parts(w, hw, np.ones(len(core_s), bool), *step)
  prefill_s = sum(prefill_parts.values())
  gen_parts = {k: 1e3 * sum(p[k] for p in level_parts.values()) for k in prefill_parts}
  joules_C = _core_joules(w, hw, headers, lif_C)
  dynamic = {k: float(v.sum()) for k, v in joules_C.items()}
  # every neuron idles in every generation timestep but its own level's
  idle_j = float(w.core_neurons.sum()) * (len(levels) - 1) * hw.energy.idle.value
  static_w = hw.energy.static.value * w.chips
  dyn_j = sum(dynamic.values())
  pass_s = gen_s - host_s
  host_mj = 1e3 * hw.energy.host.value * host_s
  return {
    "generation": {
      "tokens_per_s": 1 / gen_s,
      "ms_per_token": 1e3 * gen_s,
      "mj_per_token": 1e3 * (dyn_j + idle_j + static_w * gen_s),
      "timesteps_per_token": len(levels),
      "ms_by_part": {**gen_parts, "host": 1e3 * host_s},  # what sets each timestep's length
    },
    "prefill": {
      "tokens_per_s": 1 / prefill_s,
      "us_per_timestep": 1e6 * prefill_s,
      "us_by_part": {k: 1e6 * v for k, v in prefill_parts.items()},
      "mj_per_token": 1e3 * (dyn_j + static_w * prefill_s),
    },
    "energy_mj_per_token": {
      **{k: 1e3 * v for k, v in dynamic.items()},
      "dynamic": 1e3 * dyn_j,
      "idle_generation": 1e3 * idle_j,
      "static_generation": 1e3 * static_w * gen_s,
      "static_prefill": 1e3 * static_w * prefill_s,
    },
    "host": {
      "ms_per_token": 1e3 * host_s,
      "mj_per_token": host_mj,
      "share_of_generation_time": host_s / gen_s,
    },  # fmt: skip
    "ttft_ms": {
      str(p): 1e3 * ((p - 1) * prefill_s + pass_s + host_s) for p in prompts
    },  # fmt: skip
    "neurobench": neurobench(w),
    "updates": {"per_token": float(w.work["updates"].sum()), "lif_per_token": float(lif_C.sum())},
    "resources": {
      "chips": w.chips,
      "cores": len(core_s),
      "neurons": w.neurons,
      "synapses": w.synapses,
      "memory_bytes": w.memory_bytes,
    },  # fmt: skip
    "by_population": _by_population(w, sum(joules_C.values()), core_s, level_s),
  }


def neurobench(w: Workload) -> dict:
  """NeuroBench-style figures per token: effective synaptic operations (and those processed,
  dense groups' zero weights included), dense ones, activation sparsity (the share of neuron
  outputs that sent nothing), memory footprint."""
  updates = w.work["updates"].sum()
  return {
    "synops_per_token": w.effective_synops,
    "processed_synops_per_token": float(w.work["synops"].sum()),  # dense groups' zeros too
    "dense_synops_per_token": w.dense_synops,
    "activation_sparsity": float(1 - w.messages.sum() / updates) if updates else 0.0,
    "messages_per_token": float(w.messages.sum()),
    "memory_bytes": w.memory_bytes,
  }


def _core_joules(w: Workload, hw: hardware.Hardware, headers: dict, lif_C: np.ndarray) -> dict:
  """Dynamic energy per core and token, by operation kind."""
  e = hw.energy
  return {
    "synops": w.work["synops"] * e.synop.value,
    "updates": lif_C * e.update.value,
    "messages": headers["routed"] * e.message.value,
    "interchip": headers["interchip"] * e.interchip.value,
  }


def _by_population(w: Workload, joules: np.ndarray, core_s, level_s: dict) -> list[dict]:
  """Each population's dynamic energy and busiest core; its level's timestep in generation."""
  rows = []
  for i, name in enumerate(w.populations):
    mine = w.core_population == i
    rows.append({
      "population": name, "layer": w.layers[i], "depth": w.depth[i], "cores": int(mine.sum()),
      "instructions": w.instructions[i],
      "dynamic_uj": 1e6 * float(joules[mine].sum()),
      "busiest_core_us": 1e6 * float(core_s[mine].max()),
      "level_us": 1e6 * float(level_s[w.depth[i]]),
    })  # fmt: skip
  return rows


def by_layer(rows: list[dict]) -> list[dict]:
  """Per block (None: model-level): cores, dynamic energy, and generation time, each level's
  timestep charged to the layer of its busiest population."""
  out = {}
  level_owner = {}
  for r in rows:
    best = level_owner.get(r["depth"])
    if best is None or r["busiest_core_us"] > best["busiest_core_us"]:
      level_owner[r["depth"]] = r
  for r in rows:
    t = out.setdefault(r["layer"], {"layer": r["layer"], "cores": 0, "dynamic_uj": 0.0,
                                    "generation_us": 0.0})  # fmt: skip
    t["cores"] += r["cores"]
    t["dynamic_uj"] += r["dynamic_uj"]
  for r in level_owner.values():
    out[r["layer"]]["generation_us"] += r["level_us"]
  return list(out.values())
