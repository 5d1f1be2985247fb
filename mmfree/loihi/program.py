"""The neuron program bundle: populations of fused neuron programs, integer synapses, provenance.

On disk a bundle is a directory: `program.json` (format, version, configs, entries) and
`arrays/<key>.npy`. Synapse weights are int8 [n_in, n_out] in memory and stored dense or as CSR by
target neuron (`<key>.indptr.npy` int64 [n_out+1], `<key>.indices.npy` int32 source indices,
`<key>.data.npy` int8), whichever has fewer payload bytes. numpy, json and the standard library
only: this runs in the Lava environment (Python 3.10, numpy<2) too.
"""

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import re
import shutil
import uuid
from pathlib import Path

import numpy as np

from mmfree.loihi import hardware

FORMAT = "mmfree-loihi-program"
VERSION = 2  # 2: the static range check (`ranges`)
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
    _need(self.name and self.name != HOST, f"{who}: name must be non-empty and not {HOST!r}")
    _need(self.size > 0, f"{who}: size must be positive, got {self.size}")
    _need(self.layer is None or self.layer >= 0, f"{who}: layer must be None or >= 0")
    for k, v in self.params.items():
      ok = isinstance(v, int | float | str) or isinstance(v, list) and all(map(_is_int, v))
      _need(ok, f"{who}: params[{k!r}] must be a number, str, bool or list of ints, got {v!r}")
    for k, v in self.arrays.items():
      _need(isinstance(v, str), f"{who}: arrays[{k!r}] must be an array key, got {v!r}")
    for k, v in self.state_bits.items():
      _need(_is_int(v) and 1 <= v <= 32, f"{who}: state_bits[{k!r}] must be in [1, 32], got {v!r}")
    _need(1 <= self.out_bits <= HOST_OUT_BITS, f"{who}: out_bits must be in [1, {HOST_OUT_BITS}]")


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
    _need(self.name and self.port, f"{who}: name and port must be non-empty")
    _need(
      HOST not in (self.source, self.target) or self.source != self.target, f"{who}: host to host"
    )
    _need(self.n_in > 0 and self.n_out > 0, f"{who}: n_in and n_out must be positive")
    hi = hardware.DEFAULT.formats.weight_bits.value
    _need(MIN_WEIGHT_BITS <= self.weight_bits <= hi, f"{who}: weight_bits must be in [2, {hi}]")


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
    _validate(self)

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


def _need(ok, message: str):
  if not ok:
    raise ValueError(message)


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _check_types(obj, who: str):
  for f in dataclasses.fields(obj):
    v = getattr(obj, f.name)
    ok = isinstance(v, f.type) and not (isinstance(v, bool) and f.type is not bool)
    _need(ok, f"{who}: {f.name} must be {getattr(f.type, '__name__', f.type)}, got {v!r:.80}")


def _lookup(entries, name: str):
  for e in entries:
    if e.name == name:
      return e
  raise KeyError(f"no entry named {name!r} in the program")


def _json(obj, what: str) -> str:
  try:
    return json.dumps(obj, indent=1, allow_nan=False)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{what} is not plain JSON ({e}): use dicts, lists, str and numbers") from None


def _describe(a) -> str:
  return f"{a.dtype} {list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__


def _validate(p: Program):
  _check_types(p, "program")
  _need(p.version == VERSION, f"program: version {p.version}, this mmfree writes {VERSION}")
  for f in ("model", "quant", "provenance", "ranges"):
    _json(getattr(p, f), f"program {f}")
  ok = set(p.io) == set(IO) and all(p.io[k] in v for k, v in IO.items())
  _need(ok, f"program: io must map {list(IO)} to one of {list(IO.values())}, got {p.io}")
  _need(all(isinstance(f, str) for f in p.fusions), "program: fusions must be a list of names")
  _need(all(isinstance(r, dict) for r in p.ranges), "program: ranges must be a list of objects")
  for cls, entries in ((Population, p.populations), (Synapses, p.synapses)):
    _need(all(isinstance(e, cls) for e in entries), f"program: entries must be {cls.__name__}")
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    _need(not dup, f"program: {cls.__name__} names must be unique, repeated: {dup}")
  pops = {q.name: q for q in p.populations}
  weight_keys = [s.weights for s in p.synapses]
  for s in p.synapses:
    who = f"synapses {s.name!r}"
    for end, field, n in (("source", "n_in", s.n_in), ("target", "n_out", s.n_out)):
      name = getattr(s, end)
      _need(
        name in pops or name == HOST, f"{who}: {end} {name!r} is neither a population nor {HOST!r}"
      )
      size = pops[name].size if name in pops else n
      _need(size == n, f"{who}: {field} is {n}, but its {end} {name!r} has {size} neurons")
    _need(weight_keys.count(s.weights) == 1, f"{who}: weights key {s.weights!r} is shared")
    _check_weights(p, s, who)
  spike_bits = hardware.DEFAULT.formats.spike_bits.value
  for q in p.populations:
    who = f"population {q.name!r}"
    _need(q.kind in KINDS, f"{who}: unknown kind {q.kind!r}; known: {KINDS} (a newer mmfree?)")
    to_chip = any(s.target != HOST for s in p.synapses if s.source == q.name)
    msg = f"{who}: out_bits {q.out_bits} > {spike_bits} (graded spike) is for {HOST!r} outputs"
    _need(q.out_bits <= spike_bits or not to_chip, msg)
    for param, key in q.arrays.items():
      a = _array(p, key, who, f"arrays[{param!r}]")
      ok = isinstance(a, np.ndarray) and a.dtype.kind in "biu" and a.shape[:1] == (q.size,)
      _need(ok, f"{who}: arrays[{param!r}] must be integers [size={q.size}], got {_describe(a)}")
  for key, a in p.arrays.items():
    _need(_key_ok(key), f"program: array key {key!r} must be a plain file name")
    ok = isinstance(a, np.ndarray) and a.dtype.kind in "biuf" or isinstance(a, Csr)
    ok = ok and (key in weight_keys or not isinstance(a, Csr))
    _need(ok, f"program: array {key!r} must be a numeric numpy array, got {_describe(a)}")


def _key_ok(key) -> bool:
  return (
    isinstance(key, str) and bool(_KEY.fullmatch(key)) and key.rpartition(".")[2] not in CSR_PARTS
  )


def _array(p: Program, key: str, who: str, field: str):
  _need(key in p.arrays, f"{who}: {field} names array {key!r}, which is missing from the arrays")
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
    _need(ok and np.all(w.data != 0), f"{who}: not a valid CSR [n_in, n_out]={list(shape)}")
    w = w.data
  else:
    ok = isinstance(w, np.ndarray) and w.dtype == np.int8 and w.shape == shape
    _need(ok, f"{who} must be int8 [n_in, n_out]={list(shape)}, got {_describe(w)}")
  lo, hi = -(1 << (s.weight_bits - 1)), (1 << (s.weight_bits - 1)) - 1
  if w.size and not (lo <= int(w.min()) and int(w.max()) <= hi):
    raise ValueError(
      f"{who} span [{w.min()}, {w.max()}], outside the {s.weight_bits}-bit range "
      f"[{lo}, {hi}]: raise weight_bits or requantize"
    )


def storage(n_in: int, n_out: int, nnz: int) -> str:
  """CSR (8 B a target for indptr, 5 B a non-zero) when it beats dense (1 B a weight)."""
  return "csr" if 8 * (n_out + 1) + 5 * nnz < n_in * n_out else "dense"


def _other_keys(p: Program) -> list[str]:
  return [k for k in p.arrays if k not in {s.weights for s in p.synapses}]


def _write_npy(path: Path, a: np.ndarray):
  np.save(path, a, allow_pickle=False)


def save(program: Program, directory) -> Path:
  """Write the bundle to `directory` atomically: a complete new bundle replaces the old one.

  It is written to a hidden sibling directory and renamed into place, so a failure (or a kill)
  leaves the previous bundle as it was, and at worst a `.<name>.tmp-*` sibling behind.
  """
  p, directory = program, Path(directory)
  _validate(p)  # its dicts are mutable: check again what is about to be written
  how = {s.name: storage(s.n_in, s.n_out, p.nnz(s.name)) for s in p.synapses}
  other = _other_keys(p)
  text = _json(_manifest(p, how, other), "program")
  if directory.exists() and not (directory / MANIFEST).is_file() and any(directory.iterdir()):
    raise FileExistsError(f"{directory} is not a program bundle: refusing to replace it")
  tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
  try:
    (tmp / ARRAYS).mkdir(parents=True)
    for s in p.synapses:
      w = p.arrays[s.weights]
      if how[s.name] == "dense":
        _write_npy(tmp / ARRAYS / f"{s.weights}.npy", p.weights(s.name))
        continue
      c = w if isinstance(w, Csr) else Csr.from_dense(w)
      for part in CSR_PARTS:
        _write_npy(tmp / ARRAYS / f"{s.weights}.{part}.npy", getattr(c, part))
    for key in other:
      _write_npy(tmp / ARRAYS / f"{key}.npy", p.arrays[key])
    (tmp / MANIFEST).write_text(text + "\n")
    _swap(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def _manifest(p: Program, how: dict, other: list) -> dict:
  return {
    "format": FORMAT,
    **{f: getattr(p, f) for f in CONFIG},
    "populations": [dataclasses.asdict(q) for q in p.populations],
    "synapses": [dataclasses.asdict(s) | {"storage": how[s.name]} for s in p.synapses],
    "arrays": {
      k: {"dtype": str(p.arrays[k].dtype), "shape": list(p.arrays[k].shape)} for k in other
    },
  }


def _swap(new: Path, directory: Path):
  if not directory.exists():
    new.rename(directory)
    return
  old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
  directory.rename(old)
  try:
    new.rename(directory)
  except BaseException:
    old.rename(directory)
    raise
  shutil.rmtree(old, ignore_errors=True)


def _header(m) -> dict:
  ok = isinstance(m, dict) and m.get("format") == FORMAT
  _need(ok, f"format is not {FORMAT!r}: not a program bundle")
  v = m.get("version")
  _need(_is_int(v), f"version must be an integer, got {v!r}")
  age, fix = ("a newer", "upgrade mmfree, or ") if v > VERSION else ("an older", "")
  msg = f"written by {age} mmfree (format version {v}; this one reads {VERSION}): {fix}{LOWER}"
  _need(v == VERSION, msg)
  top = {f.name: list if f.type is tuple else f.type for f in dataclasses.fields(Program)}
  top["format"] = str
  _need(set(m) == set(top), f"keys must be {sorted(top)}, got {sorted(m)}")
  for k, t in top.items():
    _need(isinstance(m[k], t), f"{k} must be a JSON {t.__name__}, got {type(m[k]).__name__}")
  return m


def _entry(cls, e, what: str, extra: tuple = ()):
  _need(isinstance(e, dict), f"each of {what} must be an object, got {e!r}")
  keys = [f.name for f in dataclasses.fields(cls)]
  missing, unknown = sorted(set(keys) - set(e)), sorted(set(e) - {*keys, *extra})
  _need(not missing + unknown, f"{what} {e.get('name')!r}: missing {missing}, unknown {unknown}")
  return cls(**{k: e[k] for k in keys})


def _read(path: Path, mode, dtype, shape=None) -> np.ndarray:
  if not path.is_file():
    raise FileNotFoundError(f"{path}: array file missing from the bundle: {LOWER}")
  try:
    a = np.load(path, mmap_mode=mode, allow_pickle=False)
  except (ValueError, OSError) as e:
    raise ValueError(f"{path}: not a readable .npy file ({e}): {LOWER}") from None
  ok = a.dtype == np.dtype(dtype) and (shape is None and a.ndim == 1 or a.shape == shape)
  _need(ok, f"{path}: holds {_describe(a)}, expected {np.dtype(dtype)} {shape}: {LOWER}")
  return a


def load(directory, mmap: bool = True) -> Program:
  """Read and validate a bundle; with `mmap`, the arrays stay on disk until used."""
  directory = Path(directory)
  path, mode = directory / MANIFEST, "r" if mmap else None
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no program bundle here: write one with `mmfree lower`")
  try:
    m = _header(json.loads(path.read_text()))
    pops = tuple(_entry(Population, e, "population") for e in m["populations"])
    syns = tuple(_entry(Synapses, e, "synapses", ("storage",)) for e in m["synapses"])
    how = {e["name"]: e["storage"] for e in m["synapses"]}
    for s in syns:
      _need(how[s.name] in STORAGES, f"synapses {s.name!r}: storage must be one of {STORAGES}")
    bad = [k for k in [s.weights for s in syns] + list(m["arrays"]) if not _key_ok(k)]
    _need(not bad, f"array keys {bad} are not plain file names")
    specs = {k: (np.dtype(a["dtype"]), tuple(a["shape"])) for k, a in m["arrays"].items()}
  except (json.JSONDecodeError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: {e}") from None
  arrays = {}
  for s in syns:
    base = directory / ARRAYS / s.weights
    if how[s.name] == "dense":
      arrays[s.weights] = _read(Path(f"{base}.npy"), mode, np.int8, (s.n_in, s.n_out))
      continue
    parts = [_read(Path(f"{base}.{k}.npy"), mode, t) for k, t in CSR_PARTS.items()]
    arrays[s.weights] = Csr(*parts, shape=(s.n_in, s.n_out))
  for key, (dtype, shape) in specs.items():
    arrays[key] = _read(directory / ARRAYS / f"{key}.npy", mode, dtype, shape)
  try:
    config = {k: m[k] for k in CONFIG}
    return Program(**config, populations=pops, synapses=syns, arrays=arrays)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def summary(program: Program) -> dict:
  """Counts, and payload bytes on disk by storage (.npy headers and program.json not counted)."""
  p, nbytes = program, {"dense": 0, "csr": 0}
  nnz = {s.name: p.nnz(s.name) for s in p.synapses}
  for s in p.synapses:
    dense, csr = s.n_in * s.n_out, 8 * (s.n_out + 1) + 5 * nnz[s.name]
    nbytes[storage(s.n_in, s.n_out, nnz[s.name])] += min(dense, csr)
  nbytes["other"] = sum(p.arrays[k].nbytes for k in _other_keys(p))
  weights, nonzero = sum(s.n_in * s.n_out for s in p.synapses), sum(nnz.values())
  return {
    "populations": len(p.populations),
    "neurons": sum(q.size for q in p.populations),
    "synapse_groups": len(p.synapses),
    "weights": weights,
    "nonzero": nonzero,
    "zero_share": 1 - nonzero / weights if weights else 0.0,
    "bytes": nbytes,
  }


def provenance(source: str, quant: dict) -> dict:
  """Where a program comes from: source run, sha256 of the quant config, time, mmfree version."""
  try:
    version = importlib.metadata.version("mmfree")
  except importlib.metadata.PackageNotFoundError:
    version = "unknown"
  utc = datetime.timezone.utc  # noqa: UP017 (datetime.UTC is Python 3.11+; Lava runs on 3.10)
  return {
    "source": str(source),
    "quant_sha256": hashlib.sha256(json.dumps(quant, sort_keys=True).encode()).hexdigest(),
    "created": datetime.datetime.now(utc).isoformat(timespec="seconds"),
    "mmfree": version,
  }
