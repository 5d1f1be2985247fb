"""The program bundle on disk: a directory with `program.json` (format, version, configs,
entries) and `arrays/<key>.npy`, written atomically and read back validated (`program` holds the
dataclasses, their validation and the format's constants).

Synapse weights are stored dense (int8 [n_in, n_out]) or as CSR by target neuron
(`<key>.indptr.npy` int64 [n_out+1], `<key>.indices.npy` int32 source indices, `<key>.data.npy`
int8), whichever has fewer payload bytes. numpy, json and the standard library only.
"""

import dataclasses
import json
import shutil
import uuid
from pathlib import Path

import numpy as np

from mmfree.core import digest
from mmfree.loihi.program import (
  ARRAYS,
  CONFIG,
  CSR_PARTS,
  FORMAT,
  LOWER,
  MANIFEST,
  STORAGES,
  VERSION,
  Csr,
  Population,
  Program,
  Synapses,
  describe,
  is_int,
  json_text,
  key_ok,
  need,
  validate,
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
  validate(p)  # its dicts are mutable: check again what is about to be written
  how = {s.name: storage(s.n_in, s.n_out, p.nnz(s.name)) for s in p.synapses}
  other = _other_keys(p)
  text = json_text(_manifest(p, how, other), "program")
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
  need(ok, f"format is not {FORMAT!r}: not a program bundle")
  v = m.get("version")
  need(is_int(v), f"version must be an integer, got {v!r}")
  age, fix = ("a newer", "upgrade mmfree, or ") if v > VERSION else ("an older", "")
  msg = f"written by {age} mmfree (format version {v}; this one reads {VERSION}): {fix}{LOWER}"
  need(v == VERSION, msg)
  top = {f.name: list if f.type is tuple else f.type for f in dataclasses.fields(Program)}
  top["format"] = str
  need(set(m) == set(top), f"keys must be {sorted(top)}, got {sorted(m)}")
  for k, t in top.items():
    need(isinstance(m[k], t), f"{k} must be a JSON {t.__name__}, got {type(m[k]).__name__}")
  return m


def _entry(cls, e, what: str, extra: tuple = ()):
  need(isinstance(e, dict), f"each of {what} must be an object, got {e!r}")
  keys = [f.name for f in dataclasses.fields(cls)]
  missing, unknown = sorted(set(keys) - set(e)), sorted(set(e) - {*keys, *extra})
  need(not missing + unknown, f"{what} {e.get('name')!r}: missing {missing}, unknown {unknown}")
  return cls(**{k: e[k] for k in keys})


def _read(path: Path, mode, dtype, shape=None) -> np.ndarray:
  if not path.is_file():
    raise FileNotFoundError(f"{path}: array file missing from the bundle: {LOWER}")
  try:
    a = np.load(path, mmap_mode=mode, allow_pickle=False)
  except (ValueError, OSError) as e:
    raise ValueError(f"{path}: not a readable .npy file ({e}): {LOWER}") from None
  ok = a.dtype == np.dtype(dtype) and (shape is None and a.ndim == 1 or a.shape == shape)
  need(ok, f"{path}: holds {describe(a)}, expected {np.dtype(dtype)} {shape}: {LOWER}")
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
      need(how[s.name] in STORAGES, f"synapses {s.name!r}: storage must be one of {STORAGES}")
    bad = [k for k in [s.weights for s in syns] + list(m["arrays"]) if not key_ok(k)]
    need(not bad, f"array keys {bad} are not plain file names")
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


def content_sha256(directory) -> str:
  """A program's identity: program.json without its provenance, and every array file. Two
  lowerings with different weights or scales differ, whenever they ran; the same program
  lowered twice is one."""
  directory = Path(directory)
  try:
    manifest = json.loads((directory / MANIFEST).read_text())
  except (FileNotFoundError, json.JSONDecodeError) as e:
    raise FileNotFoundError(f"{directory}: no readable {MANIFEST} ({e}): {LOWER}") from None
  manifest.pop("provenance", None)
  arrays = digest.files_sha256(sorted((directory / ARRAYS).glob("*.npy")), directory / ARRAYS)
  return digest.json_sha256({"program": manifest, "arrays": arrays})


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
