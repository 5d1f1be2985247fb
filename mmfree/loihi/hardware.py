"""Loihi 2 resource constants, each a value with its unit and source (standard library only).

`DEFAULT` is a single Loihi 2 chip as the mapper sees it. `load_overrides` replaces constants from a
JSON file, so a user with other figures (or a measured chip) changes numbers, not code. Values that
no source gives are labelled "assumption" in their source. Groups are frozen dataclasses of
`Constant`s; a new group (per-operation time and energy, say) is one more field of `Hardware`, and
overrides and `constants()` pick it up by name.
"""

import dataclasses
import json
import math
from pathlib import Path

BRIEF = "Intel, Loihi 2 technology brief (2021)"
ORCHARD = "Orchard et al. 2021, arXiv:2111.03746"
HALA_POINT = "Intel, Hala Point announcement (2024)"
LLM_PAPER = "arXiv:2503.18002 (8-bit weights, 24-bit activations)"
SPEC = "spec/loihi2.md"
PRESS = "Loihi 2 launch press coverage (2021), reference/published_figures.json"


@dataclasses.dataclass(frozen=True)
class Constant:
  value: int | float
  unit: str
  source: str


KIB = 1024  # "KB" in the sources is taken as 1024 bytes (assumption: none of them says)
CORE_SRAM_192KB = Constant(192 * KIB, "bytes", f"{BRIEF}: memory per neuro-core; {SPEC}")
CORE_SRAM_128KB = Constant(128 * KIB, "bytes", f"{PRESS}; {SPEC}")


@dataclasses.dataclass(frozen=True)
class CoreLimits:
  neurons: Constant  # neurons one neuro-core holds
  memory: Constant  # SRAM the mapper may fill with synapses and neuron state


@dataclasses.dataclass(frozen=True)
class ChipLimits:
  cores: Constant  # neuro-cores (the 6 embedded x86 cores are not counted)
  neurons: Constant
  synapses: Constant


@dataclasses.dataclass(frozen=True)
class Formats:
  spike_bits: Constant  # graded-spike payload
  weight_bits: Constant  # synaptic weight, before its group's shared exponent


@dataclasses.dataclass(frozen=True)
class Systems:
  oheo_gulch: Constant
  kapoho_point: Constant
  hala_point: Constant


@dataclasses.dataclass(frozen=True)
class Hardware:
  core: CoreLimits
  chip: ChipLimits
  formats: Formats
  systems: Systems


DEFAULT = Hardware(
  core=CoreLimits(
    neurons=Constant(8192, "neurons", f"{PRESS}, 'up to'; {SPEC}"),
    # 192 KB is the whole core memory in Intel's brief, which also holds neuron microcode and
    # routing tables that this mapper does not charge; the 128 KB figure leaves room for them.
    memory=dataclasses.replace(
      CORE_SRAM_128KB,
      source=f"{CORE_SRAM_128KB.source}; default (assumption: microcode and routing use the rest)",
    ),
  ),
  chip=ChipLimits(
    cores=Constant(128, "neuro-cores", f"{BRIEF}; {ORCHARD}; {SPEC}"),
    neurons=Constant(1_000_000, "neurons", f"{BRIEF}, 'up to'; {SPEC}"),
    synapses=Constant(120_000_000, "synapses", f"{BRIEF}, 'up to'; {SPEC}"),
  ),
  formats=Formats(
    # Some summaries give 32-bit spike payloads; Lava's graded messages carry at most 24 bits.
    spike_bits=Constant(24, "bits", f"{SPEC} (Lava messages); {LLM_PAPER}"),
    weight_bits=Constant(8, "bits", f"{SPEC} (shared exponent per group); {LLM_PAPER}"),
  ),
  systems=Systems(
    oheo_gulch=Constant(1, "chips", f"{BRIEF}; {SPEC}"),
    kapoho_point=Constant(8, "chips", f"{BRIEF}; {SPEC}"),
    hala_point=Constant(1152, "chips", f"{HALA_POINT}; {SPEC}"),
  ),
)


def constants(hw: Hardware = DEFAULT) -> dict[str, Constant]:
  """Every constant by dotted name ("core.memory", ...), in declaration order."""
  out = {}
  for f in dataclasses.fields(hw):
    v = getattr(hw, f.name)
    if isinstance(v, Constant):
      out[f.name] = v
    else:
      out.update({f"{f.name}.{k}": c for k, c in constants(v).items()})
  return out


def _flatten(obj: dict, prefix: str = "") -> dict:
  """Nested {"core": {"memory": …}} and dotted {"core.memory": …} both become dotted names."""
  out = {}
  for k, v in obj.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict) and "value" not in v:
      out.update(_flatten(v, name + "."))
    else:
      out[name] = v
  return out


def _override(name: str, old: Constant, new, source: str) -> Constant:
  spec = new if isinstance(new, dict) else {"value": new}
  if set(spec) - {"value", "unit", "source"}:
    raise ValueError(f"{name}: an override has only value, unit and source, got {sorted(spec)}")
  v, unit = spec["value"], spec.get("unit", old.unit)
  if unit != old.unit:
    raise ValueError(f"{name} is in {old.unit}, got {unit!r}: convert the value to {old.unit}")
  if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
    raise ValueError(f"{name} must be a positive number of {old.unit}, got {v!r}")
  if isinstance(old.value, int):
    if v != int(v):
      raise ValueError(f"{name} counts whole {old.unit}, got {v!r}")
    v = int(v)
  return Constant(v, unit, spec.get("source", source))


def replace(hw: Hardware, overrides: dict, source: str = "override") -> Hardware:
  """`hw` with the named constants replaced; a value is a number or {value, unit?, source?}."""
  flat, known = _flatten(overrides), constants(hw)
  unknown = sorted(set(flat) - set(known))
  if unknown:
    raise ValueError(f"unknown hardware constants {unknown}: known names are {list(known)}")
  for name, new in flat.items():
    hw = _replace_path(hw, name.split("."), _override(name, known[name], new, source))
  return hw


def _replace_path(obj, path: list[str], value):
  if len(path) == 1:
    return dataclasses.replace(obj, **{path[0]: value})
  child = _replace_path(getattr(obj, path[0]), path[1:], value)
  return dataclasses.replace(obj, **{path[0]: child})


def load_overrides(path, base: Hardware = DEFAULT) -> Hardware:
  """`base` with the constants of a JSON file replaced; unknown names are refused."""
  path = Path(path)
  try:
    obj = json.loads(path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: no such hardware overrides file") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(obj, dict):
    raise ValueError(f'{path}: expected a JSON object of constants, e.g. {{"core": {{...}}}}')
  try:
    return replace(base, obj, source=f"override from {path}")
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
