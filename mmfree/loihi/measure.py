"""Measurement: a bundle run on real tokens (emulator or Lava), its activity through the cost model.

`mmfree emulate` and `mmfree measure` (and their stages in `mmfree run`) report through here:
`emulate.json` holds the tokens, the emulator's speed and the activity per population;
`measure.json` in the run directory (the bundle's own directory when it has no run) holds the
activity, the Loihi 2 prediction, the workload it came from and the constants it used.
"""

import dataclasses
from pathlib import Path

from mmfree.core.files import CONFIG, MEASURE, PROGRAM
from mmfree.loihi import backend as backends
from mmfree.loihi import bundle_io, cost, emulate, hardware, mapping, opcount, program


def load_constants(path: str | Path | None) -> hardware.Hardware:
  return hardware.load_overrides(path) if path else hardware.DEFAULT


def bundle_of(path) -> Path:
  """A bundle directory, or a run directory's `program/`."""
  path = Path(path)
  if not (path / program.MANIFEST).is_file() and (path / PROGRAM).is_dir():
    return path / PROGRAM
  return path


def report_path(bundle: Path) -> Path:
  """measure.json beside the run the bundle was lowered from, else inside the bundle."""
  run = Path(bundle).parent
  return (run if (run / CONFIG).is_file() else Path(bundle)) / MEASURE


def run_bundle(bundle: Path, tokens: list[int], new_tokens: int, backend: str = "emulator",
               venv: Path = backends.VENV, timeout: float = 1800, chip: bool = False,
               verify: bool = False) -> tuple:  # fmt: skip
  """(emulate.Result, seconds) on `backend`; `verify` checks every integer against the emulator."""
  if backend == "lava":
    result, seconds = backends.run_lava(bundle, tokens, new_tokens, venv, timeout, chip)
  else:
    result, seconds = backends.run_emulator(bundle, tokens, new_tokens)
  if verify and backend != "emulator":
    ref, _ = backends.run_emulator(bundle, tokens, new_tokens)
    bad = backends.mismatches(result, ref)
    if bad:
      raise ValueError(f"{backend} differs from the emulator at: {', '.join(bad[:10])}")
    result.clips = ref.clips  # the same integers: the same clips
  return result, seconds


def activity_totals(result) -> dict:
  """{population: {kind: total over the run's tokens}}."""
  return {p: {k: int(v.sum()) for k, v in a.items()} for p, a in result.activity.items()}


def clip_report(result, steps: int) -> dict:
  """The clips a run counted: per token, by population and by the `hw` point they implement
  (the emulator counts them; a Lava run has them from its `--verify` emulator run)."""
  by_pop, by_point = {}, {}
  for (pop, point), n in sorted(result.clips.items()):
    by_pop[pop] = by_pop.get(pop, 0) + int(n.sum())
    by_point[point] = by_point.get(point, 0) + int(n.sum())
  return {"per_token": sum(by_pop.values()) / steps, "by_population": by_pop,
          "by_point": by_point}  # fmt: skip


def lever_report(result, steps: int) -> dict:
  """Per `hw` point with event-driven levers: its levers, and per token the messages its
  senders sent and those each lever removed."""
  by_point: dict = {}
  for sender, lv in result.levers.items():
    if sender not in result.activity:
      continue  # the host's: its messages are the chip's input, not counted as activity
    row = by_point.setdefault(lv["point"].rpartition(".")[2], {
      **{k: v for k, v in lv.items() if k != "point"}, "senders": 0,
      **dict.fromkeys(("messages", "removed_threshold", "removed_delta"), 0.0)})  # fmt: skip
    row["senders"] += 1
    for k in ("messages", "removed_threshold", "removed_delta"):
      row[k] += float(result.activity[sender][k].sum()) / steps
  return by_point


def emulate_report(result, seconds: dict, tokens: list[int]) -> dict:
  """`emulate.json`'s figures (one schema for `mmfree emulate` and the emulate stage): the
  prompt and new tokens, the emulator's speed, the activity per token and per population."""
  steps = result.logits.shape[1]
  totals = activity_totals(result)
  return {
    "prompt": [int(t) for t in tokens],
    "new": [int(t) for t in result.new[0]],
    "tokens": steps,
    "seconds": seconds,
    "tokens_per_s": steps / seconds["run"],
    "per_token": {k: sum(t[k] for t in totals.values()) / steps for k in emulate.ACTIVITY},
    "by_population": totals,
    "levers": lever_report(result, steps),
    "clips": clip_report(result, steps) if result.clips else None,  # Lava: with --verify
  }


def placements(prog, hw: hardware.Hardware, totals: dict, steps: int,
               done: tuple | None = None) -> list[dict]:  # fmt: skip
  """The prediction under every stored weight width and chip policy, on the same activity;
  `done` = (placement, its mapping, its prediction) is reused, not placed again, and its
  instruction counts are the others' too."""
  rows = []
  for weights in mapping.WEIGHTS:
    for policy in mapping.POLICIES:
      pl = mapping.Placement(weights, policy)
      if done is not None and pl == done[0]:
        m, p = done[1], done[2]
      else:
        m = mapping.place(prog, hw, pl, done and done[1].instructions)
        p = cost.predict(cost.workload(prog, m, totals, steps), hw, prompts=(500,))
      t = m.totals()
      rows.append({"weights": weights, "policy": policy, "chips": t["chips"],
                   "cores": t["cores"], "core_bounds": t["core_bounds"],
                   "chip_bounds": t["chip_bounds"], **{k: p["generation"][k] for k in (
                     "tokens_per_s", "mj_per_token")}, "ttft_500_ms": p["ttft_ms"]["500"],
                   "energy_mj_per_token": p["energy_mj_per_token"]})  # fmt: skip
  return rows


def measure(bundle: Path, tokens: list[int], new_tokens: int, constants: str | Path | None = None,
            placement: mapping.Placement | None = None, **run_kw) -> dict:  # fmt: skip
  """The report of `mmfree measure`: the run, its activity and the Loihi 2 prediction (under
  `placement`, and under every other placement in "placements")."""
  hw, placement = load_constants(constants), placement or mapping.Placement()
  prog = bundle_io.load(bundle)
  result, seconds = run_bundle(bundle, tokens, new_tokens, **run_kw)
  steps = result.logits.shape[1]  # every token the program consumed
  totals = activity_totals(result)
  ops = opcount.program_ops(prog)
  placed = mapping.place(prog, hw, placement, {n: opcount.instructions(o) for n, o in ops.items()})
  work = cost.workload(prog, placed, totals, steps)
  prediction = cost.predict(work, hw)
  return {
    "backend": run_kw.get("backend", "emulator"),
    "verified": bool(run_kw.get("verify")),
    "bundle": str(bundle),
    "prompt": [int(t) for t in tokens],
    "new": [int(t) for t in result.new[0]],
    "tokens": steps,
    "seconds": seconds,
    "per_token": {k: sum(t[k] for t in totals.values()) / steps for k in emulate.ACTIVITY},
    "levers": lever_report(result, steps),
    **prediction,
    "by_layer": cost.by_layer(prediction["by_population"]),
    "placement": dataclasses.asdict(placement),
    "bounds": {k: placed.totals()[k] for k in ("core_bounds", "chip_bounds")},
    "placements": placements(prog, hw, totals, steps, (placement, placed, prediction)),
    "kinds": kinds(prog, ops),
    "constants_file": str(constants or ""),
    "constants": {k: dataclasses.asdict(c) for k, c in hardware.constants(hw).items()},
    "workload": work.to_json(),
    "per_step": {q: {k: v.tolist() for k, v in a.items()} for q, a in result.activity.items()},
    "clips": clip_report(result, steps) if result.clips else None,  # Lava: with --verify
  }


def kinds(prog, ops: dict) -> dict:
  """Per neuron kind: its populations and their mean ops per neuron update by class (`opcount`),
  with the instructions they add up to and the share of a LIF update's."""
  out = {}
  for q in prog.populations:
    out.setdefault(q.kind, []).append(ops[q.name])
  return {kind: {"populations": len(rows),
                 **{k: sum(r[k] for r in rows) / len(rows) for k in opcount.OPS},
                 "instructions": sum(map(opcount.instructions, rows)) / len(rows),
                 "lif_updates": sum(map(opcount.instructions, rows)) / len(rows)
                 / opcount.LIF_INSTRUCTIONS}
          for kind, rows in out.items()}  # fmt: skip


def kind_table(r: dict) -> str:
  """Markdown: each neuron kind's ops per update, traced from its integer kernel."""
  cols = ("add", "multiply", "shift", "compare", "select", "lut", "lut_steps")
  lines = ["| kind | populations | " + " | ".join(cols) + " | state r/w | instructions | × LIF |",
           "|---|" + "---:|" * (len(cols) + 4)]  # fmt: skip
  for kind, k in r["kinds"].items():
    lines.append(f"| {kind} | {k['populations']} | " + " | ".join(f"{k[c]:.3g}" for c in cols)
                 + f" | {k['state_read'] + k['state_write']:.3g} | {k['instructions']:.1f} | "
                 f"{k['lif_updates']:.2f} |")  # fmt: skip
  return "\n".join(lines)


def table(r: dict) -> str:
  """Markdown: the prediction per token, then the constants' provenance in one line."""
  g, p, e, n = r["generation"], r["prefill"], r["energy_mj_per_token"], r["neurobench"]
  res = r["resources"]
  rows = [
    ("generation", f"{g['tokens_per_s']:,.1f} tokens/s", f"{g['mj_per_token']:.4g} mJ/token",
     f"{g['ms_per_token']:.3g} ms/token, {g['timesteps_per_token']} timesteps"),
    ("prefill", f"{p['tokens_per_s']:,.0f} tokens/s", f"{p['mj_per_token']:.4g} mJ/token",
     f"{p['us_per_timestep']:.3g} us/timestep"),
    ("TTFT, 500-token prompt", f"{r['ttft_ms']['500']:.3g} ms", "", ""),
    ("energy per token", f"dynamic {e['dynamic']:.3g} mJ, idle {e['idle_generation']:.3g} mJ",
     f"static {e['static_generation']:.3g} mJ (generation)",
     f"synops {e['synops']:.3g}, updates {e['updates']:.3g}, messages {e['messages']:.3g}, "
     f"inter-chip {e['interchip']:.3g} mJ"),
    ("host per token", f"{r['host']['ms_per_token']:.3g} ms",
     f"{r['host']['mj_per_token']:.3g} mJ (outside the chip's power boundary)",
     f"{r['host']['share_of_generation_time']:.1%} of generation time"),
    ("neuron updates per token", f"{r['updates']['per_token']:,.0f} updates",
     f"{r['updates']['lif_per_token']:,.0f} LIF updates' worth",
     "instructions per update traced from each kind's kernel (kinds table)"),
    ("activity per token", f"{n['synops_per_token']:,.0f} synops",
     f"{n['messages_per_token']:,.0f} messages",
     f"activation sparsity {n['activation_sparsity']:.1%}; dense synops "
     f"{n['dense_synops_per_token']:,}"),
    ("resources", f"{res['chips']} chips, {res['cores']} cores", f"{res['neurons']:,} neurons",
     f"{res['synapses']:,} synapses, {res['memory_bytes'] / 2**20:.2f} MiB"),
    ("placement", f"weights {r['placement']['weights']}, {r['placement']['policy']}",
     f"cores bound by {mapping.reasons(r['bounds']['core_bounds'])}",
     f"chips bound by {mapping.reasons(r['bounds']['chip_bounds'])}"),
  ]  # fmt: skip
  lines = ["| | | | |", "|---|---|---|---|", *("| " + " | ".join(row) + " |" for row in rows)]
  src = r["constants_file"] or "mmfree.loihi.hardware.DEFAULT (sources in each constant)"
  lines.append(f"\nactivity: {r['backend']} on {r['tokens']} tokens; constants: {src}")
  return "\n".join(lines)


def placement_table(r: dict) -> str:
  """Markdown: the prediction under each stored weight width and chip policy."""
  lines = ["| weights | placement | chips | cores | tokens/s | mJ/token | static mJ | dynamic mJ "
           "| idle mJ | TTFT 500 ms |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
  for x in r["placements"]:
    e = x["energy_mj_per_token"]
    lines.append(f"| {x['weights']} | {x['policy']} | {x['chips']} | {x['cores']} | "
                 f"{x['tokens_per_s']:,.1f} | {x['mj_per_token']:.4g} | "
                 f"{e['static_generation']:.3g} | {e['dynamic']:.3g} | "
                 f"{e['idle_generation']:.3g} | {x['ttft_500_ms']:.3g} |")  # fmt: skip
  return "\n".join(lines)


def layer_table(r: dict) -> str:
  """Markdown: cores, dynamic energy and generation time per block (model: the rest)."""
  lines = ["| layer | cores | dynamic uJ/token | generation us/token |", "|---|---:|---:|---:|"]
  for x in r["by_layer"]:
    name = "model" if x["layer"] is None else x["layer"]
    lines.append(f"| {name} | {x['cores']} | {x['dynamic_uj']:.4g} | {x['generation_us']:.4g} |")
  return "\n".join(lines)
