"""The neuron program: populations of fused neuron programs, integer synapses, provenance.

The dataclasses, their validation and the format's constants; `bundle` writes and reads them as a
directory. Synapse weights are int8 [n_in, n_out] in memory (or `Csr` when loaded so). numpy, json
and the standard library only: this runs in the Lava environment (Python 3.10, numpy<2) too.
"""

import dataclasses
import datetime
import importlib.metadata
import json
import math
import re

import numpy as np

from mmfree.loihi import hardware

FORMAT = "mmfree-loihi-program"
VERSION = 4  # 2: the static range check; 3: residual `branch_*` formats; 4: input widths, points
MANIFEST = "program.json"
ARRAYS = "arrays"
HOST = "host"  # an endpoint off chip: the embedding's input, sampling's output
EMBEDDING = "host.embedding"  # float32 [V, H]: the host quantizes a token's row to block_in
# Neuron kinds (fused neuron programs: see `lower` for what each fuses, `emulate` for their maths).
KINDS = ("rmsnorm", "bitlinear_in", "mlgru", "g_norm", "product", "residual", "glu", "readout")
STORAGES = ("dense", "csr")
CSR_PARTS = {"indptr": np.int64, "indices": np.int32, "data": np.int8}  # file suffix: dtype
CONFIG = (
  "version",
  "model",
  "quant",
  "io",
  "fusions",
  "provenance",
  "ranges",
)  # as is in program.json
MIN_WEIGHT_BITS = 2  # ternary {-1, 0, 1} in two's complement
HOST_OUT_BITS = 32  # host-side outputs only: on chip a graded spike carries fewer bits
IO = {"embedding": (HOST,), "sampling": (HOST,), "lm_head": ("chip", HOST)}
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a plain file name under arrays/
LOWER = "re-run `mmfree lower`"
SKIP = ".skip"  # name suffix of an identity synapse group (a skip connection, not a BitLinear)


@dataclasses.dataclass(frozen=True)
class Population:
  name: str
  kind: str  # a neuron kind in KINDS
  size: int  # neurons
  layer: int | None  # block index; None for model-level populations
  params: dict  # scalar fixed-point parameters: str -> int | float | str | bool | list of ints
  arrays: dict  # per-neuron parameter arrays: param name -> array key
  state_bits: dict  # state kept between timesteps: name -> width in bits
  out_bits: int  # width of the graded spikes it sends

  def __post_init__(self):
    who = f"population {self.name!r}"
    _check_types(self, who)
    need(self.name and self.name != HOST, f"{who}: name must be non-empty and not {HOST!r}")
    need(self.size > 0, f"{who}: size must be positive, got {self.size}")
    need(self.layer is None or self.layer >= 0, f"{who}: layer must be None or >= 0")
    for k, v in self.params.items():
      ok = isinstance(v, int | float | str) or isinstance(v, list) and all(map(is_int, v))
      need(ok, f"{who}: params[{k!r}] must be a number, str, bool or list of ints, got {v!r}")
    for k, v in self.arrays.items():
      need(isinstance(v, str), f"{who}: arrays[{k!r}] must be an array key, got {v!r}")
    for k, v in self.state_bits.items():
      need(is_int(v) and 1 <= v <= 32, f"{who}: state_bits[{k!r}] must be in [1, 32], got {v!r}")
    need(1 <= self.out_bits <= HOST_OUT_BITS, f"{who}: out_bits must be in [1, {HOST_OUT_BITS}]")


@dataclasses.dataclass(frozen=True)
class Synapses:
  name: str
  source: str  # a population, or HOST for host input (the embedding)
  target: str  # a population, or HOST for host-side outputs
  port: str  # the target's input port ("x", "f", "i", "g", "up", ...)
  n_in: int
  n_out: int
  weight_bits: int  # 2 for ternary, up to 8
  weight_exp: int  # shared exponent (0 for plain ternary)
  weights: str  # array key of the integer weights [n_in, n_out]

  def __post_init__(self):
    who = f"synapses {self.name!r}"
    _check_types(self, who)
    need(self.name and self.port, f"{who}: name and port must be non-empty")
    need(
      HOST not in (self.source, self.target) or self.source != self.target, f"{who}: host to host"
    )
    need(self.n_in > 0 and self.n_out > 0, f"{who}: n_in and n_out must be positive")
    hi = hardware.DEFAULT.formats.weight_bits.value
    need(MIN_WEIGHT_BITS <= self.weight_bits <= hi, f"{who}: weight_bits must be in [2, {hi}]")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Csr:
  """Weights [n_in, n_out] by target neuron: row j holds the sources i with w[i, j] != 0."""

  indptr: np.ndarray  # int64 [n_out + 1]
  indices: np.ndarray  # int32 [nnz], source neuron
  data: np.ndarray  # int8 [nnz], non-zero
  shape: tuple  # (n_in, n_out)

  @classmethod
  def from_dense(cls, w_IxO: np.ndarray) -> "Csr":
    t, s = np.nonzero(w_IxO.T)  # row-major over [n_out, n_in]: by target, then source
    indptr = np.zeros(w_IxO.shape[1] + 1, np.int64)
    np.cumsum(np.bincount(t, minlength=w_IxO.shape[1]), out=indptr[1:])
    return cls(indptr, s.astype(np.int32), np.asarray(w_IxO[s, t], np.int8), tuple(w_IxO.shape))

  def dense(self) -> np.ndarray:
    w = np.zeros(self.shape, np.int8)
    w[self.indices, np.repeat(np.arange(self.shape[1]), np.diff(self.indptr))] = self.data
    return w


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Program:
  version: int
  model: dict  # the model config
  quant: dict  # the QuantConfig
  io: dict  # {"embedding": "host", "sampling": "host", "lm_head": "chip" | "host"}
  fusions: list  # names of the fusions the lowering applied
  provenance: dict  # source run, quant sha256, created, mmfree version (see `provenance`)
  ranges: list  # the static range check's rows (see `ranges.check`)
  populations: tuple  # of Population
  synapses: tuple  # of Synapses
  arrays: dict  # key -> np.ndarray (or Csr for weights stored sparse)

  def __post_init__(self):
    validate(self)

  def population(self, name: str) -> Population:
    return _lookup(self.populations, name)

  def synapse(self, name: str) -> Synapses:
    return _lookup(self.synapses, name)

  def fan_in(self, population_name: str) -> list[Synapses]:
    """Synapse groups into a population (host inputs included), in program order."""
    return [s for s in self.synapses if s.target == population_name]

  def weights(self, name: str) -> np.ndarray:
    """Dense int8 [n_in, n_out] of a synapse group (memory-mapped when loaded so)."""
    w = self.arrays[self.synapse(name).weights]
    return w.dense() if isinstance(w, Csr) else w

  def depths(self) -> dict:
    """Population -> timesteps after its token left the host: a synapse adds one."""
    depth = {HOST: 0}
    for q in self.populations:
      depth[q.name] = max(depth[s.source] + 1 for s in self.fan_in(q.name))
    del depth[HOST]
    return depth

  def nnz(self, name: str) -> int:
    w = self.arrays[self.synapse(name).weights]
    return len(w.data) if isinstance(w, Csr) else int(np.count_nonzero(w))

  def nnz_per_target(self, name: str) -> np.ndarray:
    """Non-zero weights into each target neuron: int64 [n_out]."""
    w = self.arrays[self.synapse(name).weights]
    if isinstance(w, Csr):
      return np.diff(w.indptr)
    rows = max(1, (1 << 24) // w.shape[1])  # bounded temporaries on the largest matrices
    blocks = (np.count_nonzero(w[i : i + rows], axis=0) for i in range(0, w.shape[0], rows))
    return sum(blocks, np.zeros(w.shape[1], np.int64))


def is_skip(s: Synapses) -> bool:
  return s.name.endswith(SKIP)


def need(ok, message: str):
  if not ok:
    raise ValueError(message)


def is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _check_types(obj, who: str):
  for f in dataclasses.fields(obj):
    v = getattr(obj, f.name)
    ok = isinstance(v, f.type) and not (isinstance(v, bool) and f.type is not bool)
    need(ok, f"{who}: {f.name} must be {getattr(f.type, '__name__', f.type)}, got {v!r:.80}")


def _lookup(entries, name: str):
  for e in entries:
    if e.name == name:
      return e
  raise KeyError(f"no entry named {name!r} in the program")


def json_text(obj, what: str) -> str:
  try:
    return json.dumps(obj, indent=1, allow_nan=False)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{what} is not plain JSON ({e}): use dicts, lists, str and numbers") from None


def describe(a) -> str:
  return f"{a.dtype} {list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__


def validate(p: Program):
  _check_types(p, "program")
  need(p.version == VERSION, f"program: version {p.version}, this mmfree writes {VERSION}")
  for f in ("model", "quant", "provenance", "ranges"):
    json_text(getattr(p, f), f"program {f}")
  ok = set(p.io) == set(IO) and all(p.io[k] in v for k, v in IO.items())
  need(ok, f"program: io must map {list(IO)} to one of {list(IO.values())}, got {p.io}")
  need(all(isinstance(f, str) for f in p.fusions), "program: fusions must be a list of names")
  need(all(isinstance(r, dict) for r in p.ranges), "program: ranges must be a list of objects")
  for cls, entries in ((Population, p.populations), (Synapses, p.synapses)):
    need(all(isinstance(e, cls) for e in entries), f"program: entries must be {cls.__name__}")
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    need(not dup, f"program: {cls.__name__} names must be unique, repeated: {dup}")
  pops = {q.name: q for q in p.populations}
  weight_keys = [s.weights for s in p.synapses]
  for s in p.synapses:
    who = f"synapses {s.name!r}"
    for end, field, n in (("source", "n_in", s.n_in), ("target", "n_out", s.n_out)):
      name = getattr(s, end)
      need(
        name in pops or name == HOST, f"{who}: {end} {name!r} is neither a population nor {HOST!r}"
      )
      size = pops[name].size if name in pops else n
      need(size == n, f"{who}: {field} is {n}, but its {end} {name!r} has {size} neurons")
    need(weight_keys.count(s.weights) == 1, f"{who}: weights key {s.weights!r} is shared")
    _check_weights(p, s, who)
  spike_bits = hardware.DEFAULT.formats.spike_bits.value
  for q in p.populations:
    who = f"population {q.name!r}"
    need(q.kind in KINDS, f"{who}: unknown kind {q.kind!r}; known: {KINDS} (a newer mmfree?)")
    to_chip = any(s.target != HOST for s in p.synapses if s.source == q.name)
    msg = f"{who}: out_bits {q.out_bits} > {spike_bits} (graded spike) is for {HOST!r} outputs"
    need(q.out_bits <= spike_bits or not to_chip, msg)
    for param, key in q.arrays.items():
      a = _array(p, key, who, f"arrays[{param!r}]")
      ok = isinstance(a, np.ndarray) and a.dtype.kind in "biu" and a.shape[:1] == (q.size,)
      need(ok, f"{who}: arrays[{param!r}] must be integers [size={q.size}], got {describe(a)}")
  for key, a in p.arrays.items():
    need(key_ok(key), f"program: array key {key!r} must be a plain file name")
    ok = isinstance(a, np.ndarray) and a.dtype.kind in "biuf" or isinstance(a, Csr)
    ok = ok and (key in weight_keys or not isinstance(a, Csr))
    need(ok, f"program: array {key!r} must be a numeric numpy array, got {describe(a)}")


def key_ok(key) -> bool:
  return (
    isinstance(key, str) and bool(_KEY.fullmatch(key)) and key.rpartition(".")[2] not in CSR_PARTS
  )


def _array(p: Program, key: str, who: str, field: str):
  need(key in p.arrays, f"{who}: {field} names array {key!r}, which is missing from the arrays")
  return p.arrays[key]


def _check_weights(p: Program, s: Synapses, who: str):
  w, shape = _array(p, s.weights, who, "weights"), (s.n_in, s.n_out)
  who = f"{who}: weights ({s.weights!r})"
  if isinstance(w, Csr):
    nnz, steps = len(w.data), np.diff(w.indptr)
    ok = all(getattr(w, k).dtype == t and getattr(w, k).ndim == 1 for k, t in CSR_PARTS.items())
    ok = ok and tuple(w.shape) == shape and w.indptr.shape == (s.n_out + 1,) and w.indptr[0] == 0
    ok = ok and len(w.indices) == nnz == w.indptr[-1] and np.all(steps >= 0)
    ok = ok and (nnz == 0 or w.indices.min() >= 0 and w.indices.max() < s.n_in)
    need(ok and np.all(w.data != 0), f"{who}: not a valid CSR [n_in, n_out]={list(shape)}")
    w = w.data
  else:
    ok = isinstance(w, np.ndarray) and w.dtype == np.int8 and w.shape == shape
    need(ok, f"{who} must be int8 [n_in, n_out]={list(shape)}, got {describe(w)}")
  lo, hi = -(1 << (s.weight_bits - 1)), (1 << (s.weight_bits - 1)) - 1
  if w.size and not (lo <= int(w.min()) and int(w.max()) <= hi):
    raise ValueError(
      f"{who} span [{w.min()}, {w.max()}], outside the {s.weight_bits}-bit range "
      f"[{lo}, {hi}]: raise weight_bits or requantize"
    )


def provenance(source: str, inputs: dict) -> dict:
  """Where a program comes from: the source run, the content hashes of what it was lowered from
  (checkpoint, calibration), the mmfree version; the time is for people (it identifies nothing)."""
  try:
    version = importlib.metadata.version("mmfree")
  except importlib.metadata.PackageNotFoundError:
    version = "unknown"
  utc = datetime.timezone.utc  # noqa: UP017 (datetime.UTC is Python 3.11+; Lava runs on 3.10)
  return {
    "source": str(source),
    "inputs": inputs,
    "created": datetime.datetime.now(utc).isoformat(timespec="seconds"),
    "mmfree": version,
  }


def zero_share(p: Program) -> float:
  """Share of zero weights over the BitLinear synapse groups (identity skips excluded)."""
  groups = [s for s in p.synapses if not is_skip(s)]
  total = sum(s.n_in * s.n_out for s in groups)
  return 1 - sum(p.nnz(s.name) for s in groups) / total if total else math.nan
