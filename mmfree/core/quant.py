"""`QuantConfig`: every hardware quantization point of the `hw` precision level, and how.

Spec: shared/spec/quantization.md. Flat fields so that sweeps override them one at a time
(`quant.act_bits=6`, `quant.disabled=('h',)`, `quant.bits=('h=24',)`).
"""

import dataclasses
import re

# The quantization points, by where they sit (spec: "Quantization points").
POINTS = {
  "block": ("block_in", "attn_norm", "attn_out", "mlp_norm", "mlp_out", "residual"),
  "model": ("final_norm",),
  "mlgru": ("f_sigma", "f_lb", "c", "h", "g_norm", "silu_h", "gated"),
  "glu": ("glu_gate", "glu_up", "glu_silu", "glu_prod"),
  "rmsnorm": ("rms_in", "rms_gain", "rms_ms", "rms_inv", "rms_out"),
  "bitlinear": ("bitlinear_in", "bitlinear_acc", "bitlinear_out"),
}
ALL_POINTS = tuple(p for group in POINTS.values() for p in group)
SCALES = ("pow2", "free")
POW2_MODES = ("ceil", "nearest")
ROUNDINGS = ("half_even", "floor")
BITLINEAR_INPUTS = ("per_token", "static")
OBSERVERS = ("minmax", "ema", "percentile")
NONLINEARITIES = ("silu", "relu")
RMSNORMS = ("int", "float")
MAX_BITS = 24  # graded spikes carry up to 24 bits (spec: loihi2.md)
RMS_IN_MAX_BITS = 16  # the integer RMSNorm squares its input in int32
WIDE_BITS = 22  # SiLU inputs (±2^15 at Q.6): its output grows with its input; int32-safe products
MAX_GATE_FRAC = 31 - WIDE_BITS  # SiLU(i)·(1 − f) >> F within 2^30: WIDE_BITS − 1 + F ≤ 30
# Points whose values are a population's messages (spec: "Event-driven levers"): where a sender can
# go silent. bitlinear_in only with static scales (a per-token exponent rescales every message).
MESSAGE_POINTS = ("block_in", "attn_norm", "residual", "mlp_norm", "final_norm", "silu_h",
                  "g_norm", "gated", "glu_prod", "bitlinear_in")  # fmt: skip
LEVERS = ("threshold", "delta")  # applied in this order, at the sender
PER_POINT_ONLY = ("bitlinear_in", "rms_in")  # one width model-wide: checked against the kernels
_MODULE = re.compile(r"[A-Za-z_]\w*(\.\w+)*")  # a module path: 'layers.3.attn'


@dataclasses.dataclass(frozen=True)
class Scale:
  """A frozen per-tensor scale: values become round(x / scale) clipped to `bits` signed bits."""

  scale: float
  bits: int


@dataclasses.dataclass(frozen=True)
class QuantConfig:
  """How the `hw` level quantizes; `bits` and `disabled` refine single points."""

  act_bits: int = 8  # activations passed between operations
  input_bits: int = 8  # BitLinear inputs (bitlinear_in): int8 as published, wider where exact
  state_bits: int = 16  # the MLGRU state h, held by a neuron between timesteps
  acc_bits: int = 24  # BitLinear accumulators before rescale
  gain_bits: int = 12  # the RMSNorm gain, held by the norm's neuron
  scale: str = "pow2"  # pow2 (a shift: what the chip does) | free (any real scale)
  pow2_mode: str = "ceil"  # ceil never clips the calibrated range; nearest may
  rounding: str = "half_even"  # half_even | floor (an arithmetic right shift)
  bitlinear_input: str = "per_token"  # the published dynamic absmax | static (calibrated)
  observer: str = "minmax"  # minmax | ema (moving average of batch ranges) | percentile
  ema_decay: float = 0.9
  percentile: float = 99.99
  lut_size: int = 8  # σ/SiLU table entries over [0, lut_x_max)
  lut_x_max: float = 8.0
  lut_in_frac: int = 6  # Q-format of the table's input
  lut_out_frac: int = 8  # and of its output
  nonlinearity: str = "silu"  # silu | relu (relufication at `hw`: sparser activity)
  rmsnorm: str = "int"  # int (the integer kernel, pow2 formats) | float (fake-quantized internals)
  bits: tuple[str, ...] = ()  # per-point widths, e.g. ("h=24", "c=12", "layers.0.residual=12")
  disabled: tuple[str, ...] = ()  # points left unquantized
  # Event-driven levers at message points, thresholds in the point's LSBs: values with |q| below
  # `threshold` are sent as 0; `delta` sends q − (last sent) where its magnitude reaches the
  # threshold (0: every change, exact) and the receivers accumulate.
  threshold: tuple[str, ...] = ()  # e.g. ("gated=2",)
  delta: tuple[str, ...] = ()  # e.g. ("residual=0", "block_in=0")

  def __post_init__(self):
    choices = {
      "scale": SCALES,
      "pow2_mode": POW2_MODES,
      "rounding": ROUNDINGS,
      "bitlinear_input": BITLINEAR_INPUTS,
      "observer": OBSERVERS,
      "nonlinearity": NONLINEARITIES,
      "rmsnorm": RMSNORMS,
    }
    for name, valid in choices.items():
      if getattr(self, name) not in valid:
        raise ValueError(f"quant.{name}={getattr(self, name)!r}: expected one of {valid}")
    for name in ("act_bits", "input_bits", "state_bits", "acc_bits", "gain_bits"):
      _check_bits(f"quant.{name}", getattr(self, name))
    unknown = [p for p in self.disabled if p not in ALL_POINTS]
    if unknown:
      raise ValueError(f"quant.disabled: unknown points {unknown}; valid: {list(ALL_POINTS)}")
    for name, b in self.point_bits.items():
      _check_bits(f"quant.bits[{name}]", b)
    for lever in LEVERS:
      for name, thr in self.lever(lever).items():
        if thr < 0 or lever == "threshold" and thr == 0:
          raise ValueError(
            f"quant.{lever}[{name}]={thr}: must be {'>= 0' if lever == 'delta' else '>= 1'}"
          )
        if not self.enabled(name):
          raise ValueError(f"quant.{lever}[{name}]: the point is in quant.disabled")
        if name == "bitlinear_in" and self.bitlinear_input != "static":
          raise ValueError(
            f"quant.{lever}[bitlinear_in] needs quant.bitlinear_input='static': per-token inputs "
            "change scale every token, so their integers are not comparable across tokens"
          )
    if self.rmsnorm == "int":
      if self.scale != "pow2":
        raise ValueError(
          f"quant.rmsnorm='int' needs quant.scale='pow2' (its formats are shifts), got "
          f"quant.scale={self.scale!r}: set quant.rmsnorm='float' for free scales"
        )
      if self.enabled("rms_in") and self.bits_of("rms_in") > RMS_IN_MAX_BITS:
        raise ValueError(
          f"quant.rmsnorm='int' takes inputs of at most {RMS_IN_MAX_BITS} bits (x² in int32), but "
          f"rms_in has {self.bits_of('rms_in')} (quant.act_bits or quant.bits): add "
          f"'rms_in={RMS_IN_MAX_BITS}' to quant.bits or set quant.rmsnorm='float'"
        )
    if not 0 < self.ema_decay < 1:
      raise ValueError(f"quant.ema_decay={self.ema_decay}: must lie in (0, 1)")
    if not 50 < self.percentile <= 100:
      raise ValueError(f"quant.percentile={self.percentile}: must lie in (50, 100]")
    if not 1 <= self.lut_out_frac <= MAX_GATE_FRAC:
      raise ValueError(
        f"quant.lut_out_frac={self.lut_out_frac}: must lie in [1, {MAX_GATE_FRAC}] (the MLGRU "
        f"multiplies {WIDE_BITS}-bit SiLU values by gates in Q.lut_out_frac within int32)"
      )
    if self.lut_size < 2 or self.lut_x_max <= 0:
      raise ValueError(f"quant.lut_size={self.lut_size}, lut_x_max={self.lut_x_max}: too small")

  @property
  def point_bits(self) -> dict[str, int]:
    """The explicit widths of `bits`: by point, or by one point of one module ('layers.3.h')."""
    out = {}
    for item in self.bits:
      path, _, rest = item.rpartition(".") if "=" in item else ("", "", item)
      name = rest.partition("=")[0]
      if path and (name in PER_POINT_ONLY or not _MODULE.fullmatch(path)):
        raise ValueError(
          f"quant.bits entry {item!r}: a module's own width takes 'module.path.point=bits' with "
          f"a point other than {PER_POINT_ONLY} (their widths are checked model-wide)"
        )
      try:
        out[f"{path}.{name}" if path else name] = _point_ints("bits", (rest,), ALL_POINTS)[name]
      except ValueError:
        raise ValueError(
          f"quant.bits entry {item!r}: expected '[module.path.]point=integer' with a point of "
          f"{list(ALL_POINTS)}"
        ) from None
    return out

  def lever(self, lever: str) -> dict[str, int]:
    """{message point: threshold} of lever `threshold` or `delta`."""
    return _point_ints(lever, getattr(self, lever), MESSAGE_POINTS)

  def levers_of(self, point: str) -> dict[str, int]:
    """{lever: threshold} at `point` (a point name, or a `hw` key ending in one)."""
    name = point.rpartition(".")[2]
    return {k: v[name] for k in LEVERS if name in (v := self.lever(k))}

  def enabled(self, point: str) -> bool:
    return point not in self.disabled

  def bits_of(self, point: str) -> int:
    """The width of `point` (a point name, or a `hw` key 'module.path.point'): its module's own,
    its point's, else the state's (h), the BitLinear inputs' (the width their integers are
    clipped to, per token or static), the RMSNorm gain's, the accumulators' (1/rms too: it spans
    decades across tokens, and small values must keep their precision) or the activations'."""
    explicit = self.point_bits
    if point in explicit:
      return explicit[point]
    point = point.rpartition(".")[2]
    if point in explicit:
      return explicit[point]
    if point == "bitlinear_in":
      return self.input_bits
    if point == "h":
      return self.state_bits
    if point == "rms_gain":
      return self.gain_bits
    if point in ("bitlinear_acc", "bitlinear_out", "rms_ms", "rms_inv"):
      return self.acc_bits
    return self.act_bits

  def replace(self, **kw) -> "QuantConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _point_ints(field: str, items, points) -> dict[str, int]:
  out = {}
  for item in items:
    name, sep, value = item.partition("=")
    if not sep or name not in points or not value.lstrip("-").isdigit():
      raise ValueError(
        f"quant.{field} entry {item!r}: expected 'point=integer' with a point of {list(points)}"
      )
    out[name] = int(value)
  return out


def _check_bits(name: str, bits: int):
  if not 2 <= bits <= MAX_BITS:
    raise ValueError(f"{name}={bits}: must lie in [2, {MAX_BITS}] (graded spikes carry ≤ 24 bits)")
