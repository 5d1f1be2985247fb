"""Results: one row per run directory, for notebooks and `mmfree report`.

`load(DIR)` reads a sweep directory (its run subdirectories, plus the points of `sweep.json` not
started yet) or a single run directory, tolerating runs that are half written. A row holds only
outputs of the run's current inputs: an output whose recorded hashes (checkpoint, calibration,
program) are not those on disk now is left out and named in `stale`, so accuracy and energy in
one row always describe one model.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mmfree import sweep
from mmfree.core import digest, files
from mmfree.core.dicts import flatten
from mmfree.loihi import bundle_io, program
from mmfree.tasks import metrics

if TYPE_CHECKING:  # imported on use: every `mmfree` command builds this module's parser
  import pandas as pd

OUTPUTS = (
  "eval",
  "emulate",
  "measure",
  "tasks",
)  # stage outputs `<stage>.json`, flattened to `<stage>.*` columns (`tasks.hw.arc_easy.acc`)
KEY_METRICS = ("steps", "loss", "val_loss", "val_ppl", "val_bpb")
ENERGY = ("measure.generation.tokens_per_s", "measure.generation.mj_per_token")
EVAL_METRICS = ("loss", "bpb", "saturation_pct")  # of eval.json, per precision: `eval.hw.loss`
_SKIP = ("experiment.overrides", "data_info.identity")  # repeated in the config sections themselves
# measure.json's detail (per core, population, layer and step) stays in the file: not columns
_DETAIL = (
  *(f"measure.{k}" for k in ("workload", "activity", "by_population", "by_layer", "constants",
                             "per_step", "prompt", "new", "loihi")),
  *(f"emulate.{k}" for k in ("by_population", "prompt", "new", "seconds")),
)  # fmt: skip
_SCALARS_ONLY = ("data_info.",)  # nested blobs here (corpus metadata) are not comparisons
_MAX_LIST = 16


def load(path) -> "pd.DataFrame":
  """Columns: name, status ("missing" without status.json), config as dotted names
  (`model.hidden_size`), the last value of each metric in metrics.jsonl, `steps`,
  `eval.<precision>.*`, `measure.*`, error, path. Rows sorted by name."""
  import pandas as pd

  path = Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"{path} is not a directory: expected a sweep or run directory")
  if _is_run(path):
    rows = [_row(path)]
  else:
    dirs = sorted(d for d in path.iterdir() if d.is_dir() and _is_run(d))
    rows = [_row(d) for d in dirs] + _planned(path, {d.name for d in dirs})
  if not rows:
    return pd.DataFrame(columns=["name", "status", "path"])
  return pd.DataFrame(rows).sort_values("name", ignore_index=True)


def _is_run(d: Path) -> bool:
  return (d / files.CONFIG).exists() or (d / files.STATUS).exists()


def identities(run_dir: Path) -> dict:
  """The content hashes of a run's checkpoint, calibration and program as they are on disk now,
  and whether the program was lowered from exactly that checkpoint and calibration."""
  run_dir = Path(run_dir)
  ckpt, quant = files.recorded_checkpoint_id(run_dir), files.quant_id(run_dir)
  bundle = run_dir / files.PROGRAM
  manifest = files.read_json(bundle / program.MANIFEST)
  content = bundle_io.content_sha256(bundle) if manifest else None
  lowered = (manifest or {}).get("provenance", {}).get("inputs") or {}
  from_these = not digest.changed(lowered, {"checkpoint": ckpt, "quant": quant})
  return {"checkpoint": ckpt, "quant": quant, "program": content if from_these else None}


def current_outputs(run_dir: Path, ids: dict | None = None) -> tuple[dict, list[str]]:
  """({eval, emulate, measure, tasks}: the outputs whose recorded inputs are the run's now, eval
  and tasks per precision), [the stale ones' names]; `ids` are the run's `identities` when known."""
  ids, out, stale = ids or identities(run_dir), {}, []

  def current(name: str, rec: dict) -> bool:
    inputs = rec.get("inputs")
    keys = [k for k in ids if (inputs or {}).get(k) is not None]  # None: not an input of it
    ok = inputs is not None and not digest.changed(inputs, {k: ids[k] for k in keys})
    if not ok:
      stale.append(name)
    return ok

  evals = files.read_json(Path(run_dir) / files.EVAL) or {}
  out["eval"] = {p: r for p, r in evals.items() if isinstance(r, dict) and current(f"eval.{p}", r)}
  for stage in ("emulate", "measure"):
    rec = files.read_json(Path(run_dir) / f"{stage}.json")
    if rec is not None and current(stage, rec):
      out[stage] = rec
  tasks = (files.read_json(Path(run_dir) / files.TASKS) or {}).get("precisions") or {}
  out["tasks"] = {p: task_columns(r) for p, r in tasks.items() if current(f"tasks.{p}", r)}
  return out, stale


def task_columns(rec: dict) -> dict:
  """One precision of tasks.json as columns: {task: metrics}, `avg_acc` (the mean over tasks of
  `acc`, the accuracy axis of accuracy against energy) and `examples_per_s`."""
  m = rec["metrics"]
  return {**m, "avg_acc": metrics.avg_acc(m), "examples_per_s": rec["throughput"]["examples_per_s"]}


def _row(d: Path) -> dict:
  status = sweep.read_json(d / sweep.STATUS) or {}
  row = {"name": d.name, "status": status.get("status", "missing")}
  row |= _flatten(sweep.read_json(d / files.CONFIG) or {})
  row |= _final_metrics(d / files.METRICS)
  ids = identities(d)  # hashes the program once for the row
  outputs, stale = current_outputs(d, ids)
  for stage, rec in outputs.items():
    row |= _flatten(rec, f"{stage}.")
  row |= {f"{k}_sha256": (v or {}).get("params_sha256") if k == "checkpoint" else v
          for k, v in ids.items()}  # fmt: skip
  return row | {"stale": tuple(stale), "error": status.get("error"), "path": str(d)}


def _planned(sweep_dir: Path, present: set[str]) -> list[dict]:
  """Points of the sweep that have no run directory yet."""
  points = (sweep.read_json(sweep_dir / sweep.MANIFEST) or {}).get("runs", [])
  rows = []
  for p in points:
    if p["name"] not in present:
      path = str(sweep_dir / p["name"])
      rows.append(
        {"name": p["name"], "status": "missing", **_flatten(p["overrides"]), "path": path}
      )
  return rows


def _dropped(key: str, v) -> bool:
  nested = isinstance(v, dict | list)
  detail = key in _SKIP or key in _DETAIL or key.endswith(".inputs")  # hashes: the *_sha256 columns
  return detail or (nested and key.startswith(_SCALARS_ONLY))


def _flatten(d: dict, prefix: str = "") -> dict:
  """Dotted columns; detail and nested blobs dropped, short lists of scalars (stages) kept as
  hashable tuples."""
  out = {}
  for key, v in flatten(d, prefix, leaf=_dropped).items():
    if _dropped(key, v) or isinstance(v, dict):
      continue
    if isinstance(v, list):
      if len(v) <= _MAX_LIST and not any(isinstance(x, dict | list) for x in v):
        out[key] = tuple(v)
    else:
      out[key] = v
  return out


def _final_metrics(path: Path) -> dict:
  """The last value of each metric, and the last step as `steps`."""
  try:
    lines = path.read_text().splitlines()
  except FileNotFoundError:
    return {}
  last = {}
  for line in lines:
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
      continue
    if isinstance(rec, dict):
      last |= rec
  if "step" in last:
    last["steps"] = last.pop("step")
  return last


def to_markdown(df: "pd.DataFrame", columns=None) -> str:
  """A compact table: by default name, status, the config columns that vary, key metrics."""
  if columns is None:
    config = [c for c in df.columns if "." in c and c.split(".")[0] not in OUTPUTS]
    varying = [c for c in config if df[c].dropna().astype(str).nunique() > 1]
    evals = [c for m in EVAL_METRICS for c in df if c.startswith("eval.") and c.endswith("." + m)]
    energy = [c for c in ENERGY if c in df]
    columns = ["name", "status", *varying, *[c for c in KEY_METRICS if c in df], *evals, *energy]
  unknown = [c for c in columns if c not in df]
  if unknown:
    raise ValueError(f"no columns {unknown}; there are {list(df.columns)}")
  return df[list(columns)].to_markdown(index=False, floatfmt=".4g", missingval="")


def summary(run_dir: Path) -> str:
  """Markdown: accuracy per precision level and, for the `hw` level (the one a Loihi 2 program
  runs), the predicted throughput, energy and latency per token."""
  outputs, stale = current_outputs(Path(run_dir))
  evals, m = outputs["eval"], outputs.get("measure")
  levels = list(evals) + (["hw"] if m and "hw" not in evals else [])
  head = (
    "| precision | val loss | ppl | bits/byte | Loihi 2 tokens/s | mJ/token | prefill tokens/s "
  )
  lines = [head + "| TTFT 500 tokens |", "|---|" + "---:|" * 7]
  for level in levels:
    e = evals.get(level, {})
    acc = [f"{e[k]:.4g}" if e.get(k) is not None else "" for k in ("loss", "ppl", "bpb")]
    hw = ["", "", "", ""]
    if level == "hw" and m:
      g, p = m["generation"], m["prefill"]
      hw = [f"{g['tokens_per_s']:,.1f}", f"{g['mj_per_token']:.4g}",
            f"{p['tokens_per_s']:,.0f}", f"{m['ttft_ms']['500']:.3g} ms"]  # fmt: skip
    elif level != "hw":
      hw[0] = "not a Loihi program (float activations)"
    lines.append(f"| {level} | " + " | ".join(acc + hw) + " |")
  if stale:
    names = ", ".join(stale)
    lines.append(f"\nstale (their inputs changed since; `mmfree run` reruns them): {names}")
  return "\n".join(lines) if levels else ""


def add_parser(subparsers) -> argparse.ArgumentParser:
  """`report DIR [--csv PATH] [--columns a,b,c]`."""
  p = subparsers.add_parser("report", help="table of a sweep's (or a run's) results")
  p.add_argument("dir", help="sweep directory or run directory")
  p.add_argument("--csv", default=None, help="CSV to write (default DIR/results.csv)")
  p.add_argument("--columns", default=None, help="comma-separated columns to show")
  p.set_defaults(fn=cmd_report)
  return p


def cmd_report(args, extra: list[str]) -> int:
  if extra:
    raise ValueError(f"unrecognized arguments {extra}")
  df = load(args.dir)
  if df.empty:
    print(f"mmfree report: no runs in {args.dir}", file=sys.stderr)
    return 1
  print(to_markdown(df, args.columns.split(",") if args.columns else None))
  for r in df[df["status"] == "failed"].itertuples():
    print(f"failed {r.name}: {r.error} ({Path(r.path) / sweep.LOG})")
  csv = Path(args.csv) if args.csv else Path(args.dir) / "results.csv"
  df.to_csv(csv, index=False)
  print(f"wrote {csv}", file=sys.stderr)
  return 0
