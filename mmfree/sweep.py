"""Sweeps: one run directory per point of an experiment's `get_sweep`, run as local processes
or submitted to SLURM (`--launcher slurm`, through submitit: `mmfree.slurm`).

`mmfree sweep experiments/x.py[:arg] --workdir DIR --workers N [--config.KEY=VALUE ...]` runs
`mmfree run` once per point into `DIR/<name>/`, up to N at a time; `--config.*` overrides apply
to every point, after the point's own. A point is its resolved config: the name is the overrides
that change it (readable) plus a hash of the whole, so `{}` and an override that sets the default
are one run, and editing the experiment file gives its points new runs. A run is done when it
finished with the config the experiment resolves to now; a finished run whose config differs is
stale (rerun, or listed when it is no longer a point). Rerunning the same command after a crash or
Ctrl-C completes only what is missing. `DIR/sweep.json` lists the points. Under SLURM the
command returns once the jobs are submitted; `--status` shows queued/running/done/failed.
"""

import argparse
import dataclasses
import datetime
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from mmfree import configs, slurm
from mmfree.configs import override_arg  # also sweep.override_arg
from mmfree.core import digest
from mmfree.core.dicts import flatten
from mmfree.core.experiment import config_changes
from mmfree.core.files import CONFIG, STATUS, exclusive, read_json, sigterm_as_interrupt, write_json

MANIFEST = "sweep.json"
LOG = "run.log"
_NAME_MAX = 80  # readable part of a run name; the hash keeps truncated names distinct
_POLL_S = 0.1


NOT_IDENTITY = ("experiment", "tracking", "stages")  # how a run is named and logged, not what


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  dir: Path
  overrides: dict
  command: list[str]
  config: dict  # the resolved config (`Experiment.to_dict()`), what `done` is checked against


def default_command() -> list[str]:
  return [sys.executable, "-m", "mmfree.cli"]


def identity(config: dict) -> str:
  """The hash that names a point: its resolved config, less how it is named, logged and staged."""
  return digest.json_sha256({k: v for k, v in config.items() if k not in NOT_IDENTITY})


def run_name(overrides: dict, config: dict) -> str:
  """`lr=0.001,hidden_size=64-1a2b3c4d`: the last key components (sorted by full key) of the
  overrides that change the config, values shortened, then 8 hex digits of its `identity`."""
  words = ",".join(f"{k.rsplit('.', 1)[-1]}={_short(overrides[k])}" for k in sorted(overrides))
  words = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", words)[:_NAME_MAX] or "base"
  return f"{words}-{identity(config)[:8]}"


def _short(v) -> str:
  if isinstance(v, float):
    return f"{v:g}"
  if isinstance(v, list | tuple):
    return "+".join(_short(x) for x in v)
  return str(v)


def run_status(run_dir: Path) -> str:
  return (read_json(Path(run_dir) / STATUS) or {}).get("status", "missing")


def is_stale(run: Run) -> bool:
  """A finished run whose config.json is not what the experiment resolves to now."""
  changed = config_changes(read_json(run.dir / CONFIG) or {}, run.config)
  return any(not k.startswith(("experiment.", "tracking.")) for k in changed)


def state(run: Run) -> str:
  """done, stale (finished with another config), failed, running or missing."""
  status = run_status(run.dir)
  return "stale" if status == "done" and is_stale(run) else status


def _changing(point: dict, config: dict) -> dict:
  """The overrides of `point` that the resolved config does not already hold as its base."""
  flat = flatten(config)
  same = lambda k, v: digest.json_sha256(flat.get(k)) == digest.json_sha256(v)
  return {k: v for k, v in point.items() if not same(k, v)}


def orphans(workdir: Path, runs: list[Run]) -> list[Path]:
  """Run directories in `workdir` that are no point of the sweep now (its file was edited)."""
  names = {r.name for r in runs}
  if not workdir.is_dir():
    return []
  return sorted(d for d in workdir.iterdir() if (d / CONFIG).is_file() and d.name not in names)


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
    points = configs.load_sweep(spec)
  prefix = list(command_prefix or default_command())
  base = configs.load_experiment(spec, extra).to_dict()
  runs, seen = [], {}
  for point in points:
    config = configs.load_experiment(spec, {**point, **extra}).to_dict()
    point = {k: v for k, v in point.items() if k not in extra}  # extra wins: not the point's
    name = run_name(_changing(point, base), config)
    if name in seen:  # e.g. {} and {"quant.act_bits": 8}, the default: one run
      print(f"{spec}: points {seen[name]} and {point} resolve to the same config: one run {name}")
      continue
    seen[name] = point
    args = [override_arg(k, v) for k, v in [*point.items(), *extra.items()]]
    cmd = [*prefix, "run", spec, "--workdir", str(workdir / name), *args]
    runs.append(Run(name, workdir / name, dict(point), cmd, config))
  old = read_json(workdir / MANIFEST)
  recorded = [old.get("spec"), old.get("extra_overrides")] if old else None
  if old and digest.json_sha256(recorded) != digest.json_sha256([spec, extra]):
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
  slurm_cfg: "slurm.SlurmConfig | None" = None,
) -> dict:
  """Runs what is not done yet, `workers` processes at a time, or submits it to SLURM
  (`slurm_cfg`); returns counts {done, failed, skipped, ...}. A failed run is recorded in its
  status.json and the sweep carries on."""
  if workers < 1:
    raise ValueError(f"--workers must be at least 1, got {workers}")
  runs = plan(
    spec, workdir, extra_overrides, points=points, command_prefix=command_prefix, write=not dry_run
  )
  states = {r.name: state(r) for r in runs}
  if slurm_cfg is not None:  # a point whose job still waits or runs is not submitted again
    waiting = slurm.queued([r.dir for r in runs if states[r.name] != "done"])
    states |= {r.name: f"queued ({waiting[r.dir]})" for r in runs if r.dir in waiting}
  todo = [r for r in runs if states[r.name] != "done" and not states[r.name].startswith("queued")]
  stale = [r.name for r in runs if states[r.name] == "stale"]
  summary = {"done": 0, "failed": 0, "skipped": len(runs) - len(todo), "stale": len(stale)}
  why = f" ({len(stale)} stale: finished with another config, rerun)" if stale else ""
  done = summary["skipped"]
  print(f"{spec}: {len(runs)} runs in {workdir}, {done} done, {len(todo)} to run{why}")
  gone = orphans(Path(workdir), runs)
  if gone:
    print(f"  {len(gone)} runs here are no point of the sweep now (stale, not counted): "
          + ", ".join(d.name for d in gone))  # fmt: skip
  if dry_run:
    for r in runs:
      print(f"  {states[r.name]:8} {r.name}\n           {shlex.join(r.command)}")
    return summary
  if slurm_cfg is not None:
    return _submit(spec, Path(workdir), todo, slurm_cfg, summary, states)
  with _lock(Path(workdir)):
    failed = run_all(todo, workers, summary)
  counts = ", ".join(f"{v} {k}" for k, v in summary.items())
  print(f"sweep {workdir}: {counts}")
  for r in failed:
    print(f"  failed {r.name}: {(read_json(r.dir / STATUS) or {}).get('error')}")
  return summary


def _submit(spec, workdir: Path, todo: list[Run], cfg, summary: dict, states: dict) -> dict:
  """The points not done and not queued, as one job array; `--status` follows them."""
  summary["queued"] = sum(v.startswith("queued") for v in states.values())
  summary["skipped"] -= summary["queued"]
  with _lock(workdir):
    ids = slurm.submit(todo, workdir, cfg, Path(spec).stem) if todo else []
  summary["submitted"] = len(ids)
  for r, j in zip(todo, ids, strict=True):
    print(f"  submitted {r.name}: job {j}")
  print(f"sweep {workdir}: {', '.join(f'{v} {k}' for k, v in summary.items())}; follow it "
        f"with `mmfree sweep {spec} --workdir {workdir} --status`")  # fmt: skip
  return summary


def status_table(spec: str, workdir: Path, extra_overrides: dict | None = None) -> str:
  """Each point's state: done, failed, running, queued (SLURM), stale or missing."""
  runs = plan(spec, workdir, extra_overrides, write=False)
  states = {r.name: state(r) for r in runs}
  active = slurm.queued([r.dir for r in runs]) if shutil.which("squeue") else {}
  lines = ["| point | state | job |", "|---|---|---|"]
  counts = {}
  for r in runs:
    s = states[r.name]
    if r.dir in active:  # SLURM knows best whether a job still waits
      s = "queued" if active[r.dir] == "PENDING" else "running"
    elif s == "running":  # a status.json left "running" by a job that is gone
      s = "interrupted" if slurm.recorded_job(r.dir) else s
    counts[s] = counts.get(s, 0) + 1
    lines.append(f"| {r.name} | {s} | {slurm.recorded_job(r.dir) or ''} |")
  total = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
  return "\n".join([f"{spec} in {workdir}: {total}", "", *lines])


def _lock(workdir: Path):
  """One sweep process per workdir: two would run the same points twice."""
  return exclusive(workdir / ".sweep.lock", RuntimeError(f"another sweep is running in {workdir}"))


def run_all(todo: list[Run], workers: int, summary: dict, env: dict | None = None) -> list[Run]:
  """Runs `todo`, `workers` at a time, with `env` added to the children's environment."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))  # run.log keeps up with the child
  if workers > 1:  # JAX would otherwise give most of the accelerator's memory to the first run
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  pending, running, failed = list(todo), {}, []
  bar = tqdm(total=len(todo), desc="sweep", unit="run", dynamic_ncols=True)
  with sigterm_as_interrupt():
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
  p.add_argument(
    "--status",
    action="store_true",
    help="each point's state: done, failed, running, queued (SLURM), stale, missing",
  )
  slurm.add_arguments(p)
  p.set_defaults(fn=cmd_sweep)
  return p


def cmd_sweep(args, extra: list[str]) -> int:
  """Exit code: 0 when every run is done, 1 when any failed, 130 when interrupted."""
  from mmfree.configs import parse_overrides

  overrides = parse_overrides(extra)
  if args.status:
    print(status_table(args.spec, Path(args.workdir), overrides))
    return 0
  cluster = slurm.from_args(args) if args.launcher == "slurm" else None
  try:
    s = run_sweep(args.spec, args.workdir, args.workers, overrides, args.dry_run,
                  slurm_cfg=cluster)  # fmt: skip
  except KeyboardInterrupt:
    print(f"sweep interrupted: rerun the same command to resume {args.workdir}", file=sys.stderr)
    return 130
  except RuntimeError as e:  # another sweep holds the workdir
    print(f"mmfree sweep: error: {e}", file=sys.stderr)
    return 2
  return 1 if s["failed"] else 0
