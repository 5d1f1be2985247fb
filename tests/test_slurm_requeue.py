"""A training job preempted on the test SLURM cluster (the `slurm` fixture) after a checkpoint:
submitit's signal handler calls `Command.checkpoint()` and requeues the job, and the rerun
resumes from the saved step and ends where an uninterrupted run does."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmfree import slurm as launcher
from mmfree.cli import main
from mmfree.core.files import STATUS, latest_step, read_json

ROOT = Path(__file__).parent.parent
STEPS, CKPT_EVERY = 40, 2  # a checkpoint within a second of the first step, many steps after it
TRAIN = ["--config", str(ROOT / "experiments/tiny.py:smoke"), f"--config.train.steps={STEPS}",
         f"--config.train.ckpt_every={CKPT_EVERY}", "--config.train.log_every=1",
         f"--config.train.eval_every={STEPS}"]  # fmt: skip
TIMEOUT_S = 300  # each wait; a start is import and compile, slow on a loaded 2-core machine

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def _job(job: str) -> dict[str, str]:
  """`scontrol show job`'s fields: the controller keeps an ended job MinJobAge s (no sacct)."""
  out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True,
                       timeout=30, check=True).stdout  # fmt: skip
  return dict(f.split("=", 1) for f in out.split() if "=" in f)


def _logs(d: Path, job: str) -> str:
  """For failure messages: the tails of the run's log and of the job's stdout and stderr."""
  paths = [d / "run.log", *sorted((d / launcher.FOLDER / job).glob("*_log.*"))]
  tails = [f"--- {p} ---\n{p.read_text(errors='replace')[-2000:] if p.exists() else '(none)'}"
           for p in paths]  # fmt: skip
  return "\n".join(tails)


def _wait(until, what: str, d: Path, job: str):
  """until()'s first truthy value, polled; a failure with the job's logs after TIMEOUT_S."""
  deadline = time.monotonic() + TIMEOUT_S
  while not (value := until()):
    assert time.monotonic() < deadline, f"job {job}: {what} after {TIMEOUT_S} s\n{_logs(d, job)}"
    time.sleep(0.2)
  return value


def _losses(d: Path) -> dict[int, float]:
  rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture
def reference(tmp_path):
  """The uninterrupted run (`tmp_path/ref`), training alongside the job so that it adds little
  wall time; stopped if the test fails before it ends."""
  cmd = [sys.executable, "-m", "mmfree.cli", "train", "--workdir", str(tmp_path / "ref"), *TRAIN]
  with (tmp_path / "ref.log").open("w") as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
  yield proc
  if proc.poll() is None:
    proc.kill()
    proc.wait()


# USR2 alone: the time limit's warning. SIGTERM first: a preemption as submitit models it, which
# stops the command before submitit's USR2 arrives (`Command` waits for it instead of failing).
@pytest.mark.parametrize("signals", [("USR2",), ("TERM", "USR2")], ids="+".join)
def test_preempted_training_job_is_requeued_and_resumes(slurm, reference, tmp_path, signals):
  d = tmp_path / "job"
  main(["train", "--workdir", str(d), *TRAIN, "--launcher", "slurm"])
  job = launcher.recorded_job(d)

  def checkpointed():
    assert launcher.queued([d]), f"job {job} ended before a checkpoint\n{_logs(d, job)}"
    return latest_step(d)

  saved = _wait(checkpointed, "no checkpoint", d, job)
  # What SLURM sends before the time limit (submitit's `--signal=USR2@90`): to the job step's
  # processes. Not `--full`: the batch shell would die of it, racing the requeue.
  for i, name in enumerate(signals):
    time.sleep(3 if i else 0)  # the command has stopped at the SIGTERM by then
    sig = subprocess.run(["scancel", f"--signal={name}", job], capture_output=True, text=True,
                         timeout=30)  # fmt: skip
    assert sig.returncode == 0, f"{sig.stderr}\n{_logs(d, job)}"

  def requeued():
    info = _job(job)
    state = info["JobState"]  # after COMPLETING (the old run's end): PENDING
    return info["Restarts"] != "0" and state not in ("COMPLETING", "REQUEUED") and state

  if _wait(requeued, "not requeued", d, job) == "PENDING":
    # A requeued job may start again only once its old credential expires (AuthInfo
    # cred_expire, 120 s by default): start it now. A second on, as slurmd refuses a credential
    # no newer than the revocation, to the second.
    time.sleep(1)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
  _wait(lambda: not launcher.queued([d]), "still queued or running", d, job)

  info, logs = _job(job), _logs(d, job)
  assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), logs
  out = (d / launcher.FOLDER / job / f"{job}_0_log.out").read_text()
  # Not submitit's "Requeued job" line: SLURM may kill `scontrol requeue` (a process of the job)
  # before it returns, once the requeue has taken; Restarts=1 and a second start are the proof.
  assert out.count("Starting with JobEnvironment") == 2, logs
  log = (d / "run.log").read_text()
  resumed = [int(k) for k in re.findall(r"resuming \S+ from step (\d+)", log)]
  assert len(resumed) == 1 and saved <= resumed[0] < STEPS, logs
  assert read_json(d / STATUS)["status"] == "done", logs
  assert reference.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "ref.log").read_text()[-3000:]
  # Rows past the checkpoint were dropped and replayed: one per step, the uninterrupted run's.
  losses, expected = _losses(d), _losses(tmp_path / "ref")
  assert list(losses) == list(range(1, STEPS + 1)), logs
  np.testing.assert_allclose(list(losses.values()), list(expected.values()), rtol=1e-6)
