"""Measurement: a bundle run on real tokens (emulator or Lava), its activity through the cost model.

The `lower`, `emulate` and `measure` stages of `mmfree run` live here, as does `mmfree measure`'s
report: `measure.json` in the run directory (the bundle's own directory when it has no run) holds
the activity, the Loihi 2 prediction, the workload it came from and the constants it used.
"""

import dataclasses
import hashlib
import time
from pathlib import Path

import numpy as np

from mmfree.files import read_json, write_json
from mmfree.loihi import backend as backends
from mmfree.loihi import bundle_io, cost, emulate, hardware, mapping, program

MEASURE, EMULATE = "measure.json", "emulate.json"
BACKENDS = ("emulator", "lava")


@dataclasses.dataclass(frozen=True)
class LoihiConfig:
  """The lower, emulate and measure stages of `mmfree run`."""

  lm_head: str = "chip"  # chip | host
  backend: str = "emulator"  # emulator | lava (activity counted on this backend's integers)
  constants: str = ""  # a hardware constants file (JSON or TOML); "" = hardware.DEFAULT
  check_tokens: int = 64  # held-out tokens of the emulate stage's check against the `hw` model
  measure_tokens: int = 64  # held-out tokens of the measured prompt
  new_tokens: int = 8  # then greedy generation

  def __post_init__(self):
    if self.lm_head not in program.IO["lm_head"]:
      raise ValueError(f"loihi.lm_head={self.lm_head!r}: expected one of {program.IO['lm_head']}")
    if self.backend not in BACKENDS:
      raise ValueError(f"loihi.backend={self.backend!r}: expected one of {BACKENDS}")
    for name in ("check_tokens", "measure_tokens"):
      if getattr(self, name) < 1:
        raise ValueError(f"loihi.{name}={getattr(self, name)}: must be at least 1")
    if self.new_tokens < 0:
      raise ValueError(f"loihi.new_tokens={self.new_tokens}: must be 0 or more")


def load_constants(path: str | Path | None) -> hardware.Hardware:
  return hardware.load_overrides(path) if path else hardware.DEFAULT


def bundle_of(path) -> Path:
  """A bundle directory, or a run directory's `program/`."""
  from mmfree.loihi import lower

  path = Path(path)
  if not (path / program.MANIFEST).is_file() and (path / lower.PROGRAM).is_dir():
    return path / lower.PROGRAM
  return path


def report_path(bundle: Path) -> Path:
  """measure.json beside the run the bundle was lowered from, else inside the bundle."""
  run = Path(bundle).parent
  return (run if (run / "config.json").is_file() else Path(bundle)) / MEASURE


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
  return result, seconds


def activity_totals(result) -> dict:
  """{population: {kind: total over the run's tokens}}."""
  return {p: {k: int(v.sum()) for k, v in a.items()} for p, a in result.activity.items()}


def measure(bundle: Path, tokens: list[int], new_tokens: int, constants: str | Path | None = None,
            **run_kw) -> dict:  # fmt: skip
  """The report of `mmfree measure`: the run, its activity and the Loihi 2 prediction."""
  hw = load_constants(constants)
  prog = bundle_io.load(bundle)
  result, seconds = run_bundle(bundle, tokens, new_tokens, **run_kw)
  steps = result.logits.shape[1]  # every token the program consumed
  totals = activity_totals(result)
  work = cost.workload(prog, mapping.place(prog, hw), totals, steps)
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
    **prediction,
    "by_layer": cost.by_layer(prediction["by_population"]),
    "constants_file": str(constants or ""),
    "constants": {k: dataclasses.asdict(c) for k, c in hardware.constants(hw).items()},
    "workload": work.to_json(),
    "per_step": {q: {k: v.tolist() for k, v in a.items()} for q, a in result.activity.items()},
  }


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
    ("energy per token", f"dynamic {e['dynamic']:.3g} mJ",
     f"static {e['static_generation']:.3g} mJ (generation)",
     f"synops {e['synops']:.3g}, updates {e['updates']:.3g}, messages {e['messages']:.3g}, "
     f"inter-chip {e['interchip']:.3g} mJ"),
    ("activity per token", f"{n['synops_per_token']:,.0f} synops",
     f"{n['messages_per_token']:,.0f} messages",
     f"activation sparsity {n['activation_sparsity']:.1%}; dense synops "
     f"{n['dense_synops_per_token']:,}"),
    ("resources", f"{res['chips']} chips, {res['cores']} cores", f"{res['neurons']:,} neurons",
     f"{res['synapses']:,} synapses, {res['memory_bytes'] / 2**20:.2f} MiB"),
  ]  # fmt: skip
  lines = ["| | | | |", "|---|---|---|---|", *("| " + " | ".join(row) + " |" for row in rows)]
  src = r["constants_file"] or "mmfree.loihi.hardware.DEFAULT (sources in each constant)"
  lines.append(f"\nactivity: {r['backend']} on {r['tokens']} tokens; constants: {src}")
  return "\n".join(lines)


def layer_table(r: dict) -> str:
  """Markdown: cores, dynamic energy and generation time per block (model: the rest)."""
  lines = ["| layer | cores | dynamic uJ/token | generation us/token |", "|---|---:|---:|---:|"]
  for x in r["by_layer"]:
    name = "model" if x["layer"] is None else x["layer"]
    lines.append(f"| {name} | {x['cores']} | {x['dynamic_uj']:.4g} | {x['generation_us']:.4g} |")
  return "\n".join(lines)


def held_out(exp, run_dir: Path, n: int) -> list[int]:
  """The first `n` held-out tokens, tokenized as the run's model reads them."""
  from mmfree.evaluate import load_model_data
  from mmfree.run import data_config
  from mmfree.train import checkpoint

  vocab = checkpoint.model_config(run_dir).vocab_size
  val = np.asarray(load_model_data(data_config(exp), run_dir, vocab).val_N)
  if len(val) < n:
    raise ValueError(f"the held-out text has {len(val)} tokens; loihi.*_tokens asks for {n}")
  return val[:n].tolist()


def stage_lower(exp, run_dir: Path):
  """`RUN/program/`, unless it is there from this calibration and lm_head placement."""
  from mmfree.loihi import lower

  bundle = run_dir / lower.PROGRAM
  if _is_current(bundle, run_dir, exp.loihi.lm_head):
    return
  lower.lower_run(run_dir, bundle, exp.loihi.lm_head)
  s = bundle_io.summary(bundle_io.load(bundle))
  print(f"lower: {s['populations']} populations, {s['neurons']:,} neurons -> {bundle}")


def _is_current(bundle: Path, run_dir: Path, lm_head: str) -> bool:
  from mmfree.quant import calibrate

  scales = run_dir / calibrate.QUANT / "scales.json"
  try:
    prog = bundle_io.load(bundle)
  except (FileNotFoundError, ValueError):
    return False
  quant = calibrate.saved_config(run_dir).to_dict()
  sha = program.provenance("", quant)["quant_sha256"]
  newer = (bundle / program.MANIFEST).stat().st_mtime >= scales.stat().st_mtime
  return prog.provenance["quant_sha256"] == sha and prog.io["lm_head"] == lm_head and newer


def stage_emulate(exp, run_dir: Path):
  """`emulate.json`: the emulator's logits on held-out text equal the `hw` model's, bit for bit."""
  import mmfree
  from mmfree.loihi import lower

  bundle = run_dir / lower.PROGRAM
  stamp = _stamp(bundle)
  if stamp and (read_json(run_dir / EMULATE) or {}).get("program") == stamp:
    return
  tokens = held_out(exp, run_dir, exp.loihi.check_tokens)
  t0 = time.perf_counter()
  got = emulate.Emulator(bundle_io.load(bundle)).run([tokens]).logits
  seconds = time.perf_counter() - t0
  want = np.asarray(mmfree.load(run_dir, "hw").logits(np.asarray([tokens])))
  if not np.array_equal(got, want):
    bad = np.argwhere(got != want)
    raise ValueError(
      f"emulator logits differ from the `hw` model's at {len(bad)} of {got.size} values (first "
      f"at token {bad[0][1]}): the program and the model disagree; rerun `mmfree lower`"
    )
  rate = len(tokens) / seconds
  write_json(run_dir / EMULATE, {"program": _stamp(bundle), "tokens": len(tokens),
                                 "bit_exact": True, "tokens_per_s": rate})  # fmt: skip
  print(f"emulate: logits bit-exact with the `hw` model on {len(tokens)} held-out tokens "
        f"({rate:.0f} tokens/s)")  # fmt: skip


def _stamp(bundle: Path) -> str:
  """Which program a result belongs to: its creation time (it changes when lowered again)."""
  return (read_json(bundle / program.MANIFEST) or {}).get("provenance", {}).get("created")


def stage_measure(exp, run_dir: Path):
  """`measure.json` from held-out tokens through the program on `loihi.backend`."""
  from mmfree.loihi import lower

  bundle, c = run_dir / lower.PROGRAM, exp.loihi
  old = read_json(run_dir / MEASURE) or {}
  # the constants file's content, not just its name: an edited file is another measurement
  text = Path(c.constants).read_bytes() if c.constants else b""
  wanted = {"program": _stamp(bundle), "loihi": dataclasses.asdict(c),
            "constants_sha256": hashlib.sha256(text).hexdigest()}  # fmt: skip
  if {k: old.get(k) for k in wanted} == wanted:
    return
  tokens = held_out(exp, run_dir, c.measure_tokens)
  r = measure(bundle, tokens, c.new_tokens, c.constants or None, backend=c.backend)
  write_json(run_dir / MEASURE, {**wanted, **r})
  print(table(r))
