"""Content hashes: what a stage output records of its inputs, and how it tells it is stale.

A stage output is current if and only if the hashes it recorded equal its inputs' hashes now.
Timestamps identify nothing. Python 3.10-compatible and numpy only: the chip side uses it.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

_CHUNK = 1 << 20


def json_sha256(obj) -> str:
  """Of a JSON value, key order ignored (tuples hash as lists)."""
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=repr)
  return hashlib.sha256(text.encode()).hexdigest()


def _update_file(h, path: Path):
  with Path(path).open("rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)


def files_sha256(paths, root: Path | None = None) -> str:
  """Of files' contents and their names (relative to `root`), in sorted order."""
  h = hashlib.sha256()
  for p in sorted(Path(p) for p in paths):
    h.update(str(p.relative_to(root) if root else p.name).encode() + b"\0")
    _update_file(h, p)
  return h.hexdigest()


def arrays_sha256(arrays: dict) -> str:
  """Of named arrays ({"a.b": array}): names, dtypes, shapes and bytes, in sorted name order."""
  h = hashlib.sha256()
  for name in sorted(arrays):
    a = np.ascontiguousarray(np.asarray(arrays[name]))
    h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
    h.update(a.tobytes())
  return h.hexdigest()


LABELS = {"checkpoint": "checkpoint", "quant": "quant/", "program": "program/", "data": "data",
          "tasks": "task data"}  # fmt: skip


def changed(recorded: dict | None, wanted: dict) -> list[str]:
  """The inputs (keys of `wanted`) whose hashes differ from those recorded: [] when current."""
  if recorded is None:
    return ["missing"]
  return [k for k in wanted if json_sha256(recorded.get(k)) != json_sha256(wanted[k])]


def why(names: list[str]) -> str:
  """'quant/ changed', 'eval settings changed'... for `changed`'s answer."""
  if names == ["missing"]:
    return "not run yet"
  return ", ".join(f"{LABELS.get(n, n + ' settings')} changed" for n in names)
