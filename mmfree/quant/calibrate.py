"""Calibration: observe every quantization point on real batches, then freeze its scale.

Two passes over the same batches: the first records ranges and chooses each point's scale with
the configured observer (min-max, moving average of batch ranges, or a percentile of |x|); the
second measures, under those frozen scales, how often each point saturates and its relative
error against the unquantized (`bitnet`) value. Results go to `RUN_DIR/quant/`:
`config.json` (the QuantConfig), `scales.json` (frozen), `stats.json` (per point).
"""

import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
from flax import nnx
from tqdm import tqdm

from mmfree.core.experiment import as_tuples, to_dataclass
from mmfree.core.files import QUANT, read_json
from mmfree.core.quant import QuantConfig
from mmfree.loihi.fixed import pow2_exponent
from mmfree.quant import hw
from mmfree.quant.points import Probe, Scale, recorder, set_probe, set_scales

FORMAT = (
  4  # of quant/: 2 the integer RMSNorm points, 3 bitlinear_out, 4 input_bits (older: refused)
)


def point_name(key: str) -> str:
  return key.rpartition(".")[2]


def observe(records: list[dict], cfg: QuantConfig) -> float:
  """The range a point's scale must cover, by the configured observer."""
  if cfg.observer == "minmax":
    return max(float(r["absmax"]) for r in records)
  if cfg.observer == "percentile":
    return max(float(r["pct"]) for r in records)
  ema = float(records[0]["absmax"])
  for r in records[1:]:
    ema = cfg.ema_decay * ema + (1 - cfg.ema_decay) * float(r["absmax"])
  return ema


def choose_scale(amax: float, bits: int, cfg: QuantConfig) -> Scale:
  """A power-of-two scale (ceil never clips amax) or the free scale amax / qmax."""
  qmax = 2 ** (bits - 1) - 1
  if cfg.scale == "free":
    return Scale(amax / qmax if amax > 0 else 1.0, bits)
  return Scale(2.0 ** int(pow2_exponent(np.float64(amax), bits, cfg.pow2_mode)), bits)


def point_scale(key: str, amax: float, cfg: QuantConfig) -> Scale | None:
  """The frozen scale of point `key` ('module.path.point', or a point name) for its observed
  range `amax`; None where it has none."""
  name = point_name(key)
  if name == "bitlinear_in" and cfg.bitlinear_input == "per_token":
    return None  # quantized per token by its BitLinear, not with a frozen scale
  if name == "rms_ms" and cfg.rmsnorm == "int":
    return None  # the integer norm's sum of squares is exact: no format to choose
  if name in hw.FIXED_POINTS:  # the kernels' own formats: recorded, for saturation counts
    return hw.fixed_format(name, cfg)
  return choose_scale(amax, cfg.bits_of(key), cfg)


def _run(forward, model, batches, desc: str) -> dict[str, list]:
  out: dict[str, list] = {}
  for batch in tqdm(batches, desc=desc, unit="batch", leave=False):
    for key, recs in forward(model, batch)[1].items():
      out.setdefault(key, []).extend(recs)
  return out


def calibrate(model: nnx.Module, batches: list, cfg: QuantConfig) -> tuple[dict, dict]:
  """(scales, stats), both keyed by 'module.path.point', for the enabled points."""
  forward = nnx.jit(recorder(lambda m, tokens_BxT: m(tokens_BxT)[0]))
  pct = cfg.percentile if cfg.observer == "percentile" else None
  set_probe(model, Probe("stats", pct, cfg.rounding))
  ranges = _run(forward, model, batches, "calibrate")
  unknown = sorted(k for k in cfg.point_bits if "." in k and k not in ranges)
  if unknown:
    raise ValueError(
      f"quant.bits names points this model does not have: {unknown} (its points are "
      f"'module.path.point', e.g. {next(iter(ranges), '?')!r})"
    )
  scales, stats = {}, {}
  for key, recs in ranges.items():
    name = point_name(key)
    if not cfg.enabled(name):
      continue
    amax = observe(recs, cfg)
    if (scale := point_scale(key, amax, cfg)) is None:
      continue
    scales[key] = scale
    stats[key] = {
      "point": name,
      "min": min(float(r["min"]) for r in recs),
      "max": max(float(r["max"]) for r in recs),
      "observed": amax,
      "rms": float(np.sqrt(np.mean([float(r["rms"]) ** 2 for r in recs]))),
      "scale": scales[key].scale,
      "bits": scales[key].bits,
    }
  set_scales(model, scales)
  set_probe(model, Probe("measure", rounding=cfg.rounding))
  measured = _run(forward, model, batches, "measure")
  for key, recs in measured.items():
    total = {k: sum(float(np.sum(r[k])) for r in recs) for k in recs[0]}
    stats[key]["saturation"] = total["saturated"] / total["count"]
    stats[key]["rel_error"] = math.sqrt(total["err2"] / total["ref2"]) if total["ref2"] else 0.0
  set_probe(model, None)
  return scales, stats


def summarize(stats: dict) -> list[dict]:
  """One row per point kind, over all layers: worst range, saturation and error."""
  rows: dict[str, dict] = {}
  for s in stats.values():
    r = rows.setdefault(s["point"], {"point": s["point"], "n": 0, "absmax": 0.0, "sat": 0.0,
                                     "rel_err": 0.0, "bits": s["bits"]})  # fmt: skip
    r["n"] += 1
    r["absmax"] = max(r["absmax"], max(abs(s["min"]), abs(s["max"])))
    r["sat"] = max(r["sat"], s["saturation"])
    r["rel_err"] = max(r["rel_err"], s["rel_error"])
  return sorted(rows.values(), key=lambda r: r["point"])


def save(run_dir: Path, cfg: QuantConfig, scales: dict, stats: dict, meta: dict):
  """Write `quant/` by renaming a finished directory: a failed run leaves the last one intact."""
  out = Path(run_dir) / QUANT
  tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".quant-"))
  files = {
    "config.json": {**cfg.to_dict(), "calibration": {**meta, "format": FORMAT}},
    "scales.json": {k: dataclasses.asdict(s) for k, s in scales.items()},
    "stats.json": stats,
  }
  for name, obj in files.items():
    (tmp / name).write_text(json.dumps(obj, indent=1) + "\n")
  old = out.with_name(".quant-old")
  shutil.rmtree(old, ignore_errors=True)
  if out.exists():
    out.rename(old)  # never a moment without a complete quant/ (old or new) on disk
  tmp.rename(out)
  shutil.rmtree(old, ignore_errors=True)


def saved_config(run_dir: Path) -> QuantConfig:
  """The QuantConfig that `RUN_DIR/quant/` was calibrated with."""
  path = Path(run_dir) / QUANT / "config.json"
  if not path.is_file():
    raise FileNotFoundError(
      f"{path.parent} holds no calibration: run `mmfree quantize calibrate {run_dir}`"
    )
  saved = json.loads(path.read_text())
  if saved.pop("calibration", {}).get("format") != FORMAT:
    raise ValueError(
      f"{path} is from an older version of mmfree: run `mmfree quantize calibrate {run_dir}` again"
    )
  try:
    return to_dataclass(QuantConfig, as_tuples(saved), "quant")
  except ValueError as e:
    raise ValueError(f"{path}: {e}; calibrate again") from None


def recorded_inputs(run_dir: Path) -> dict | None:
  """The inputs `RUN_DIR/quant/` was calibrated from, as its calibration record holds them."""
  saved = read_json(Path(run_dir) / QUANT / "config.json") or {}
  return saved.get("calibration", {}).get("inputs")


def load(run_dir: Path) -> tuple[QuantConfig, dict[str, Scale]]:
  """The frozen QuantConfig and scales of `RUN_DIR/quant/`."""
  cfg = saved_config(run_dir)
  scales = json.loads((Path(run_dir) / QUANT / "scales.json").read_text())
  return cfg, {k: Scale(**v) for k, v in scales.items()}
