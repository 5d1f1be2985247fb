"""Experiment tracking: `metrics.jsonl` always, Weights & Biases when asked for.

wandb is never required and never waits on the network: `online` without a reachable server
falls back to `offline` (synced later with `wandb sync RUN_DIR/wandb`).
"""

import contextlib
import os
import secrets
import socket
import sys
import threading
from pathlib import Path

from mmfree.core.train import TrackingConfig
from mmfree.store.metrics import JsonlWriter

WANDB_HOST = ("api.wandb.ai", 443)


def _reachable(host: tuple[str, int], timeout_s: float = 3.0) -> bool:
  """Whether a TCP connection opens within `timeout_s`, DNS lookup included."""
  ok = []

  def connect():
    with contextlib.suppress(OSError):
      socket.create_connection(host, timeout=timeout_s).close()
      ok.append(True)

  t = threading.Thread(target=connect, daemon=True)  # getaddrinfo ignores socket timeouts
  t.start()
  t.join(timeout_s)
  return bool(ok)


def _has_api_key() -> bool:
  netrc = Path.home() / ".netrc"
  return bool(os.environ.get("WANDB_API_KEY")) or (
    netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
  )


def _run_id(run_dir: Path) -> str:
  """Made once per run directory: a resumed run appends to its wandb run, a new one starts anew."""
  path = run_dir / "wandb_run_id"
  if not path.exists():
    path.write_text(secrets.token_hex(8))
  return path.read_text().strip()


class Tracker:
  """Writes every record to `metrics.jsonl`, and to a wandb run when enabled."""

  def __init__(self, run_dir: Path, cfg: TrackingConfig, config: dict):
    run_dir = Path(run_dir)
    self.jsonl = JsonlWriter(run_dir / "metrics.jsonl")
    self.wandb = None
    mode = cfg.wandb
    if mode == "disabled":
      return
    if mode == "online" and not _has_api_key():
      print("tracking: no wandb API key (WANDB_API_KEY or ~/.netrc), logging offline",
            file=sys.stderr)  # fmt: skip
      mode = "offline"
    if mode == "online" and not _reachable(WANDB_HOST):
      print("tracking: wandb server unreachable, logging offline", file=sys.stderr)
      mode = "offline"
    # The environment variables, not only init's arguments: init alone still looks up the server.
    os.environ["WANDB_MODE"] = mode
    os.environ["WANDB_DIR"] = str(run_dir)
    os.environ["WANDB_CACHE_DIR"] = str(run_dir / "wandb" / "cache")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    self.wandb = wandb.init(
      project=cfg.project,
      entity=cfg.entity or None,
      name=cfg.name or run_dir.name,
      id=_run_id(run_dir),
      resume="allow",
      dir=str(run_dir),
      config=config,
      mode=mode,
      settings=wandb.Settings(init_timeout=60),
    )

  def log(self, step: int, **scalars):
    self.jsonl.write(step, **scalars)
    if self.wandb is not None:
      self.wandb.log({k: v for k, v in scalars.items() if v is not None}, step=step)

  def close(self):
    self.jsonl.close()
    if self.wandb is not None:
      self.wandb.finish()
