"""Results: one row per run directory, for notebooks and `mmfree report`.

`load(DIR)` reads a sweep directory (its run subdirectories, plus the points of `sweep.json` not
started yet) or a single run directory, tolerating runs that are half written.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mmfree import sweep

if TYPE_CHECKING:  # imported on use: every `mmfree` command builds this module's parser
  import pandas as pd

OUTPUTS = (
  "eval",
  "emulate",
  "measure",
)  # stage outputs `<stage>.json`, flattened to `<stage>.*` columns
KEY_METRICS = ("steps", "loss", "val_loss", "val_ppl", "val_bpb")
ENERGY = ("measure.generation.tokens_per_s", "measure.generation.mj_per_token")
EVAL_METRICS = ("loss", "bpb", "saturation_pct")  # of eval.json, per precision: `eval.hw.loss`
_SKIP = ("experiment.overrides",)  # repeated in the config sections themselves
# measure.json's detail (per core, population, layer and step) stays in the file: not columns
_DETAIL = tuple(
  f"measure.{k}"
  for k in (
    "workload",
    "activity",
    "by_population",
    "by_layer",
    "constants",
    "per_step",
    "prompt",
    "new",
    "loihi",
  )
)
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
  return (d / "config.json").exists() or (d / sweep.STATUS).exists()


def _row(d: Path) -> dict:
  status = sweep.read_json(d / sweep.STATUS) or {}
  row = {"name": d.name, "status": status.get("status", "missing")}
  row |= _flatten(sweep.read_json(d / "config.json") or {})
  row |= _final_metrics(d / "metrics.jsonl")
  for stage in OUTPUTS:
    row |= _flatten(sweep.read_json(d / f"{stage}.json") or {}, f"{stage}.")
  return row | {"error": status.get("error"), "path": str(d)}


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


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    nested = isinstance(v, dict | list)
    if key in _SKIP or key in _DETAIL or (nested and key.startswith(_SCALARS_ONLY)):
      continue
    if isinstance(v, dict):
      out |= _flatten(v, key + ".")
    elif isinstance(v, list):  # short lists of scalars (stages) stay, as hashable tuples
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
  run_dir = Path(run_dir)
  evals = sweep.read_json(run_dir / "eval.json") or {}
  m = sweep.read_json(run_dir / "measure.json")
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
