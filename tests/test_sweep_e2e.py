"""The acceptance test with real runs: a 4-point sweep of experiments/tiny.py:smoke, 2 workers,
killed mid-way and rerun, completes only the missing runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmfree import configs, results, sweep
from mmfree.store.metrics import read_jsonl

SPEC = str(Path(__file__).parent.parent / "experiments/tiny.py:smoke")
DRIVER = "import sys; from mmfree.sweep import run_sweep; run_sweep(sys.argv[1], sys.argv[2], 2)"


def _outputs(d: Path) -> dict:
  return {f: (d / f).stat().st_mtime_ns for f in ("eval.json", "metrics.jsonl")}


@pytest.mark.slow
def test_real_sweep_killed_and_rerun_completes_only_missing_runs(tmp_path):
  work = tmp_path / "sweep"
  points = configs.load_sweep(SPEC)
  assert len(points) == 4
  dirs = [r.dir for r in sweep.plan(SPEC, work, write=False)]
  proc = subprocess.Popen(
    [sys.executable, "-c", DRIVER, SPEC, str(work)],
    start_new_session=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  t0 = time.monotonic()
  while not any(sweep.run_status(d) == "done" for d in dirs):
    assert proc.poll() is None and time.monotonic() - t0 < 300, "sweep ended or hung"
    time.sleep(0.1)
  os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its runs, as a crash would
  proc.wait()
  finished = [d for d in dirs if sweep.run_status(d) == "done"]
  assert 1 <= len(finished) < 4
  kept = {d: _outputs(d) for d in finished}

  summary = sweep.run_sweep(SPEC, work, 2)
  assert summary == {"done": 4 - len(finished), "failed": 0, "skipped": len(finished),
                     "stale": 0}  # fmt: skip
  assert {d: _outputs(d) for d in finished} == kept  # finished runs were not touched
  df = results.load(work)
  assert len(df) == 4 and df["name"].is_unique and set(df["status"]) == {"done"}
  assert sorted(df["train.lr"].unique()) == [1e-3, 3e-3]
  assert df["eval.bitnet.loss"].notna().all()
  for d in dirs:  # resumed runs logged each step once
    steps = [r["step"] for r in read_jsonl(d / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(set(steps)), d.name
    assert json.loads((d / "status.json").read_text())["status"] == "done"
