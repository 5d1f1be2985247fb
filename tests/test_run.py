"""`mmfree run`: stages, skipping, resuming bit-exactly after SIGKILL, refusing NaN."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mmfree import configs
from mmfree.cli import main
from mmfree.run import run_experiment
from mmfree.store import checkpoint
from mmfree.store.metrics import read_jsonl

ROOT = Path(__file__).parent.parent
SMOKE = str(ROOT / "experiments/tiny.py:smoke")
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.py"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_runs_in_smoke_mode(path, tmp_path):
  main(["run", f"{path}:smoke", "--workdir", str(tmp_path)])
  status = json.loads((tmp_path / "status.json").read_text())
  assert status["status"] == "done", status
  cfg = json.loads((tmp_path / "config.json").read_text())
  assert cfg["experiment"]["spec"].endswith(":smoke") and "data_info" in cfg
  if "eval" in cfg["stages"]:
    ev = json.loads((tmp_path / "eval.json").read_text())
    for precision in cfg["eval"]["precisions"] or [cfg["model"]["precision"]]:
      assert np.isfinite(ev[precision]["loss"]) and ev[precision]["tokens"] > 0


def test_finished_stages_are_skipped_and_changed_configs_refused(tmp_path):
  main(["run", SMOKE, "--workdir", str(tmp_path)])
  before = (tmp_path / "metrics.jsonl").read_text()
  stamp = (tmp_path / "eval.json").stat().st_mtime_ns
  main(["run", SMOKE, "--workdir", str(tmp_path)])
  assert (tmp_path / "metrics.jsonl").read_text() == before
  assert (tmp_path / "eval.json").stat().st_mtime_ns == stamp
  with pytest.raises(SystemExit, match=r"different config \(train.lr\)"):
    main(["run", SMOKE, "--workdir", str(tmp_path), "--config.train.lr=0.5"])


def test_non_finite_training_stops_without_a_bad_checkpoint(tmp_path):
  exp = configs.load_experiment(SMOKE, {"train.lr": float("nan"), "train.ckpt_every": 1})
  with pytest.raises(FloatingPointError, match="non-finite"):
    run_experiment(exp, tmp_path)
  status = json.loads((tmp_path / "status.json").read_text())
  assert status["status"] == "failed" and "FloatingPointError" in status["error"]
  with checkpoint.manager(tmp_path) as mgr:
    assert mgr.latest_step() is None


def _train_cmd(workdir):
  overrides = ["--config.train.steps=300", "--config.train.ckpt_every=10",
               "--config.train.log_every=10", "--config.train.eval_every=100"]  # fmt: skip
  return [sys.executable, "-m", "mmfree.cli", "train", "--config", SMOKE,
          "--workdir", str(workdir), *overrides]  # fmt: skip


def _latest(workdir):
  d = Path(workdir) / "checkpoints"
  steps = [int(p.name) for p in d.iterdir() if p.name.isdigit()] if d.is_dir() else []
  return max(steps, default=0)


@pytest.mark.slow
def test_sigkilled_run_resumes_to_bit_identical_parameters(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  subprocess.run(_train_cmd(tmp_path / "straight"), check=True, env=env, capture_output=True)

  killed = tmp_path / "killed"
  proc = subprocess.Popen(_train_cmd(killed), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)  # fmt: skip
  while _latest(killed) < 50 and proc.poll() is None:
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert 50 <= _latest(killed) < 300, "the run must be killed mid-way"
  subprocess.run(_train_cmd(killed), check=True, env=env, capture_output=True)

  cfg = checkpoint.model_config(killed)
  a = checkpoint.restore_params(tmp_path / "straight", cfg)
  b = checkpoint.restore_params(killed, cfg)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  rows_a = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
  rows_b = read_jsonl(killed / "metrics.jsonl")
  strip = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]
  assert strip(rows_a) == strip(rows_b)  # nothing lost, nothing logged twice


@pytest.mark.slow
def test_data_parallel_training_over_8_devices_matches_one(tmp_path):
  """Batches split over a 'data' mesh of 8 host devices give the single-device result."""
  cmds = {
    n: [*_train_cmd(tmp_path / f"dev{n}")[:-4], "--config.train.steps=4",
        "--config.train.batch_size=8", "--config.train.ckpt_every=4"]
    for n in (1, 8)
  }  # fmt: skip
  for n, cmd in cmds.items():
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
    subprocess.run(cmd, check=True, env=env, capture_output=True)
  cfg = checkpoint.model_config(tmp_path / "dev1")
  one = checkpoint.restore_params(tmp_path / "dev1", cfg)
  eight = checkpoint.restore_params(tmp_path / "dev8", cfg)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), one, eight)
