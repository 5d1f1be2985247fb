"""`mmfree sweep --launcher slurm`, `mmfree search --launcher slurm` and `mmfree train --launcher
slurm` on the real local cluster (the `slurm` fixture): points as one job array, no duplicates
while queued, `--status`, a cancelled job's point resubmitted and finished; search trials as job
arrays; a 2-task training job (jax.distributed inside
the job step) against 1 process × 8 devices."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmfree import slurm as launcher

ROOT = Path(__file__).parent.parent
SPEC = str(ROOT / "experiments/tiny.py:smoke")  # 4 points, train and eval

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def _mmfree(*args, env=None, timeout=300) -> str:
  out = subprocess.run([sys.executable, "-m", "mmfree.cli", *args], capture_output=True, text=True,
                       env=env, timeout=timeout)  # fmt: skip
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  return out.stdout


def _jobs(d: Path) -> dict:
  return {p.parent.name: json.loads(p.read_text())["job_id"] for p in d.glob(f"*/{launcher.JOB}")}


def _wait(d: Path, timeout=400) -> str:
  deadline = time.monotonic() + timeout
  while True:
    table = _mmfree("sweep", SPEC, "--workdir", str(d), "--status")
    head = table.splitlines()[0]
    if "queued" not in head and "running" not in head:
      return table
    assert time.monotonic() < deadline, table
    time.sleep(2)


def test_sweep_points_as_jobs(slurm, tmp_path):
  d = tmp_path / "sweep"
  out = _mmfree("sweep", SPEC, "--workdir", str(d), "--launcher", "slurm")
  assert "4 submitted" in out
  first = _jobs(d)
  assert len(first) == 4 and len(set(first.values())) == 4
  assert len({j.split("_")[0] for j in first.values()}) == 1  # one job array
  again = _mmfree("sweep", SPEC, "--workdir", str(d), "--launcher", "slurm")
  assert "0 submitted" in again and _jobs(d) == first  # queued or running: not submitted twice
  # cancel one point's job: its run is left unfinished, and only it is submitted again
  victim = sorted(first)[0]
  subprocess.run(["scancel", first[victim]], check=True)
  table = _wait(d)
  assert f"| {victim} | " in table and "3 done" in table, table
  out = _mmfree("sweep", SPEC, "--workdir", str(d), "--launcher", "slurm")
  assert "1 submitted" in out and _jobs(d)[victim] != first[victim]
  table = _wait(d)
  assert table.splitlines()[0].endswith("4 done"), table
  assert "0 submitted" in _mmfree("sweep", SPEC, "--workdir", str(d), "--launcher", "slurm")


def test_search_trials_as_jobs(slurm, tmp_path):
  """`mmfree search --launcher slurm`: each batch of trials one job array, waited for."""
  d = tmp_path / "search"
  spec = str(ROOT / "experiments/quant_ablation.py:smoke")  # trains its own 1-layer model
  out = _mmfree("search", spec, "--workdir", str(d), "--trials", "2", "--workers", "2",
                "--launcher", "slurm", "--config.eval.precisions=('hw',)", timeout=900)  # fmt: skip
  assert "2 trials completed, 0 failed" in out, out[-3000:]
  jobs = _jobs(d)
  assert len(jobs) == 2 and len({j.split("_")[0] for j in jobs.values()}) == 1, jobs
  assert all((d / name / "measure.json").is_file() for name in jobs)
  again = _mmfree("search", spec, "--workdir", str(d), "--trials", "2", "--launcher", "slurm",
                  "--config.eval.precisions=('hw',)")  # fmt: skip
  assert f"search {d}: jobs" not in again and _jobs(d) == jobs  # nothing new submitted


def test_training_job_of_two_tasks_matches_one_process(slurm, tmp_path):
  from test_distributed import STEPS, TRAIN, _env, _finish, _losses, _params, _train

  ref, d = tmp_path / "ref", tmp_path / "job"
  _finish([_train(ref, 8, "--config.mesh.data=8")])
  env = {**_env(4), "JAX_PLATFORMS": "cpu"}
  out = _mmfree("train", "--workdir", str(d), *TRAIN, "--launcher", "slurm",
                "--slurm.tasks_per_node=2", "--slurm.time=10", env=env)  # fmt: skip
  job = json.loads((d / launcher.JOB).read_text())["job_id"]
  assert f"submitted job {job}" in out
  deadline = time.monotonic() + 400
  while launcher.queued([d]):
    assert time.monotonic() < deadline, (d / "run.log").read_text()[-2000:]
    time.sleep(2)
  assert len(_losses(d)) == STEPS, (d / "run.log").read_text()[-3000:]
  np.testing.assert_allclose(_losses(d), _losses(ref), rtol=1e-5)
  a, b = _params(ref), _params(d)
  assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-6
  assert (d / "run.task1.log").is_file()  # the second process of the job
  assert os.environ.get("SLURM_CONF")
