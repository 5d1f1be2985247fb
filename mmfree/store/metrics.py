"""Metrics writers: `metrics.jsonl` (one JSON object per line, always)."""

import json
import math
from pathlib import Path


class JsonlWriter:
  """Appends one line per record and flushes, so a killed run keeps what it logged."""

  def __init__(self, path: Path):
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._f = self.path.open("a")

  def write(self, step: int, **scalars):
    row = {"step": step, **{k: _plain(v) for k, v in scalars.items()}}
    self._f.write(json.dumps(row) + "\n")
    self._f.flush()

  def truncate_after(self, step: int):
    """Drop rows logged after `step` (a resumed run logs them again) and a torn last line."""
    self._f.close()
    rows = [r for r in read_jsonl(self.path) if r["step"] <= step]
    tmp = self.path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(self.path)
    self._f = self.path.open("a")

  def close(self):
    self._f.close()


def _plain(v):
  v = float(v) if hasattr(v, "__float__") and not isinstance(v, int) else v
  return None if isinstance(v, float) and not math.isfinite(v) else v


def read_jsonl(path: Path) -> list[dict]:
  path = Path(path)
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue  # a line torn by a kill mid-write
  return rows
