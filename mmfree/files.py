"""Small JSON files of a run directory, written atomically (stdlib only: sweeps import it)."""

import contextlib
import fcntl
import json
from pathlib import Path

STATUS = "status.json"


def read_json(path: Path) -> dict | None:
  """A JSON object from `path`, or None if it is missing or half-written."""
  try:
    obj = json.loads(Path(path).read_text())
  except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
    return None
  return obj if isinstance(obj, dict) else None


def write_json(path: Path, obj: dict):
  """Atomically, so a reader (or a rerun after a kill) never sees half a file."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, default=repr) + "\n")
  tmp.replace(path)


@contextlib.contextmanager
def exclusive(lock_path: Path, error: Exception):
  """An exclusive lock on `lock_path` for the block; `error` if another process holds it."""
  with Path(lock_path).open("w") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise error from None
    yield
