"""Experiment tracking: `metrics.jsonl` always, Weights & Biases when asked for.

wandb is never required and never waits on the network: `online` without a reachable server
falls back to `offline` (synced later with `wandb sync RUN_DIR/wandb`).
"""

import dataclasses
import hashlib
import os
import socket
import sys
from pathlib import Path

from mmfree.train.metrics import JsonlWriter

MODES = ("disabled", "offline", "online")
WANDB_HOST = ("api.wandb.ai", 443)


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
  wandb: str = "disabled"  # disabled | offline | online
  project: str = "mmfree"
  entity: str = ""
  name: str = ""  # default: the run directory's name

  def __post_init__(self):
    if self.wandb not in MODES:
      raise ValueError(f"tracking.wandb={self.wandb!r}: expected one of {MODES}")


def _reachable(host: tuple[str, int], timeout_s: float = 2.0) -> bool:
  try:
    socket.create_connection(host, timeout=timeout_s).close()
    return True
  except OSError:
    return False


class Tracker:
  """Writes every record to `metrics.jsonl`, and to a wandb run when enabled."""

  def __init__(self, run_dir: Path, cfg: TrackingConfig, config: dict):
    run_dir = Path(run_dir)
    self.jsonl = JsonlWriter(run_dir / "metrics.jsonl")
    self.wandb = None
    mode = cfg.wandb
    if mode == "disabled":
      return
    if mode == "online" and not _reachable(WANDB_HOST):
      print("tracking: wandb server unreachable, logging offline", file=sys.stderr)
      mode = "offline"
    # The environment variables, not only init's arguments: init alone still looks up the server.
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_DIR", str(run_dir))
    os.environ.setdefault("WANDB_CACHE_DIR", str(run_dir / "wandb" / "cache"))
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    run_id = hashlib.sha256(str(run_dir.absolute()).encode()).hexdigest()[:16]
    self.wandb = wandb.init(
      project=cfg.project,
      entity=cfg.entity or None,
      name=cfg.name or run_dir.name,
      id=run_id,  # stable: a resumed run appends to the same wandb run
      resume="allow",
      dir=str(run_dir),
      config=config,
      mode=mode,
    )

  def log(self, step: int, **scalars):
    self.jsonl.write(step, **scalars)
    if self.wandb is not None:
      self.wandb.log({k: v for k, v in scalars.items() if v is not None}, step=step)

  def close(self):
    self.jsonl.close()
    if self.wandb is not None:
      self.wandb.finish()
