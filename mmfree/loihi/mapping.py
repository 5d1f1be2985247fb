"""Placement of a program's populations and their fan-in synapses on neuro-cores, then on chips.

The memory model (assumptions: Loihi 2's synapse encodings are not published in this detail):
- A weight is stored at its group's width (`weights="min"`: 2 bits for ternary) or at 8 bits
  (`weights="8bit"`, as the published 370M deployment: arXiv 2503.18002's "8-bit weights").
- A synapse group is stored dense or sparse, whichever takes fewer bits over the whole group. Dense
  keeps every weight of a target neuron's fan-in, zeros included (n_in · weight_bits a neuron);
  sparse keeps each non-zero weight with the index of its source (weight_bits + ⌈log2 n_in⌉ bits)
  and a row pointer per target neuron (⌈log2 (nnz + 1)⌉ bits). The group's shared exponent and
  alignment to memory words are not charged. Dense groups process zero weights too (measured on
  Loihi 2: dense connection processes do not cull them), so the cost model charges them.
- A neuron's state is Σ state_bits plus, for each per-neuron parameter array, the signed width of
  the array's largest value (times its values per neuron).
- A core holds its population's neuron program once: the kind's instructions per update
  (`opcount`, traced from its kernel) at `formats.instruction_bits` each.
- A core's synapse bytes, state bytes and microcode bytes (each rounded up to whole bytes)
  share its memory (`hw.core.memory`); routing tables are not charged.
- Populations don't share cores: simple, and it over-counts cores for small populations.
- Synapse groups with a host endpoint live on the host and take no core memory.
- Cores fill chips in program order, within the chip's cores, neurons and synapses; with
  `policy="block"` each block (and the model-level populations) starts a chip of its own, as a
  single-block measurement extrapolated to the whole model would place it.
- Each core and chip records what bound it: a core its memory, its neuron limit or the end of its
  population; a chip its cores, neurons or synapses, a block boundary, or the end of the program.
"""

import dataclasses
import math

import numpy as np

from mmfree.loihi import fixed, hardware, opcount
from mmfree.loihi.program import HOST, Population, Program, Synapses, is_skip

SUMMED = ("neurons", "synapses", "weights", "skips", "synapse_bytes", "state_bytes",
          "microcode_bytes")  # fmt: skip
WEIGHTS = ("min", "8bit")  # stored weight width: the values' own, or the published 8 bits
POLICIES = ("pack", "block")


@dataclasses.dataclass(frozen=True)
class Placement:
  """The mapping's choices (not Loihi's constants): stored weight width, chip policy."""

  weights: str = "min"
  policy: str = "pack"

  def __post_init__(self):
    if self.weights not in WEIGHTS:
      raise ValueError(f"placement weights={self.weights!r}: expected one of {WEIGHTS}")
    if self.policy not in POLICIES:
      raise ValueError(f"placement policy={self.policy!r}: expected one of {POLICIES}")

  def weight_bits(self, s: Synapses) -> int:
    return max(s.weight_bits, 8) if self.weights == "8bit" else s.weight_bits


@dataclasses.dataclass(frozen=True)
class Core:
  """One neuro-core: neurons [start, stop) of one population, with their fan-in synapses."""

  chip: int
  population: str
  layer: int | None
  start: int
  stop: int
  synapses: int  # non-zero fan-in weights of BitLinear groups
  weights: int  # fan-in weights of BitLinear groups, zeros included
  skips: int  # identity (skip-connection) synapses: stored, but not ternary weights
  synapse_bytes: int
  state_bytes: int
  microcode_bytes: int
  bound: str  # what ended the core: "memory", "neurons" (core.neurons) or "population"

  @property
  def neurons(self) -> int:
    return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class Mapping:
  cores: tuple  # of Core, in program order
  encodings: dict  # on-chip synapse group -> "dense" | "sparse"
  hw: hardware.Hardware
  placement: Placement = Placement()
  chip_bounds: tuple = ()  # per chip: "cores", "neurons", "synapses", "block" or "end"
  instructions: dict = dataclasses.field(default_factory=dict)  # population -> per update

  @property
  def chips(self) -> int:
    return self.cores[-1].chip + 1 if self.cores else 0

  def totals(self) -> dict:
    """cores, chips, neurons, BitLinear weights (non-zero and all), skips, bytes, zero share,
    and what bound the cores and the chips (counts by reason)."""
    return {**_totals(self.cores), "chips": self.chips,
            "core_bounds": _count(c.bound for c in self.cores),
            "chip_bounds": _count(self.chip_bounds)}  # fmt: skip

  def by_layer(self) -> dict:
    """Totals per block index, model-level populations under None; in program order."""
    layers = {}
    for c in self.cores:
      layers.setdefault(c.layer, []).append(c)
    return {layer: _totals(cores) for layer, cores in layers.items()}


def _totals(cores) -> dict:
  t = {"cores": len(cores), **{f: sum(getattr(c, f) for c in cores) for f in SUMMED}}
  t["zero_share"] = 1 - t["synapses"] / t["weights"] if t["weights"] else 0.0
  return t


def _count(reasons) -> dict:
  out = {}
  for r in reasons:
    out[r] = out.get(r, 0) + 1
  return out


def index_bits(n_in: int) -> int:
  """Bits of a source index in sparse storage."""
  return (n_in - 1).bit_length()


def pointer_bits(nnz: int) -> int:
  """Bits of a sparse group's row pointer (an offset into its nnz weights)."""
  return nnz.bit_length()


def encoding(s: Synapses, nnz: int, bits: int) -> str:
  """ "dense" or "sparse", whichever stores the group in fewer bits at `bits` a weight."""
  dense = s.n_in * s.n_out * bits
  sparse = nnz * (bits + index_bits(s.n_in)) + s.n_out * pointer_bits(nnz)
  return "sparse" if sparse < dense else "dense"


def _signed_bits(a: np.ndarray) -> int:
  return fixed.signed_bits(*((a.min(), a.max()) if a.size else (0, 0)))


def state_bits(program: Program, q: Population) -> int:
  """Bits of state and per-neuron parameters one neuron of `q` keeps."""
  arrays = (program.arrays[key] for key in q.arrays.values())
  return sum(q.state_bits.values()) + sum(_signed_bits(a) * (a.size // q.size) for a in arrays)


def microcode_bytes(instructions: float, hw: hardware.Hardware) -> int:
  """Bytes of a neuron program of `instructions` per update (a whole instruction each)."""
  return (math.ceil(instructions) * hw.formats.instruction_bits.value + 7) // 8


def _split(q: Population, syn_bits: np.ndarray, neuron_bits: int, code: int,
           hw: hardware.Hardware):  # fmt: skip
  """(start, stop, synapse bytes, state bytes, bound) of contiguous neuron ranges that fit a
  core beside `code` bytes of microcode; bound says what ended the range."""
  max_n, mem = hw.core.neurons.value, hw.core.memory.value - code
  cum = np.concatenate([[0], np.cumsum(syn_bits)])
  start = 0
  while start < q.size:
    n = np.arange(1, min(max_n, q.size - start) + 1)
    syn, state = (cum[start + n] - cum[start] + 7) // 8, (n * neuron_bits + 7) // 8
    fit = int(np.searchsorted(syn + state, mem, side="right"))  # bytes rise with n
    if fit == 0:
      raise ValueError(
        f"population {q.name!r}: neuron {start} alone needs {syn[0]} B of fan-in synapses and "
        f"{state[0]} B of state, more than the {mem} B a core keeps beside {code} B of microcode "
        "(core.memory): use fewer weight bits, "
        "sparser weights or a smaller fan-in, or override core.memory"
      )
    bound = ("population" if start + fit == q.size else
             "memory" if fit < len(n) else "neurons")  # fmt: skip
    yield start, start + fit, int(syn[fit - 1]), int(state[fit - 1]), bound
    start += fit


def _chips(cores: list[dict], hw: hardware.Hardware, policy: str) -> tuple[list[int], list[str]]:
  """(chip index of each core, what bound each chip): chips fill in order within their cores,
  neurons and synapses; with policy "block" a new block also starts a chip."""
  limits = (hw.chip.cores.value, hw.chip.neurons.value, hw.chip.synapses.value)
  chip, used, out, bounds, layer = 0, (0, 0, 0), [], [], None
  for i, c in enumerate(cores):
    need = (1, c["stop"] - c["start"], c["synapses"] + c["skips"])
    if any(n > lim for n, lim in zip(need, limits, strict=True)):
      raise ValueError(
        f"population {c['population']!r}: one core's (cores, neurons, synapses) = {need} exceed "
        f"a chip's {limits}: lower core.neurons or core.memory, or raise the chip limits"
      )
    full = [u + n > lim for u, n, lim in zip(used, need, limits, strict=True)]
    new_block = policy == "block" and i > 0 and c["layer"] != layer
    if any(full) or new_block:
      bounds.append(("cores", "neurons", "synapses")[full.index(True)] if any(full) else "block")
      chip, used = chip + 1, (0, 0, 0)
    used = tuple(u + n for u, n in zip(used, need, strict=True))
    out.append(chip)
    layer = c["layer"]
  return out, [*bounds, "end"] if cores else []


def place(program: Program, hw: hardware.Hardware = hardware.DEFAULT,
          placement: Placement = Placement(),
          instructions: dict | None = None) -> Mapping:  # fmt: skip
  """Every population on its own cores (split by neuron ranges when needed), cores on chips.
  `instructions` per update of each population: traced from its kernel (`opcount`) when None."""
  if instructions is None:
    instructions = opcount.program_instructions(program)
  missing = sorted({q.name for q in program.populations} - set(instructions))
  if missing:
    raise ValueError(f"instructions: no count for populations {missing[:5]}")
  groups = [s for s in program.synapses if HOST not in (s.source, s.target)]
  bits = {s.name: placement.weight_bits(s) for s in groups}
  nnz_g = {s.name: program.nnz(s.name) for s in groups}
  encodings = {s.name: encoding(s, nnz_g[s.name], bits[s.name]) for s in groups}
  cores = []
  for q in program.populations:
    syn_bits = np.zeros(q.size, np.int64)
    nnz, skips, fan_in = np.zeros(q.size, np.int64), np.zeros(q.size, np.int64), 0
    for s in program.fan_in(q.name):
      if s.name not in encodings:
        continue
      col = program.nnz_per_target(s.name)
      b = bits[s.name]
      if encodings[s.name] == "sparse":
        syn_bits += col * (b + index_bits(s.n_in)) + pointer_bits(nnz_g[s.name])
      else:
        syn_bits += s.n_in * b
      if is_skip(s):
        skips += col
      else:
        nnz, fan_in = nnz + col, fan_in + s.n_in
    code = microcode_bytes(instructions[q.name], hw)
    for start, stop, syn_b, state_b, bound in _split(q, syn_bits, state_bits(program, q), code,
                                                     hw):  # fmt: skip
      cores.append(
        {
          "population": q.name,
          "layer": q.layer,
          "start": start,
          "stop": stop,
          "synapses": int(nnz[start:stop].sum()),
          "weights": fan_in * (stop - start),
          "skips": int(skips[start:stop].sum()),
          "synapse_bytes": syn_b,
          "state_bytes": state_b,
          "microcode_bytes": code,
          "bound": bound,
        }
      )
  chips, chip_bounds = _chips(cores, hw, placement.policy)
  placed = tuple(Core(chip=k, **c) for k, c in zip(chips, cores, strict=True))
  return Mapping(placed, encodings, hw, placement, tuple(chip_bounds), dict(instructions))


def report(mapping: Mapping) -> str:
  """Markdown: per-layer and total resources, then the constants the placement used."""
  head = (
    "| layer | cores | neurons | ternary weights | non-zero | zeros | skip synapses "
    "| synapse KiB | state KiB | microcode KiB |"
  )
  rows = [head, "|---|" + "---:|" * 9]
  table = {**mapping.by_layer(), "total": mapping.totals()}
  for layer, t in table.items():
    name = {None: "model", "total": "**total**"}.get(layer, layer)
    rows.append(
      f"| {name} | {t['cores']} | {t['neurons']:,} | {t['weights']:,} | {t['synapses']:,} | "
      f"{t['zero_share']:.1%} | {t['skips']:,} | {t['synapse_bytes'] / 1024:,.1f} | "
      f"{t['state_bytes'] / 1024:,.1f} | {t['microcode_bytes'] / 1024:,.1f} |"
    )
  t = mapping.totals()
  p = mapping.placement
  lines = ["", f"Cores: {t['cores']}, chips: {t['chips']} (weights stored {p.weights}, "
           f"placement {p.policy}). Cores bound by {reasons(t['core_bounds'])}; chips bound by "
           f"{reasons(t['chip_bounds'])}. Constants used:", ""]  # fmt: skip
  for name, c in hardware.constants(mapping.hw).items():
    if name.startswith(("core.", "chip.", "formats.instruction")):
      lines.append(f"- `{name}` = {c.value:,} {c.unit} ({c.source})")
  return "\n".join(rows + lines) + "\n"


def reasons(counts: dict) -> str:
  """'memory 3, population 1': what bound the cores or chips, most often first."""
  return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"
