"""`mmfree measure --fit`: the cost model's free constants fitted to real Loihi 2 measurements.

A rows file (JSON list, `{"rows": [...]}`, or CSV) names measured runs: `run` (a run directory,
bundle or measure.json whose workload `mmfree measure` wrote), `tokens_per_s` and/or
`mj_per_token`, `phase` (generation, the default, or prefill) and `role`: `fit` (the default) or
`holdout`, a row the fit does not see and predicts (`--hold-out I,J` holds rows out by index).
Least squares on the log of the ratios of predicted to measured figures, over the log of the free
constants (so they stay positive). The fitted file is a constants file (`--constants`) that
records what it was fitted to, the residuals and whether the fit was validated: more fitted
figures than free constants and at least one held-out figure predicted.
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
ROLES = ("fit", "holdout")
VALIDATED, NOT_VALIDATED = "validated", "calibrated, not validated"
RANK_TOL = 1e-6  # smallest singular value of the log Jacobian, relative to the largest


@dataclasses.dataclass(frozen=True)
class Row:
  run: str
  workload: cost.Workload
  phase: str
  measured: dict  # FIGURES name -> value (those given)
  role: str = "fit"  # one of ROLES


def read_rows(path: Path, hold_out=()) -> list[Row]:
  """The rows of a rows file; those at the 0-based indices `hold_out` are held out."""
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
  bad = [i for i in hold_out if not 0 <= i < len(raw)]
  if bad:
    raise ValueError(f"--hold-out {bad}: {path} has rows 0 to {len(raw) - 1}")
  rows = [_row(r, i, path) for i, r in enumerate(raw)]
  return [
    dataclasses.replace(r, role="holdout") if i in hold_out else r for i, r in enumerate(rows)
  ]


def _given(r: dict, k: str):
  """r[k], or None where it is missing (an empty CSV cell reads as NaN)."""
  v = r.get(k)
  return None if v is None or v != v or v == "" else v


def _row(r: dict, i: int, path: Path) -> Row:
  where = f"{path}: row {i}"
  if not isinstance(r, dict) or "run" not in r:
    raise ValueError(f"{where}: needs a `run` (a run directory, bundle or measure.json)")
  measured = {k: float(_given(r, k)) for k in FIGURES if _given(r, k) is not None}
  if not measured or any(not v > 0 for v in measured.values()):
    raise ValueError(f"{where}: needs a positive tokens_per_s and/or mj_per_token, got {r}")
  phase = _given(r, "phase") or "generation"
  if phase not in PHASES:
    raise ValueError(f"{where}: phase {phase!r}: expected one of {PHASES}")
  role = _given(r, "role") or "fit"
  if role not in ROLES:
    raise ValueError(f"{where}: role {role!r}: expected one of {ROLES}")
  src = Path(r["run"])
  if not src.is_absolute():
    src = path.parent / src
  report = src if src.suffix == ".json" else measure.report_path(measure.bundle_of(src))
  if not report.is_file():
    raise FileNotFoundError(f"{where}: no {report}: run `mmfree measure {src}` first")
  workload = json.loads(report.read_text()).get("workload")
  if workload is None:
    raise ValueError(f"{where}: {report} has no workload: rerun `mmfree measure {src}`")
  return Row(str(r["run"]), cost.Workload.from_json(workload), phase, measured, role)


def predicted(row: Row, hw: hardware.Hardware) -> dict:
  p = cost.predict(row.workload, hw, prompts=())[row.phase]
  return {k: p[k] for k in FIGURES}


def n_figures(rows: list[Row], role: str) -> int:
  return sum(len(r.measured) for r in rows if r.role == role)


def fit(rows: list[Row], hw: hardware.Hardware, free=FREE) -> hardware.Hardware:
  """`hw` with the `free` constants that best fit the rows whose role is `fit` (least squares in
  log space); held-out rows play no part."""
  from scipy.optimize import least_squares

  known = hardware.constants(hw)
  bad = [n for n in free if n not in known or known[n].unit not in hardware.RATES]
  if bad:
    rates = [n for n, c in known.items() if c.unit in hardware.RATES]
    raise ValueError(f"cannot fit {bad}: the free constants are among {rates}")
  zero = [n for n in free if known[n].value == 0]
  if zero:
    raise ValueError(f"cannot fit {zero} from zero: set a starting value with --constants")
  used = [r for r in rows if r.role == "fit"]
  n_fit = n_figures(rows, "fit")
  if n_fit < len(free):
    held = f" ({n_figures(rows, 'holdout')} more held out)" if len(used) < len(rows) else ""
    raise ValueError(f"{n_fit} measured figures{held} cannot fix {len(free)} free constants")
  x0 = np.log([known[n].value for n in free])

  def with_x(x):
    return hardware.replace(hw, {n: float(v) for n, v in zip(free, np.exp(x), strict=True)})

  def residuals(x):
    h = with_x(x)
    return [np.log(predicted(r, h)[k] / v) for r in used for k, v in r.measured.items()]

  sol = least_squares(residuals, x0, x_scale=1.0)
  # Enough figures is not enough: the same figure twice, or figures no free constant moves, leave
  # a direction of the constants unfixed, which the solver would return as its starting point.
  s = np.linalg.svd(np.atleast_2d(sol.jac), compute_uv=False)
  rank = int((s > RANK_TOL * max(s.max(initial=0.0), 1e-300)).sum())
  if rank < len(free):
    raise ValueError(
      f"the fitted rows fix only {rank} of the {len(free)} free constants {list(free)}: add "
      "figures they move differently (another figure, phase or workload), or free fewer"
    )
  return with_x(sol.x)


def status(n_fit: int, n_free: int, n_holdout: int) -> tuple[str, str]:
  """(VALIDATED or NOT_VALIDATED, why)."""
  why = []
  if n_fit == n_free:
    why.append(f"{n_fit} fitted figures for {n_free} free constants: no residual degrees of "
               "freedom, so matching them tests nothing")  # fmt: skip
  if not n_holdout:
    why.append("no held-out rows: nothing predicted that the fit did not see")
  if why:
    return NOT_VALIDATED, "; ".join(why)
  text = f"{n_fit} fitted figures for {n_free} free constants ({n_fit - n_free} degrees of "
  return VALIDATED, text + f"freedom), {n_holdout} held-out figures"


def _residuals(measured: dict, after: dict) -> dict:
  """Per figure: log(predicted / measured) and the ratio predicted / measured."""
  return {
    k: {"log": float(np.log(after[k] / v)), "ratio": after[k] / v} for k, v in measured.items()
  }


def _rms(table: list[dict], role: str) -> float | None:
  logs = [x["log"] for r in table if r["role"] == role for x in r["residual"].values()]
  return float(np.sqrt(np.mean(np.square(logs)))) if logs else None


def fit_file(rows_path: Path, out: Path, free=FREE, base: str | None = None, hold_out=()) -> dict:
  """Fit, write the constants file `out`, and return its `fit` record: status, degrees of
  freedom, each row's measured figures, predictions before and after, residuals, and RMS."""
  rows = read_rows(rows_path, hold_out)
  hw = hardware.load_overrides(base) if base else hardware.DEFAULT
  fitted = fit(rows, hw, free)
  n_fit, n_hold = n_figures(rows, "fit"), n_figures(rows, "holdout")
  state, why = status(n_fit, len(free), n_hold)
  when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  source = f"fitted by `mmfree measure --fit {rows_path}` ({when}; {state})"
  table = []
  for r in rows:
    after = predicted(r, fitted)
    table.append({"run": r.run, "phase": r.phase, "role": r.role, "measured": r.measured,
                  "before": predicted(r, hw), "after": after,
                  "residual": _residuals(r.measured, after)})  # fmt: skip
  record = {
    "status": state,
    "why": why,
    "free": list(free),
    "figures": {"fit": n_fit, "holdout": n_hold},
    "dof": n_fit - len(free),
    "rms_log_residual": {role: _rms(table, role) for role in ROLES},
    "rows": table,
    "base": base or "hardware.DEFAULT",
    "date": when,
  }
  consts = hardware.constants(fitted)
  doc = {
    n: {"value": consts[n].value, "unit": consts[n].unit, "source": source, "tier": "fitted"}
    for n in free
  }
  doc[hardware.FIT] = record
  out.write_text(json.dumps(doc, indent=2) + "\n")
  return record


def summary(record: dict) -> str:
  """The status line: validated or not, why, and the RMS log residual of each role."""
  rms = record["rms_log_residual"]
  parts = [f"{role} {x:.3g} (x{np.exp(x):.3f})" for role, x in rms.items() if x is not None]
  return f"{record['status']}: {record['why']}. RMS log residual: {', '.join(parts)}"


def table(record: dict) -> str:
  """The status line, then markdown: each measured figure beside the prediction before and after
  the fit, and the residual (after / measured and its log)."""
  lines = [summary(record), "",
           "| run | phase | role | figure | measured | before | after | after/measured | log |",
           "|---|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
  for r in record["rows"]:
    for k, v in r["measured"].items():
      b, a, res = r["before"][k], r["after"][k], r["residual"][k]
      lines.append(f"| {r['run']} | {r['phase']} | {r['role']} | {k} | {v:.4g} | "
                   f"{b:.4g} ({b / v:.2f}x) | {a:.4g} | {res['ratio']:.3f} | "
                   f"{res['log']:+.3f} |")  # fmt: skip
  return "\n".join(lines)
