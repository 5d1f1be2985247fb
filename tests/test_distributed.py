"""Where training runs changes nothing it computes: 8×1 and 1×8 meshes, 2 processes × 4 CPU
devices (real `jax.distributed`, gloo collectives) against 1 process × 8, a killed process resumed
on another process count, a failing process stopping the other with its message.

Tolerance: float32 reduction order. Sharded and replicated layouts sum gradients in another
order, so losses agree to RTOL and parameters to ATOL (a BitLinear kernel's entries are ~0.02;
AdamW divides by √v, so a near-zero gradient's reordered bits move its update most: 1×8 against
8×1 measured 7e-6 after 6 steps; measured differences are printed with -s)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmfree.algorithms import mesh
from mmfree.core.dicts import flatten
from mmfree.core.train import MeshConfig
from mmfree.store.checkpoint import read_params

ROOT = Path(__file__).parent.parent
STEPS = 6
TRAIN = ["--config", str(ROOT / "experiments/tiny.py:smoke"), f"--config.train.steps={STEPS}",
         "--config.train.batch_size=8", "--config.train.log_every=1",
         "--config.train.ckpt_every=3", "--config.train.eval_every=3"]  # fmt: skip
RTOL, ATOL = 1e-5, 1e-5

# one worker runs them all, in order: they share the reference run
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed")]


def _env(devices: int) -> dict:
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_PLATFORMS": "cpu"}  # fmt: skip


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train(d: Path, devices: int, *extra: str, **kw) -> subprocess.Popen:
  cmd = [sys.executable, "-m", "mmfree.cli", "train", "--workdir", str(d), *TRAIN, *extra]
  return subprocess.Popen(cmd, env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kw)  # fmt: skip


def _processes(d: Path, n: int, devices: int, extra=((), ())) -> list[subprocess.Popen]:
  port = _port()
  return [_train(d, devices, "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n),
                 "--process-id", str(i), *extra[i]) for i in range(n)]  # fmt: skip


def _finish(procs, timeout=400) -> list[str]:
  outs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 0, out[-3000:]
  return outs


def _losses(d: Path) -> np.ndarray:
  rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
  return np.array([r["loss"] for r in rows if "loss" in r])


def _params(d: Path) -> dict:
  return {k: np.asarray(v) for k, v in flatten(read_params(d)[1]).items()}


def _agree(a: Path, b: Path, what: str):
  la, lb = _losses(a), _losses(b)
  assert len(la) == len(lb) == STEPS
  np.testing.assert_allclose(lb, la, rtol=RTOL, err_msg=what)
  pa, pb = _params(a), _params(b)
  assert pa.keys() == pb.keys()
  worst = max(float(np.abs(pa[k] - pb[k]).max()) for k in pa)
  print(f"{what}: loss rel. diff {np.abs(lb / la - 1).max():.2e}, parameters {worst:.2e}")
  assert worst <= ATOL, what


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """1 process × 8 devices, data-parallel (mesh 8×1): the reference."""
  d = tmp_path_factory.mktemp("mesh") / "8x1"
  _finish([_train(d, 8, "--config.mesh.data=8", "--config.mesh.fsdp=1")])
  return d


def test_fsdp_mesh_matches_data_parallel(one_process, tmp_path):
  d = tmp_path / "1x8"
  _finish([_train(d, 8, "--config.mesh.data=1", "--config.mesh.fsdp=8")])
  _agree(one_process, d, "1x8 against 8x1")


def test_two_processes_match_one(one_process, tmp_path):
  d = tmp_path / "2proc"
  outs = _finish(_processes(d, 2, 4))
  assert "train" in outs[0] and "step 3: val_loss" in outs[0]
  assert "step 3: val_loss" not in outs[1]  # progress and metrics from process 0 alone
  _agree(one_process, d, "2 processes x 4 devices against 1 x 8")


def test_killed_process_resumes_on_another_process_count(one_process, tmp_path):
  """One of two processes is killed after the step-3 checkpoint; the other stops; the run
  resumes from step 3 on 1 process × 8 devices and ends where the uninterrupted run did."""
  d = tmp_path / "killed"
  procs = _processes(d, 2, 4)
  deadline = time.monotonic() + 300
  while not (d / "checkpoint_digests.json").exists() or "3" not in json.loads(
    (d / "checkpoint_digests.json").read_text()
  ):  # fmt: skip
    assert time.monotonic() < deadline and procs[1].poll() is None, "no step-3 checkpoint"
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGKILL)
  out0 = procs[0].communicate(timeout=300)[0]
  assert procs[0].returncode != 0, out0[-2000:]  # stopped, not hung
  assert json.loads((d / "checkpoint_digests.json").read_text()).keys() <= {"3", "6"}
  out = _finish([_train(d, 8)])[0]
  assert "resuming" in out
  _agree(one_process, d, "killed at step 3, resumed on 1 process")


def test_a_failing_process_stops_the_other_with_its_message(tmp_path):
  # process 1 misconfigured: its batch does not split over the 8 devices; process 0 is fine and
  # would wait for it in the first collective
  procs = _processes(tmp_path / "fail", 2, 4, ((), ("--config.train.batch_size=12",)))
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode != 0 for p in procs)
  assert "train.batch_size=12 must split" in outs[1]
  assert "stopping, process 1: ValueError: train.batch_size=12" in outs[0], outs[0][-2000:]


def test_mesh_shapes_and_parameter_layout():
  assert MeshConfig().shape(8) == (8, 1) and MeshConfig(data=2, fsdp=0).shape(8) == (2, 4)
  with pytest.raises(ValueError, match="mesh.data=3 x mesh.fsdp=2 = 6 devices, but there are 8"):
    MeshConfig(data=3, fsdp=2).shape(8)
  with pytest.raises(ValueError, match="8 devices do not split into groups of 3"):
    MeshConfig(data=0, fsdp=3).shape(8)
  P = mesh.PartitionSpec
  assert mesh.spec((4096, 1024), 8) == P("fsdp", None)  # the largest dimension
  assert mesh.spec((1024, 2816), 8) == P(None, "fsdp")
  assert mesh.spec((1020, 24), 8) == P(None, "fsdp")  # 1020 does not split 8 ways; 24 does
  assert mesh.spec((1023,), 8) == P() and mesh.spec((), 8) == P()  # replicated
  assert mesh.spec((4096, 1024), 1) == P()
