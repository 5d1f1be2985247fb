"""The run directory's layout and its small JSON files, written atomically; run locks; signals.

Also the identities of a run's stage outputs that need no jax to read (the checkpoint's recorded
parameter hash, the calibration's content hash), so results and sweeps stay light.
"""

import contextlib
import fcntl
import json
import signal
import threading
from pathlib import Path

from mmfree.core import digest

# The run directory (DESIGN: "the run directory is the unit of work").
CONFIG, STATUS, METRICS = "config.json", "status.json", "metrics.jsonl"
CHECKPOINTS = "checkpoints"  # orbax: one directory per step
DIGESTS = "checkpoint_digests.json"  # {step: sha256 of the parameters}, written with each save
QUANT = "quant"  # config.json (QuantConfig + calibration record), scales.json, stats.json
QUANT_FILES = ("config.json", "scales.json")  # what the `hw` model and the program read
EVAL, EMULATE, MEASURE = "eval.json", "emulate.json", "measure.json"
TASKS = "tasks.json"  # zero-shot task accuracy per precision (`mmfree eval --tasks`, `tasks` stage)
PROGRAM = "program"  # the neuron program bundle


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


def _interrupt(signum, frame):
  raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt():
  """SIGTERM unwinds like Ctrl-C inside the block (only the main thread can set handlers)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGTERM, _interrupt)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def latest_step(run_dir: Path) -> int | None:
  """The newest finished orbax step (orbax's unfinished ones carry a suffix after the number)."""
  root = Path(run_dir) / CHECKPOINTS
  steps = [int(d.name) for d in root.iterdir() if d.name.isdigit()] if root.is_dir() else []
  return max(steps, default=None)


def recorded_checkpoint_id(run_dir: Path) -> dict | None:
  """{"step", "params_sha256"} of a run's latest checkpoint as recorded at save (the hash is
  None where it was never recorded); None without a checkpoint."""
  step = latest_step(run_dir)
  if step is None:
    return None
  recorded = (read_json(Path(run_dir) / DIGESTS) or {}).get(str(step))
  return {"step": step, "params_sha256": recorded}


def quant_id(run_dir: Path) -> str | None:
  """The content hash of a run's calibration (QuantConfig, record and frozen scales)."""
  files = [Path(run_dir) / QUANT / f for f in QUANT_FILES]
  return digest.files_sha256(files) if all(f.is_file() for f in files) else None
