"""Sweeps: one run directory per point of an experiment's `get_sweep`, run as local processes.

`mmfree sweep experiments/x.py[:arg] --workdir DIR --workers N [--config.KEY=VALUE ...]` runs
`mmfree run` once per point into `DIR/<name>/` (readable overrides plus a hash of them), up to N
at a time; `--config.*` overrides apply to every point, after the point's own. Finished runs are
skipped and unfinished ones resumed, so rerunning the same command after a crash or Ctrl-C
completes only what is missing. `DIR/sweep.json` lists the points.
"""

import argparse
import ast
import dataclasses
import datetime
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from mmfree.files import STATUS, exclusive, read_json, write_json

MANIFEST = "sweep.json"
LOG = "run.log"
_NAME_MAX = 80  # readable part of a run name; the hash keeps truncated names distinct
_POLL_S = 0.1


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  dir: Path
  overrides: dict
  command: list[str]


def default_command() -> list[str]:
  return [sys.executable, "-m", "mmfree.cli"]


def run_name(overrides: dict) -> str:
  """`lr=0.001,hidden_size=64-1a2b3c4d`: the last key components (sorted by full key), values
  shortened, then 8 hex digits of sha256 over the canonical JSON of all overrides."""
  digest = hashlib.sha256(_canonical(overrides).encode()).hexdigest()[:8]
  words = ",".join(f"{k.rsplit('.', 1)[-1]}={_short(overrides[k])}" for k in sorted(overrides))
  words = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", words)[:_NAME_MAX] or "base"
  return f"{words}-{digest}"


def _canonical(overrides: dict) -> str:
  return json.dumps(overrides, sort_keys=True, separators=(",", ":"), default=repr)


def _short(v) -> str:
  if isinstance(v, float):
    return f"{v:g}"
  if isinstance(v, list | tuple):
    return "+".join(_short(x) for x in v)
  return str(v)


def _literal(text: str):
  """How `mmfree run` reads `--config.KEY=VALUE`: a literal, else the text. Mirrors
  configs.parse_value (a test holds them together) so that planning needs no jax."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def override_arg(key: str, value) -> str:
  """`--config.KEY=VALUE` that reads back as `value`: strings raw where that is unambiguous."""
  text = value if isinstance(value, str) and _literal(value) == value else repr(value)
  if _literal(text) != value:
    raise ValueError(f"sweep value {key}={value!r} does not survive a command line: use a literal")
  return f"--config.{key}={text}"


def run_status(run_dir: Path) -> str:
  return (read_json(Path(run_dir) / STATUS) or {}).get("status", "missing")


def plan(
  spec: str,
  workdir: Path,
  extra_overrides: dict | None = None,
  *,
  points: list[dict] | None = None,
  command_prefix: list[str] | None = None,
  write: bool = True,
) -> list[Run]:
  """The runs of a sweep; `points` defaults to the experiment's `get_sweep`, dotted
  `extra_overrides` apply to all. With `write`, records them in `workdir/sweep.json`, refusing a
  workdir that holds a different sweep."""
  workdir, extra = Path(workdir), dict(extra_overrides or {})
  if points is None:
    from mmfree.configs import load_sweep  # the experiment loader lives with the configs

    points = load_sweep(spec)
  prefix = list(command_prefix or default_command())
  runs = []
  for point in points:
    name = run_name(point)
    args = [override_arg(k, v) for k, v in [*point.items(), *extra.items()]]
    cmd = [*prefix, "run", spec, "--workdir", str(workdir / name), *args]
    runs.append(Run(name, workdir / name, dict(point), cmd))
  names = [r.name for r in runs]
  if len(set(names)) < len(names):
    raise ValueError(f"{spec}: get_sweep repeats a point: {sorted(names)}")
  old = read_json(workdir / MANIFEST)
  if old and (old.get("spec"), _canonical(old.get("extra_overrides"))) != (spec, _canonical(extra)):
    raise ValueError(
      f"{workdir} holds the sweep {old.get('spec')} {old.get('extra_overrides')}, not "
      f"{spec} {extra}: use another --workdir"
    )
  if write:
    workdir.mkdir(parents=True, exist_ok=True)
    listed = [{"name": r.name, "overrides": r.overrides} for r in runs]
    write_json(workdir / MANIFEST, {"spec": spec, "extra_overrides": extra, "runs": listed})
  return runs


def run_sweep(
  spec: str,
  workdir: Path,
  workers: int = 1,
  extra_overrides: dict | None = None,
  dry_run: bool = False,
  command_prefix: list[str] | None = None,
  points: list[dict] | None = None,
) -> dict:
  """Runs what is not done yet, `workers` processes at a time; returns counts
  {done, failed, skipped}. A failed run is recorded in its status.json and the sweep carries on."""
  if workers < 1:
    raise ValueError(f"--workers must be at least 1, got {workers}")
  runs = plan(
    spec, workdir, extra_overrides, points=points, command_prefix=command_prefix, write=not dry_run
  )
  todo = [r for r in runs if run_status(r.dir) != "done"]
  summary = {"done": 0, "failed": 0, "skipped": len(runs) - len(todo)}
  print(f"{spec}: {len(runs)} runs in {workdir}, {summary['skipped']} done, {len(todo)} to run")
  if dry_run:
    for r in runs:
      print(f"  {run_status(r.dir):8} {r.name}\n           {shlex.join(r.command)}")
    return summary
  with _lock(Path(workdir)):
    failed = _run_all(todo, workers, summary)
  counts = ", ".join(f"{v} {k}" for k, v in summary.items())
  print(f"sweep {workdir}: {counts}")
  for r in failed:
    print(f"  failed {r.name}: {(read_json(r.dir / STATUS) or {}).get('error')}")
  return summary


def _lock(workdir: Path):
  """One sweep process per workdir: two would run the same points twice."""
  return exclusive(workdir / ".sweep.lock", RuntimeError(f"another sweep is running in {workdir}"))


def _interrupt(signum, frame):
  raise KeyboardInterrupt(f"signal {signum}")


def _run_all(todo: list[Run], workers: int, summary: dict) -> list[Run]:
  env = dict(os.environ, PYTHONUNBUFFERED="1")  # run.log keeps up with the child
  if workers > 1:  # JAX would otherwise give most of the accelerator's memory to the first run
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  pending, running, failed = list(todo), {}, []
  main_thread = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
  bar = tqdm(total=len(todo), desc="sweep", unit="run", dynamic_ncols=True)
  try:
    while pending or running:
      while pending and len(running) < workers:
        run = pending.pop(0)
        running[_start(run, env)] = (run, time.perf_counter())
        bar.write(f"start  {run.name}")
      time.sleep(_POLL_S)
      for proc in [p for p in running if p.poll() is not None]:
        run, t0 = running.pop(proc)
        ok = _finish(run, proc.returncode)
        summary["done" if ok else "failed"] += 1
        if not ok:
          failed.append(run)
        why = "" if ok else f" (exit {proc.returncode}, see {run.dir / LOG})"
        word = "done" if ok else "FAILED"
        bar.write(f"{word:6} {run.name} in {time.perf_counter() - t0:.1f}s{why}")
        bar.update()
  finally:
    _stop(list(running))
    bar.close()
    if main_thread:
      signal.signal(signal.SIGTERM, previous)
  return failed


def _start(run: Run, env: dict) -> subprocess.Popen:
  run.dir.mkdir(parents=True, exist_ok=True)
  with (run.dir / LOG).open("a") as log:
    log.write(f"\n=== {_now()} {shlex.join(run.command)}\n")
    log.flush()
    return subprocess.Popen(
      run.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
    )


def _finish(run: Run, code: int) -> bool:
  if code == 0:
    return True
  status = read_json(run.dir / STATUS) or {}
  if status.get("status") != "failed":  # the child died before it could say why
    why = f"exit code {code}" if code > 0 else f"killed by {signal.Signals(-code).name}"
    status = {**status, "status": "failed", "error": f"{why}, see {LOG}", "updated": _now()}
    write_json(run.dir / STATUS, status)
  return False


def _stop(procs: list[subprocess.Popen]):
  """Terminate, then kill what is still there: an interrupted sweep leaves no orphans."""
  for p in procs:
    p.terminate()
  deadline = time.monotonic() + 10
  for p in procs:
    try:
      p.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def _now() -> str:
  return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def add_parser(subparsers) -> argparse.ArgumentParser:
  """`sweep SPEC --workdir DIR [--workers N] [--dry-run] [--config.KEY=VALUE ...]`; the
  `--config.*` args are the leftovers of `parse_known_args`, passed to `cmd_sweep` as `extra`."""
  p = subparsers.add_parser(
    "sweep",
    help="run every point of an experiment's sweep (resumable)",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("spec", help="experiments/x.py or experiments/x.py:arg")
  p.add_argument("--workdir", required=True, help="sweep directory: one run directory per point")
  p.add_argument("--workers", type=int, default=1, help="runs at a time (default 1)")
  p.add_argument("--dry-run", action="store_true", help="list the runs and their status only")
  p.set_defaults(fn=cmd_sweep)
  return p


def cmd_sweep(args, extra: list[str]) -> int:
  """Exit code: 0 when every run is done, 1 when any failed, 130 when interrupted."""
  from mmfree.configs import parse_overrides

  overrides = parse_overrides(extra)
  try:
    s = run_sweep(args.spec, args.workdir, args.workers, overrides, args.dry_run)
  except KeyboardInterrupt:
    print(f"sweep interrupted: rerun the same command to resume {args.workdir}", file=sys.stderr)
    return 130
  except RuntimeError as e:  # another sweep holds the workdir
    print(f"mmfree sweep: error: {e}", file=sys.stderr)
    return 2
  return 1 if s["failed"] else 0
