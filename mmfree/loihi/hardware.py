"""Loihi 2 resource constants, each a value with its unit and source (standard library only).

`DEFAULT` is Loihi 2 as the mapper and the cost model see it. `load_overrides` replaces constants
from a JSON or TOML file (`mmfree measure --fit` writes one), so a user with other figures or a
measured chip changes numbers, not code. Each source says whether the value is published, derived
(arithmetic on published figures, shown in `docs/loihi_cost_sources.md`), a Loihi 1 fallback where
no Loihi 2 figure is published, or an "assumption" that no source gives. Groups are frozen
dataclasses of `Constant`s; overrides and `constants()` find them by dotted name.
"""

import dataclasses
import json
import math
from pathlib import Path

from mmfree.core.dicts import flatten

BRIEF = "Intel, Loihi 2 technology brief (2021)"
ORCHARD = "Orchard et al. 2021, arXiv:2111.03746"
HALA_POINT = "Intel, Hala Point announcement (2024)"
LLM_PAPER = "arXiv:2503.18002 (8-bit weights, 24-bit activations)"
SPEC = "spec/loihi2.md"
PRESS = "Loihi 2 launch press coverage (2021), reference/published_figures.json"
DAVIES = "Davies et al. 2018, IEEE Micro 38(1), Table 2 (Loihi 1, pre-silicon, 0.75 V)"
FRADY = "Frady et al. 2020, NICE, Pohoiki Springs (Loihi 1, measured)"
LOIHI1 = "Loihi 1 fallback: no Loihi 2 figure is published"
NECOTIS = ("NECOTIS/TemporalLearningInRSNNs, loihi_experiment/res.json (Loihi 2, one-chip Oheo "
           "Gulch board, lava-nc 0.10.0, 18 cases of 10^7 timesteps)")  # fmt: skip
# Tiers: where a value comes from, most trustworthy first (docs/loihi_cost_sources.md).
TIERS = ("measured", "vendor", "derived", "loihi1", "assumption", "override", "fitted")

# Hala Point, the published Loihi 2 system (Intel, 2024): the only system-level Loihi 2 rates.
HALA_CHIPS, HALA_CORES, HALA_POWER_W = 1152, 140_544, 2600.0
HALA_SYNAPSES_PER_S, HALA_NEURON_OPS_PER_S = 380e12, 240e12
# Measured static power of a one-chip Loihi 2 board (NECOTIS): 18 cases, 0.2118-0.2148 W.
STATIC_W = 0.213
# Measured wall time of 10^7 timesteps of a near-empty network on that board: 11.64 s.
TIMESTEP_FLOOR_S = 11.64 / 1e7
# Loihi 1's relative costs (Davies 2018, Table 2): how Hala Point's power splits between kinds.
L1_SYNOP_PJ, L1_UPDATE_PJ, L1_SPIKE_PJ, L1_HOP_PJ = 23.6, 81.0, 1.7, 3.5  # hop: mean of 3.0, 4.0
# Hala Point's maximum power less its chips' static power, spent at its peak rates and shared in
# Loihi 1's proportions: R_s·E_s + R_n·(81/23.6)·E_s = P − chips·static. An upper bound per
# operation: the 2,600 W also holds boards, x86 cores and power conversion.
HALA_DYNAMIC_W = HALA_POWER_W - HALA_CHIPS * STATIC_W
_SYNOP_J = HALA_DYNAMIC_W / (HALA_SYNAPSES_PER_S
                             + HALA_NEURON_OPS_PER_S * L1_UPDATE_PJ / L1_SYNOP_PJ)  # fmt: skip
# Pohoiki Springs' barrier: 14.3 µs across 4+64 chip hops, 16.2 µs across 12+64 (Frady 2020).
_BARRIER_HOP_S = (16.2e-6 - 14.3e-6) / ((12 + 64) - (4 + 64))
HEADER_BITS = 32  # assumption: one routing word per message (Loihi's packets are not published)


@dataclasses.dataclass(frozen=True)
class Constant:
  value: int | float
  unit: str
  source: str
  tier: str = "override"  # one of TIERS

  def __post_init__(self):
    if self.tier not in TIERS:
      raise ValueError(f"constant tier {self.tier!r}: expected one of {TIERS}")


KIB = 1024  # "KB" in the sources is taken as 1024 bytes (assumption: none of them says)
CORE_SRAM_192KB = Constant(192 * KIB, "bytes", f"{BRIEF}: memory per neuro-core; {SPEC}", "vendor")
CORE_SRAM_128KB = Constant(128 * KIB, "bytes", f"{PRESS}; {SPEC}", "vendor")


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
  header_bits: Constant  # a message's routing header: a b-bit graded spike moves header + b bits
  instruction_bits: Constant  # one microcode instruction in a core's memory


@dataclasses.dataclass(frozen=True)
class Systems:
  oheo_gulch: Constant
  kapoho_point: Constant
  hala_point: Constant


@dataclasses.dataclass(frozen=True)
class Time:
  synop: Constant  # one core's time per synaptic operation
  update: Constant  # one core's time per LIF neuron update (a kind's: × its instructions / LIF's)
  idle: Constant  # one core's time per neuron per timestep in which the neuron has no input
  message: Constant  # one core's time to send a header-only (binary) spike
  barrier: Constant  # end-of-timestep barrier within a chip
  barrier_hop: Constant  # added to the barrier per chip-to-chip hop across the system
  interchip: Constant  # a chip's link time per message leaving it
  host: Constant  # host work per generated token (sampling, embedding lookup, I/O)


@dataclasses.dataclass(frozen=True)
class Energy:
  synop: Constant
  update: Constant  # a LIF neuron update (a kind's: × its instructions / LIF's)
  idle: Constant  # a neuron's update in a timestep without input
  message: Constant  # a header-only spike within a chip (send plus an average hop)
  interchip: Constant  # a message crossing a chip boundary
  static: Constant  # static power per chip
  host: Constant  # the host's power while it works on a token (outside the chip's boundary)


@dataclasses.dataclass(frozen=True)
class Hardware:
  core: CoreLimits
  chip: ChipLimits
  formats: Formats
  systems: Systems
  time: Time
  energy: Energy


DEFAULT = Hardware(
  core=CoreLimits(
    neurons=Constant(8192, "neurons", f"{PRESS}, 'up to'; {SPEC}", "vendor"),
    # 192 KB is the whole core memory in Intel's brief, which also holds routing and axon
    # tables that this mapper does not charge; the 128 KB figure leaves room for them.
    memory=dataclasses.replace(
      CORE_SRAM_128KB,
      source=f"{CORE_SRAM_128KB.source}; default (assumption: routing tables use the rest)",
      tier="assumption",
    ),
  ),
  chip=ChipLimits(
    cores=Constant(128, "neuro-cores", f"{BRIEF}; {ORCHARD}; {SPEC}", "vendor"),
    neurons=Constant(1_000_000, "neurons", f"{BRIEF}, 'up to'; {SPEC}", "vendor"),
    synapses=Constant(120_000_000, "synapses", f"{BRIEF}, 'up to'; {SPEC}", "vendor"),
  ),
  formats=Formats(
    # Some summaries give 32-bit spike payloads; Lava's graded messages carry at most 24 bits.
    spike_bits=Constant(24, "bits", f"{SPEC} (Lava messages); {LLM_PAPER}", "vendor"),
    weight_bits=Constant(8, "bits", f"{SPEC} (shared exponent per group); {LLM_PAPER}", "vendor"),
    header_bits=Constant(
      HEADER_BITS,
      "bits",
      "assumption: one 32-bit routing word per message (Loihi's packet format is not published)",
      "assumption",
    ),
    instruction_bits=Constant(
      32,
      "bits",
      "assumption: one 32-bit word per microcode instruction, stored once per core (the neuron "
      "program's encoding is not published)",
      "assumption",
    ),
  ),
  systems=Systems(
    oheo_gulch=Constant(1, "chips", f"{BRIEF}; {SPEC}", "vendor"),
    kapoho_point=Constant(8, "chips", f"{BRIEF}; {SPEC}", "vendor"),
    hala_point=Constant(HALA_CHIPS, "chips", f"{HALA_POINT}; {SPEC}", "vendor"),
  ),
  time=Time(
    synop=Constant(
      HALA_CORES / HALA_SYNAPSES_PER_S,
      "s",
      f"derived: {HALA_POINT}, 140,544 cores / 380e12 8-bit synapses per s (a peak rate)",
      "derived",
    ),
    update=Constant(
      HALA_CORES / HALA_NEURON_OPS_PER_S,
      "s",
      f"derived: {HALA_POINT}, 140,544 cores / 240e12 neuron operations per s (a peak rate), "
      "each taken as a LIF update (assumption: the benchmark neuron is not published)",
      "derived",
    ),
    idle=Constant(5.3e-9, "s", f"{DAVIES}, inactive neuron update; {LOIHI1}", "loihi1"),
    message=Constant(2.1e-9, "s", f"{DAVIES}, within-tile spike latency; {LOIHI1}", "loihi1"),
    barrier=Constant(
      TIMESTEP_FLOOR_S,
      "s",
      f"measured: {NECOTIS}, 11.64 s / 10^7 timesteps of a 2-neuron network (the timestep "
      "floor: barrier and management)",
      "measured",
    ),
    barrier_hop=Constant(
      _BARRIER_HOP_S,
      "s",
      f"derived: {FRADY}, (16.2 - 14.3) us / 8 more chip hops; {LOIHI1}",
      "loihi1",
    ),
    interchip=Constant(
      HEADER_BITS / 8 / (5e12 / HALA_CHIPS),
      "s",
      f"derived: {HALA_POINT}, 5 TB/s inter-chip over 1,152 chips, for a header-only message "
      f"of {HEADER_BITS} bits (formats.header_bits)",
      "derived",
    ),
    host=Constant(
      0.0, "s", "assumption: host sampling overlaps the chip (not charged)", "assumption"
    ),
  ),  # fmt: skip
  energy=Energy(
    synop=Constant(
      _SYNOP_J,
      "J",
      f"derived: {HALA_POINT}, 2,600 W less 1,152 chips' static power at 380e12 synapses/s and "
      f"240e12 neuron ops/s, split in the proportions of {DAVIES} (23.6 pJ synop : 81 pJ "
      "update); an upper bound",
      "derived",
    ),
    update=Constant(
      _SYNOP_J * L1_UPDATE_PJ / L1_SYNOP_PJ,
      "J",
      "derived: as energy.synop, times 81 / 23.6 (a Loihi 1 LIF update)",
      "derived",
    ),
    idle=Constant(
      _SYNOP_J * 52.0 / L1_SYNOP_PJ,
      "J",
      f"derived: as energy.synop, times 52 / 23.6 ({DAVIES}, inactive update)",
      "derived",
    ),
    message=Constant(
      _SYNOP_J * (L1_SPIKE_PJ + L1_HOP_PJ) / L1_SYNOP_PJ,
      "J",
      f"derived: energy.synop times (1.7 pJ spike + 3.5 pJ hop) / 23.6 pJ, {DAVIES}",
      "derived",
    ),
    interchip=Constant(
      100e-12,
      "J",
      "assumption: no published figure for a Loihi (1 or 2) chip-to-chip message",
      "assumption",
    ),
    static=Constant(
      STATIC_W,
      "W",
      f"measured: {NECOTIS}, board static power 0.2118-0.2148 W (Intel's PilotNet notebooks "
      "print 0.168-0.342 W on the same board)",
      "measured",
    ),
    host=Constant(
      0.0,
      "W",
      "assumption: the host is outside the power boundary, as in Intel's "
      "benchmarks (lava-dl PilotNet notebooks)",
      "assumption",
    ),
  ),  # fmt: skip
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


RATES = ("s", "J", "W")  # units of the cost model's constants
FIT = "fit"  # a constants file's record of what it was fitted to (not a constant)


def _override(name: str, old: Constant, new, source: str) -> Constant:
  spec = new if isinstance(new, dict) else {"value": new}
  if set(spec) - {"value", "unit", "source", "tier"}:
    raise ValueError(
      f"{name}: an override has only value, unit, source and tier, got {sorted(spec)}"
    )
  v, unit = spec["value"], spec.get("unit", old.unit)
  if unit != old.unit:
    raise ValueError(f"{name} is in {old.unit}, got {unit!r}: convert the value to {old.unit}")
  low = 0 if unit in RATES else 1e-300  # a time or an energy may be zero; a limit may not
  if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < low:
    kind = "non-negative" if low == 0 else "positive"
    raise ValueError(f"{name} must be a {kind} number of {old.unit}, got {v!r}")
  if unit in RATES:
    v = float(v)
  elif isinstance(old.value, int):
    if v != int(v):
      raise ValueError(f"{name} counts whole {old.unit}, got {v!r}")
    v = int(v)
  return Constant(v, unit, spec.get("source", source), spec.get("tier", "override"))


def replace(hw: Hardware, overrides: dict, source: str = "override") -> Hardware:
  """`hw` with the named constants replaced; a value is a number or {value, unit?, source?}."""
  flat = flatten(overrides, leaf=lambda _, v: "value" in v)  # {"value": ...} is one constant
  known = constants(hw)
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


def read_file(path) -> dict:
  """A constants file as a dict: TOML by its `.toml` suffix, else JSON."""
  import tomllib  # Python 3.11+: the Lava environment (3.10) imports this module, never a file

  path = Path(path)
  toml = path.suffix == ".toml"
  try:
    text = path.read_text()
    obj = tomllib.loads(text) if toml else json.loads(text)
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: no such hardware overrides file") from None
  except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
    raise ValueError(f"{path}: not valid {'TOML' if toml else 'JSON'} ({e})") from None
  if not isinstance(obj, dict):
    raise ValueError(f'{path}: expected a JSON object of constants, e.g. {{"core": {{...}}}}')
  return obj


def load_overrides(path, base: Hardware = DEFAULT) -> Hardware:
  """`base` with the constants of a JSON or TOML file replaced; unknown names are refused. A
  top-level `fit` table (what `mmfree measure --fit` fitted to) is a record, not a constant."""
  obj = {k: v for k, v in read_file(path).items() if k != FIT}
  try:
    return replace(base, obj, source=f"override from {path}")
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
