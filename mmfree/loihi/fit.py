"""`mmfree measure --fit`: the cost model's free constants fitted to real Loihi 2 measurements.

A rows file (JSON list, `{"rows": [...]}`, or CSV) names measured runs: `run` (a run directory,
bundle or measure.json whose workload `mmfree measure` wrote), `tokens_per_s` and/or
`mj_per_token`, and `phase` (generation, the default, or prefill). Least squares on the log of
the ratios of predicted to measured figures, over the log of the free constants (so they stay
positive). The fitted file is a constants file (`--constants`) that records what it was fitted to.
"""

import dataclasses
import datetime
import json
from pathlib import Path

import numpy as np

from mmfree.loihi import cost, hardware, measure

FREE = ("time.synop", "energy.static")  # the defaults: one for time, one for energy
FIGURES = ("tokens_per_s", "mj_per_token")
PHASES = ("generation", "prefill")


@dataclasses.dataclass(frozen=True)
class Row:
  run: str
  workload: cost.Workload
  phase: str
  measured: dict  # FIGURES name -> value (those given)


def read_rows(path: Path) -> list[Row]:
  if path.suffix == ".csv":
    import pandas as pd

    raw = pd.read_csv(path).to_dict("records")
  else:
    try:
      raw = json.loads(path.read_text())
    except FileNotFoundError:
      raise FileNotFoundError(f"{path}: no such rows file") from None
    raw = raw.get("rows") if isinstance(raw, dict) else raw
  if not isinstance(raw, list) or not raw:
    raise ValueError(f"{path}: expected a list of rows (run, tokens_per_s, mj_per_token)")
  return [_row(r, i, path) for i, r in enumerate(raw)]


def _row(r: dict, i: int, path: Path) -> Row:
  where = f"{path}: row {i}"
  if not isinstance(r, dict) or "run" not in r:
    raise ValueError(f"{where}: needs a `run` (a run directory, bundle or measure.json)")
  measured = {k: float(r[k]) for k in FIGURES if r.get(k) == r.get(k) and r.get(k) is not None}
  if not measured or any(v <= 0 for v in measured.values()):
    raise ValueError(f"{where}: needs a positive tokens_per_s and/or mj_per_token, got {r}")
  phase = r.get("phase") or "generation"
  if phase not in PHASES:
    raise ValueError(f"{where}: phase {phase!r}: expected one of {PHASES}")
  src = Path(r["run"])
  if not src.is_absolute():
    src = path.parent / src
  report = src if src.suffix == ".json" else measure.report_path(measure.bundle_of(src))
  if not report.is_file():
    raise FileNotFoundError(f"{where}: no {report}: run `mmfree measure {src}` first")
  workload = json.loads(report.read_text()).get("workload")
  if workload is None:
    raise ValueError(f"{where}: {report} has no workload: rerun `mmfree measure {src}`")
  return Row(str(r["run"]), cost.Workload.from_json(workload), phase, measured)


def predicted(row: Row, hw: hardware.Hardware) -> dict:
  p = cost.predict(row.workload, hw, prompts=())[row.phase]
  return {k: p[k] for k in FIGURES}


def fit(rows: list[Row], hw: hardware.Hardware, free=FREE) -> hardware.Hardware:
  """`hw` with the `free` constants that best fit the rows (least squares in log space)."""
  from scipy.optimize import least_squares

  known = hardware.constants(hw)
  bad = [n for n in free if n not in known or known[n].unit not in hardware.RATES]
  if bad:
    rates = [n for n, c in known.items() if c.unit in hardware.RATES]
    raise ValueError(f"cannot fit {bad}: the free constants are among {rates}")
  zero = [n for n in free if known[n].value == 0]
  if zero:
    raise ValueError(f"cannot fit {zero} from zero: set a starting value with --constants")
  n_figures = sum(len(r.measured) for r in rows)
  if n_figures < len(free):
    raise ValueError(f"{n_figures} measured figures cannot fix {len(free)} free constants")
  x0 = np.log([known[n].value for n in free])

  def with_x(x):
    return hardware.replace(hw, {n: float(v) for n, v in zip(free, np.exp(x), strict=True)})

  def residuals(x):
    h = with_x(x)
    return [np.log(predicted(r, h)[k] / v) for r in rows for k, v in r.measured.items()]

  return with_x(least_squares(residuals, x0, x_scale=1.0).x)


def fit_file(rows_path: Path, out: Path, free=FREE, base: str | None = None) -> list[dict]:
  """Fit, write the constants file `out`, and return rows of measured, before and after."""
  rows = read_rows(rows_path)
  hw = hardware.load_overrides(base) if base else hardware.DEFAULT
  fitted = fit(rows, hw, free)
  when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  source = f"fitted by `mmfree measure --fit {rows_path}` ({when})"
  table = [{"run": r.run, "phase": r.phase, "measured": r.measured,
            "before": predicted(r, hw), "after": predicted(r, fitted)} for r in rows]  # fmt: skip
  consts = hardware.constants(fitted)
  doc = {n: {"value": consts[n].value, "unit": consts[n].unit, "source": source} for n in free}
  doc[hardware.FIT] = {"rows": table, "free": list(free), "base": base or "hardware.DEFAULT",
                       "date": when}  # fmt: skip
  out.write_text(json.dumps(doc, indent=2) + "\n")
  return table


def table(rows: list[dict]) -> str:
  """Markdown: each measured figure beside the prediction before and after the fit."""
  lines = ["| run | phase | figure | measured | before | after |", "|---|---|---|---:|---:|---:|"]
  for r in rows:
    for k, v in r["measured"].items():
      b, a = r["before"][k], r["after"][k]
      lines.append(f"| {r['run']} | {r['phase']} | {k} | {v:.4g} | {b:.4g} ({b / v:.2f}x) | "
                   f"{a:.4g} ({a / v:.3f}x) |")  # fmt: skip
  return "\n".join(lines)
