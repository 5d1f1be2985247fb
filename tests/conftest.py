"""Fixtures shared across test modules (and across pytest-xdist workers: built once, by whichever
worker gets there first, in the session's shared temporary directory)."""

import contextlib
import fcntl
import os
from pathlib import Path

import pytest

from mmfree import configs
from mmfree.cli import main
from mmfree.run import run_experiment

ROOT = Path(__file__).parent.parent
SMOKE = str(ROOT / "experiments/tiny.py:smoke")


def _session_tmp(tmp_path_factory) -> Path:
  """The temporary directory all of the session's processes share."""
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's is popen-gwN under the session's
    shared = shared.parent
  return shared


@contextlib.contextmanager
def _built_once(tmp_path_factory, name: str):
  """Yields (directory, whether to build it): one worker builds, the others wait and reuse."""
  shared = _session_tmp(tmp_path_factory)
  d, done = shared / name, shared / f"{name}.done"
  with open(shared / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield d, not done.exists()
    done.touch()


@pytest.fixture(scope="session")
def calibrated_run(tmp_path_factory):
  """A trained 2-layer byte-level model (layer 1 has a lower bound), calibrated for `hw`.
  Shared: tests copy it before changing it."""
  with _built_once(tmp_path_factory, "calibrated") as (d, build):
    if build:
      main(["train", "--config", SMOKE, "--workdir", str(d), "--config.train.steps=20",
            "--config.model.num_hidden_layers=2"])  # fmt: skip
      main(["quantize", "calibrate", str(d), "--batches", "4", "--seq-len", "32"])
  return d


@pytest.fixture(scope="session")
def full_run(tmp_path_factory):
  """The smoke model through every stage (both precisions, the program, its measurement).
  Shared: tests copy it before changing it."""
  full = {"stages": configs.STAGES, "eval.precisions": ("bitnet", "hw"),
          "loihi.check_tokens": 8, "loihi.measure_tokens": 8, "loihi.new_tokens": 2}  # fmt: skip
  with _built_once(tmp_path_factory, "full_run") as (d, build):
    if build:
      run_experiment(configs.load_experiment(SMOKE, full), d)
  return d


@pytest.fixture(scope="session")
def measured_sweep(tmp_path_factory):
  """experiments/quant_ablation.py:smoke swept end to end (2 points, each trained, calibrated,
  evaluated at `bitnet` and `hw`, lowered, checked bit-exact and measured): about 90 s."""
  from mmfree.sweep import run_sweep

  with _built_once(tmp_path_factory, "quant_ablation") as (d, build):
    if build:
      counts = run_sweep(str(ROOT / "experiments/quant_ablation.py:smoke"), d, 2)
      assert counts["failed"] == 0 and counts["done"] == 2, counts
  return d


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
  """A real single-node SLURM cluster (tests/slurm_cluster.py); its client environment
  (SLURM_CONF, PATH) is set in os.environ for the session. Skipped where SLURM cannot be had,
  except in CI (CI=true), where that fails.

  One cluster for all of a session's xdist workers: under a file lock in the shared temporary
  directory, a count of the processes using it. The first starts it, the last to finish stops
  it, so a worker done early never pulls it from under another (and a worker that comes to it
  after that starts it again)."""
  import slurm_cluster  # conftest's directory is on sys.path

  if reason := slurm_cluster.available():
    if os.environ.get("CI") != "true":
      pytest.skip(f"no SLURM: {reason}")
    pytest.fail(f"CI needs the SLURM cluster: {reason}")
  shared = _session_tmp(tmp_path_factory)
  d, users = shared / "slurm", shared / "slurm.users"

  @contextlib.contextmanager
  def locked():
    with open(shared / "slurm.lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      yield

  with locked():
    slurm_cluster.install()
    env = slurm_cluster.start(d)
    users.write_text(str(int(users.read_text() if users.exists() else 0) + 1))
  with pytest.MonkeyPatch.context() as mp:
    for k, v in env.items():
      mp.setenv(k, v)
    yield env
  with locked():
    left = int(users.read_text()) - 1
    users.write_text(str(left))
    if left == 0:
      slurm_cluster.stop(d)
