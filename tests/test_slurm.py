"""Real jobs on the test SLURM cluster (the `slurm` fixture): through submitit, one task and two,
and a plain `sbatch --wrap`."""

import os
import subprocess
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]

JOB_TIMEOUT_S = 45


def _executor(folder, **params):
  import submitit

  ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
  ex.update_parameters(timeout_min=2, slurm_partition="debug", **params)
  return ex


def _final_state(job, timeout_s: float = JOB_TIMEOUT_S) -> str:
  """The job's state through submitit's own query (sacct), once SLURM has finished it: the result
  file is written before the job ends, so the state can lag the result a moment."""
  deadline = time.monotonic() + timeout_s
  while True:
    state = job.get_info(mode="force").get("State", "UNKNOWN")
    if state not in ("PENDING", "RUNNING", "COMPLETING", "UNKNOWN") or time.monotonic() > deadline:
      return state
    time.sleep(0.5)


def test_submitit_job(slurm, tmp_path):
  # Local, so cloudpickle sends it by value: the job's Python cannot import this test module.
  def work(x):
    return os.environ["SLURM_JOB_ID"], x * x

  job = _executor(tmp_path).submit(work, 12)
  assert job.result() == (job.job_id, 144)
  assert _final_state(job) == "COMPLETED"
  assert job.done(force_check=True)


def test_submitit_two_tasks(slurm, tmp_path):
  # Each task is its own process under `srun -n 2`: its rank, its job, its pid.
  def rank():
    return int(os.environ["SLURM_PROCID"]), os.environ["SLURM_JOB_ID"], os.getpid()

  job = _executor(tmp_path, tasks_per_node=2, cpus_per_task=1).submit(rank)
  results = job.results()
  assert sorted(r for r, _, _ in results) == [0, 1]
  assert {j for _, j, _ in results} == {job.job_id}
  assert len({pid for _, _, pid in results}) == 2
  assert _final_state(job) == "COMPLETED"


def test_sbatch_wrap(slurm, tmp_path):
  out = tmp_path / "out.txt"
  r = subprocess.run(["sbatch", "--parsable", "-n", "2", f"--output={out}", f"--chdir={tmp_path}",
                      "--wrap", "srun -n 2 sh -c 'echo task $SLURM_PROCID'"],
                     capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
  job_id = r.stdout.strip().split(";")[0]
  deadline = time.monotonic() + JOB_TIMEOUT_S
  while True:  # no accounting storage: ask the controller, which keeps ended jobs MinJobAge s
    show = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                          timeout=30, check=True).stdout  # fmt: skip
    state = show.split("JobState=")[1].split()[0]
    if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
      break
    assert time.monotonic() < deadline, f"job {job_id} still {state} after {JOB_TIMEOUT_S} s"
    time.sleep(0.5)
  assert state == "COMPLETED", show
  assert sorted(out.read_text().split("\n")[:-1]) == ["task 0", "task 1"]
  # The sacct the cluster puts on PATH (see slurm_cluster.SACCT_SHIM) reports it too.
  acct = subprocess.run(["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", job_id],
                        capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
  assert f"{job_id}|COMPLETED|" in acct, acct
