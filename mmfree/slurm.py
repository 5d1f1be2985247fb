"""SLURM through submitit: sweep points as jobs (one job array), a run as one multi-node job.

A point's job runs the same `mmfree run` command the local launcher would, so the semantics are
the local ones: a finished run is skipped, a run resumes from its last checkpoint, a failure is
in its status.json. The job is submitit-checkpointable: on preemption or at its time limit
submitit requeues it, and the rerun resumes. `DIR/<name>/slurm.json` records the point's job; a
point whose job is still queued or running (by `squeue`) is not submitted again, so resubmitting
a sweep while its jobs wait makes no duplicates. A training job of `--slurm.nodes N` nodes runs
`tasks_per_node` tasks a node, each one process of the multi-host training (`jax.distributed`
reads SLURM's variables inside the job step).
"""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mmfree.core.files import read_json, write_json

JOB = "slurm.json"  # in a run directory: the job that runs it
PREEMPT_GRACE_S = 90  # how long a command stopped by a signal waits for submitit's USR2
# a command stopped by SIGTERM or Ctrl-C: Python re-raises KeyboardInterrupt as SIGINT
INTERRUPTED = (-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM)
FOLDER = ".submitit"  # in a sweep or run directory: submitit's scripts and job logs
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING",
          "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SlurmConfig:
  """`--slurm.<field>`: where and how big a job is."""

  partition: str = ""  # the cluster's default when empty
  nodes: int = 1
  tasks_per_node: int = 1  # processes a node: one per accelerator, or one for all of them
  gpus_per_node: int = 0
  cpus_per_task: int = 1
  mem_gb: float = 0  # 0: the partition's default
  time: int = 60  # minutes a job may run before it is requeued
  array_parallelism: int = 0  # sweep jobs running at once (0: no limit)

  def __post_init__(self):
    for f in ("nodes", "tasks_per_node", "cpus_per_task", "time"):
      if getattr(self, f) < 1:
        raise ValueError(f"--slurm.{f}={getattr(self, f)}: must be at least 1")
    for f in ("gpus_per_node", "mem_gb", "array_parallelism"):
      if getattr(self, f) < 0:
        raise ValueError(f"--slurm.{f}={getattr(self, f)}: must be 0 or more")


class Command:
  """A job's work: one command, rerun from where it stopped when submitit requeues the job."""

  def __init__(self, command: list[str], log: Path):
    self.command, self.log = list(command), Path(log)

  def __call__(self) -> int:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    task = int(os.environ.get("SLURM_PROCID", "0"))  # a multi-task job: a log per task
    log = self.log if task == 0 else self.log.with_suffix(f".task{task}.log")
    with log.open("a") as out:
      code = subprocess.run(self.command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code in INTERRUPTED:
      # A preemption may send SIGTERM before submitit's USR2: the command stops at the SIGTERM,
      # and failing now would end the job before submitit can requeue it. A cancel kills us.
      time.sleep(PREEMPT_GRACE_S)
    if code:
      raise RuntimeError(f"{' '.join(self.command[3:5])} exited {code}: see {log}")
    return code

  def checkpoint(self, *args, **kwargs):
    """Requeue the same command: runs resume from their own checkpoints and stage outputs."""
    import submitit

    return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def executor(folder: Path, cfg: SlurmConfig, name: str):
  import submitit

  ex = submitit.AutoExecutor(folder=Path(folder) / FOLDER / "%j", cluster="slurm")
  params = {"slurm_partition": cfg.partition or None, "nodes": cfg.nodes,
            "tasks_per_node": cfg.tasks_per_node, "cpus_per_task": cfg.cpus_per_task,
            "gpus_per_node": cfg.gpus_per_node or None, "mem_gb": cfg.mem_gb or None,
            "timeout_min": cfg.time, "name": name,
            "slurm_array_parallelism": cfg.array_parallelism or None}  # fmt: skip
  ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
  return ex


def job_states(job_ids: list[str]) -> dict[str, str]:
  """{job id: state} of the jobs SLURM still knows (`squeue`); finished ones are absent."""
  ids = [j for j in job_ids if j]
  if not ids:
    return {}
  # -r: one line per array element, pending ones too ("123_4", not "123_[4-7]")
  cmd = ["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(ids)]
  out = subprocess.run(cmd, capture_output=True, text=True)
  if out.returncode and "Invalid job id" not in out.stderr:  # all of them gone: none is queued
    raise RuntimeError(f"squeue failed: {out.stderr.strip()}")
  return dict(line.split() for line in out.stdout.splitlines())


def recorded_job(run_dir: Path) -> str | None:
  return (read_json(Path(run_dir) / JOB) or {}).get("job_id")


def queued(run_dirs: list[Path]) -> dict[Path, str]:
  """{run directory: SLURM state} of those whose recorded job is still queued or running."""
  jobs = {d: recorded_job(d) for d in run_dirs}
  states = job_states([j for j in jobs.values() if j])
  return {d: states[j] for d, j in jobs.items() if j in states and states[j] in ACTIVE}


def submit(runs: list, folder: Path, cfg: SlurmConfig, name: str) -> list[str]:
  """Submit each run (`sweep.Run`) as a job of one array; record its job id in its directory."""
  ex = executor(folder, cfg, name)
  jobs = []
  with ex.batch():
    for run in runs:
      run.dir.mkdir(parents=True, exist_ok=True)
      jobs.append(ex.submit(Command(run.command, run.dir / "run.log")))
  for run, job in zip(runs, jobs, strict=True):
    write_json(run.dir / JOB, {"job_id": job.job_id, "folder": str(Path(folder) / FOLDER)})
  return [j.job_id for j in jobs]


def submit_training(command: list[str], run_dir: Path, cfg: SlurmConfig) -> str:
  """One job of cfg.nodes × cfg.tasks_per_node processes running `command` (multi-host training:
  each task joins `jax.distributed` through SLURM's variables). Refused while one still runs."""
  run_dir = Path(run_dir)
  busy = queued([run_dir])
  if busy:
    raise RuntimeError(f"{run_dir} already has job {recorded_job(run_dir)} ({busy[run_dir]})")
  run_dir.mkdir(parents=True, exist_ok=True)
  job = executor(run_dir, cfg, run_dir.name).submit(Command(command, run_dir / "run.log"))
  write_json(run_dir / JOB, {"job_id": job.job_id, "folder": str(run_dir / FOLDER)})
  return job.job_id


def this_command() -> list[str]:
  """The python that runs mmfree here, as a job's command prefix."""
  return [sys.executable, "-m", "mmfree.cli"]


def add_arguments(p):
  """`--launcher local|slurm` and a `--slurm.<field>` option per SlurmConfig field."""
  p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                 help="run here (default), or submit to SLURM through submitit")  # fmt: skip
  g = p.add_argument_group("SLURM jobs (--launcher slurm)")
  for f in dataclasses.fields(SlurmConfig):
    g.add_argument(f"--slurm.{f.name}", dest=f"slurm_{f.name}", type=type(f.default),
                   default=f.default, help=f"default {f.default!r}")  # fmt: skip


def from_args(args) -> SlurmConfig:
  return SlurmConfig(
    **{f.name: getattr(args, f"slurm_{f.name}") for f in dataclasses.fields(SlurmConfig)}
  )
