"""Quantization points: named places in the forward pass where the chip holds a fixed-point value.

At `float` and `bitnet` a point is the identity. A probe set on the modules records what passes:
range statistics for calibration (`stats`), saturation and error under frozen scales
(`measure`), or the values themselves (`values`). Records are sown as `nnx.Intermediate`s, so
they come out of a `recorder`-wrapped forward pass (jittable).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mmfree.core.quant import Scale
from mmfree.loihi import fixed
from mmfree.quant import hw as hw_lib

PROBES = ("stats", "measure", "values")
PREFIX = "point_"  # sown attribute names: points may share a name with a submodule


@dataclasses.dataclass(frozen=True)
class Probe:
  kind: str  # one of PROBES
  percentile: float | None = None  # of |x|, for the percentile observer (a sort: slow)
  rounding: str = "half_even"
  errors: bool = True  # `measure`: also the squared error against the unquantized value


def point(module: nnx.Module, name: str, x, clipped=None):
  """Mark `x` as quantization point `name` of `module`: at `hw`, quantize it to its frozen scale.

  `clipped` (a mask shaped like x) marks values the integer kernels already clipped on their way
  here (a saturating state, an inverse square root, a table's input): the `measure` probe counts
  them with the point's own clips, so that every clip is counted where it happens.
  """
  probe: Probe | None = getattr(module, "probe", None)
  if probe is not None and probe.kind != "values":
    _record(module, name, x, probe, clipped)
  hw: hw_lib.Hw | None = getattr(module, "hw", None)
  s = None if hw is None or name in hw_lib.FIXED_POINTS else hw.scale(name)
  if s is not None:
    x = hw_lib.fake_quant(x, s, hw.cfg.rounding)
  if probe is not None and probe.kind == "values":
    _record(module, name, x, probe)  # what the population computes, before its levers
  if s is not None and (levers := hw.cfg.levers_of(name)):
    x = hw_lib.send(x, s, levers)
  return x


def _row_sum(v):
  """Sums per batch row for activations [B, T, ...] (so that padded rows can be left out), one
  sum for parameters."""
  return jnp.sum(v, axis=tuple(range(1, v.ndim))) if v.ndim >= 3 else jnp.sum(v)


def _record(module: nnx.Module, name: str, x, probe: Probe, clipped=None):
  x32 = jax.lax.stop_gradient(x).astype(jnp.float32)
  if probe.kind == "stats":
    a = jnp.abs(x32)
    record = {
      "min": jnp.min(x32),
      "max": jnp.max(x32),
      "absmax": jnp.max(a),
      "rms": jnp.sqrt(jnp.mean(jnp.square(x32))),
    }
    if probe.percentile is not None:
      record["pct"] = jnp.percentile(a.ravel(), probe.percentile)
  elif probe.kind == "measure":
    if name not in getattr(module, "qscales", {}):
      return  # a disabled point: nothing quantizes it
    s: Scale = module.qscales[name]
    u = fixed.rounded(x32 / s.scale, probe.rounding)
    q = fixed.clip_to(u, s.bits)
    sat = u != q if clipped is None else (u != q) | jnp.broadcast_to(clipped, u.shape)
    per_row = x32.ndim >= 3
    record = {
      "saturated": _row_sum(sat.astype(jnp.float32)),
      "count": jnp.full(
        x32.shape[:1] if per_row else (), x32[0].size if per_row else x32.size, jnp.float32
      ),  # fmt: skip
    }
    if probe.errors:
      record |= {"err2": _row_sum(jnp.square(q * s.scale - x32)), "ref2": _row_sum(jnp.square(x32))}
  else:
    record = x32
  module.sow(nnx.Intermediate, PREFIX + name, record)


def set_probe(model: nnx.Module, probe: Probe | None):
  """Turn recording on (a Probe) or off (None) in every module of `model`."""
  if probe is not None and probe.kind not in PROBES:
    raise ValueError(f"probe kind {probe.kind!r}: expected one of {PROBES}")
  for _, m in nnx.iter_modules(model):
    m.probe = probe


def _by_module(model: nnx.Module, scales: dict[str, Scale]):
  """(module, its {point: scale}) for every module; `scales` is keyed by 'module.path.point'."""
  by_module: dict[str, dict[str, Scale]] = {}
  for key, s in scales.items():
    path, _, name = key.rpartition(".")
    by_module.setdefault(path, {})[name] = s
  for path, m in nnx.iter_modules(model):
    yield m, by_module.get(".".join(map(str, path)), {})


def set_scales(model: nnx.Module, scales: dict[str, Scale]):
  """Give each module its frozen scales, for the `measure` probe."""
  for m, own in _by_module(model, scales):
    m.qscales = own


def set_hw(model: nnx.Module, cfg, scales: dict[str, Scale]):
  """Switch `model` to the `hw` level with these frozen scales (a QuantConfig `cfg`)."""
  for m, own in _by_module(model, scales):
    m.hw = hw_lib.Hw(cfg, tuple(sorted(own.items())))
    m.qscales = own  # what the `measure` probe counts saturation against
    if hasattr(m, "precision"):
      m.precision = "hw"


def recorder(fn):
  """`fn(model, ...)` → `(out, {'module.path.point': [record per call]})`, jittable."""
  captured = nnx.capture(fn, nnx.Intermediate)

  def run(model, *args):
    out, state = captured(model, *args)
    records = {}
    for path, value in nnx.to_flat_state(state):
      *where, name = map(str, path)
      records[".".join([*where, name.removeprefix(PREFIX)])] = list(value.get_value())
    return out, records

  return run
