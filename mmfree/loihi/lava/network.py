"""A bundle as a Lava process graph, and its run: the prompt, then greedy generation.

Graph: `HostIn` → `Dense` (identity: the embedding into the first norm and the first residual) →
one `Neurons` process per population, with a `Dense` process per synapse group (weights 2·w with
weight_exp −1: Lava's Dense drops the lowest bit of mixed-sign 8-bit weights, and this encoding
keeps ternary and int8 weights exact) and a direct connection from each per-token BitLinear input's
exponent port to its targets. Depths: a Dense adds one timestep, a direct connection none; each
population computes the token that entered `depth` timesteps earlier, and every port waits until
its inputs line up (`plan`).
"""

import dataclasses
import time
from pathlib import Path

import numpy as np

from mmfree.loihi import bundle_io, emulate, program
from mmfree.loihi.program import HOST, Program

ERROR = "error.txt"  # a failed neuron model's traceback, in the work directory


@dataclasses.dataclass(frozen=True)
class Plan:
  depth: dict  # population -> timesteps after its token entered
  delays: dict  # population -> {port or e_port: timesteps it waits}
  fracs: dict  # population -> {port: Q format} for ports without an exponent port
  exponents: dict  # population -> ports whose exponent it sends (per-token BitLinear inputs)

  @property
  def pipeline(self) -> int:
    return max(self.depth.values())


def plan(p: Program, embed_frac: int) -> Plan:
  """Depths and per-port delays; refuses a port whose inputs would arrive at different times."""
  depth, delays, fracs, exps = {HOST: 0, **p.depths()}, {}, {}, {}
  for pop in p.populations:
    arrive = {}
    for s in p.fan_in(pop.name):
      t = depth[s.source] + 1  # Dense: one timestep later
      if arrive.setdefault(s.port, t) != t:
        raise ValueError(f"{pop.name}: port {s.port!r} sums inputs of different depths")
      source = p.population(s.source) if s.source != HOST else None
      frac = embed_frac if source is None else emulate.out_frac(source)
      if frac is None:  # a per-token exponent, straight from the source
        arrive[f"e_{s.port}"] = depth[s.source]
        exps.setdefault(s.source, []).append((pop.name, s.port))
      else:
        fracs.setdefault(pop.name, {})[s.port] = frac
    delays[pop.name] = {port: depth[pop.name] - t for port, t in arrive.items()}
  del depth[HOST]
  exps = {k: list(dict.fromkeys(v)) for k, v in exps.items()}
  return Plan(depth, delays, {q.name: fracs.get(q.name, {}) for q in p.populations}, exps)


@dataclasses.dataclass
class Run:
  new: np.ndarray  # [N] greedy continuation
  logits: np.ndarray  # [steps, V] float32
  outputs: dict  # population or HOST -> int64 [steps, n]
  seconds: dict  # build (graph), run (compile included), timesteps run


class _Records:
  """The files the processes read and write: host rows and valid flags in, outputs by token out."""

  def __init__(self, prog: Program, work: Path, timesteps: int):
    self.work = work
    H = prog.arrays[program.EMBEDDING].shape[1]
    self.rows_path, self.valid_path = str(work / "host_in.npy"), str(work / "valid.npy")
    self.rows = np.lib.format.open_memmap(self.rows_path, "w+", np.int32, (timesteps, H))
    self.valid = np.lib.format.open_memmap(self.valid_path, "w+", np.int8, (timesteps,))
    (work / "out").mkdir(exist_ok=True)
    self.base = {q.name: str(work / "out" / str(k)) for k, q in enumerate(prog.populations)}
    self.out, self.e = {}, {}
    for q in prog.populations:
      b = self.base[q.name]
      self.out[q.name] = np.lib.format.open_memmap(f"{b}.npy", "w+", np.int64, (timesteps, q.size))
      self.e[q.name] = np.lib.format.open_memmap(f"{b}.e.npy", "w+", np.int64, (timesteps,))
    self.flush()

  def flush(self):
    for a in (self.rows, self.valid, *self.out.values(), *self.e.values()):
      a.flush()

  def enter(self, entry: int, row: np.ndarray):
    self.rows[entry - 1], self.valid[entry - 1] = row, 1
    self.rows.flush()
    self.valid.flush()

  def msg(self, pop, entry: int) -> emulate.Msg:
    frac = emulate.out_frac(pop)
    if frac is None:
      frac = -np.asarray([[self.e[pop.name][entry - 1]]], np.int64)
    return emulate.Msg(np.asarray(self.out[pop.name][entry - 1])[None], frac)


def _build(prog: Program, pl: Plan, bundle: Path, rec: _Records) -> dict:
  from lava.proc.dense.process import Dense

  from mmfree.loihi.lava.process import HostIn, Neurons

  H = prog.arrays[program.EMBEDDING].shape[1]
  procs = {HOST: HostIn(n=H, path=rec.rows_path)}
  for q in prog.populations:
    procs[q.name] = Neurons(n=q.size, bundle=str(bundle), name=q.name, depth=pl.depth[q.name],
                            delays=pl.delays[q.name], fracs=pl.fracs[q.name],
                            valid=rec.valid_path, out=rec.base[q.name],
                            error=str(rec.work / ERROR))  # fmt: skip
  for s in prog.synapses:
    if s.target == HOST:
      continue  # the host's lm_head: applied by the host to the recorded messages
    w_OxI = np.asarray(prog.weights(s.name), np.int32).T * 2  # exact under Dense's truncation
    dense = Dense(weights=w_OxI, weight_exp=-1, num_message_bits=24, name=s.name)
    (procs[s.source].s_out if s.source == HOST else procs[s.source].y).connect(dense.s_in)
    dense.a_out.connect(getattr(procs[s.target], s.port))
  for source, targets in pl.exponents.items():
    for target, port in targets:
      procs[source].e.connect(getattr(procs[target], f"e_{port}"))
  return procs


def _config(hardware: bool):
  from lava.magma.core.run_configs import Loihi2HwCfg, Loihi2SimCfg

  if not hardware:
    return Loihi2SimCfg(select_tag="fixed_pt")
  from lava.utils import loihi

  if not loihi.is_installed():
    raise RuntimeError(
      "--hardware needs Intel's lava-loihi extension (INRC members), which is not importable in "
      "this environment: run without --hardware for Lava's fixed-point simulation"
    )
  return Loihi2HwCfg()


def run(bundle: Path, tokens: list[int], max_new_tokens: int, work: Path,
        hardware: bool = False) -> Run:  # fmt: skip
  """The prompt `tokens` through the bundle in Lava, then `max_new_tokens` greedy tokens, each
  entering once its predecessor has left the pipeline (the chip's generation)."""
  from lava.magma.core.run_conditions import RunSteps

  t0 = time.perf_counter()
  prog = bundle_io.load(bundle)
  host = emulate.Emulator(prog)  # the host's part: embedding rows in, the lm_head when it is host's
  host.reset(1)  # the host's sender state, under sigma-delta block inputs
  pl = plan(prog, host.embed_fmt[0])
  T, D = len(tokens), pl.pipeline
  rec = _Records(prog, work, T + D + max(max_new_tokens - 1, 0) * (D + 1))
  procs = _build(prog, pl, bundle, rec)
  cfg = _config(hardware)
  head = (prog.population("readout") if prog.io["lm_head"] == "chip" else
          prog.population(next(s.source for s in prog.synapses if s.target == HOST)))  # fmt: skip
  built, run_s, done = time.perf_counter(), 0.0, 0
  entries, new, rows = [], [], []  # rows: the host's embedding rows, before its levers

  def advance(batch: list[int]):
    nonlocal done, run_s
    for tok in batch:
      entries.append(done + 1 if not entries or entries[-1] <= done else entries[-1] + 1)
      rows.append(host.embed([tok]).q)
      rec.enter(entries[-1], host.send(HOST, rows[-1])[0])
    t1 = time.perf_counter()
    procs[HOST].run(condition=RunSteps(num_steps=entries[-1] + D - done), run_cfg=cfg)
    run_s += time.perf_counter() - t1
    done = entries[-1] + D

  def logits(entry: int) -> np.ndarray:
    return host.logits({head.name: rec.msg(head, entry)})[0]

  advance(list(tokens))
  while len(new) < max_new_tokens:
    new.append(int(logits(entries[-1]).argmax()))
    if len(new) < max_new_tokens:  # the last new token is sampled, never fed
      advance([new[-1]])
  procs[HOST].stop()
  idx = np.asarray(entries) - 1
  outputs = {name: np.asarray(r[idx]) for name, r in rec.out.items()}
  outputs[HOST] = np.concatenate(rows).astype(np.int64)
  return Run(np.asarray(new, np.int64), np.stack([logits(e) for e in entries]), outputs,
             {"build": built - t0, "run": run_s, "timesteps": done})  # fmt: skip
