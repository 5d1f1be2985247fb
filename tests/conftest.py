"""Fixtures shared across test modules."""

from pathlib import Path

import pytest

from mmfree.cli import main

SMOKE = str(Path(__file__).parent.parent / "experiments/tiny.py:smoke")


@pytest.fixture(scope="session")
def calibrated_run(tmp_path_factory):
  """A trained 2-layer byte-level model (layer 1 has a lower bound), calibrated for `hw`.
  Shared: tests copy it before changing it."""
  d = tmp_path_factory.mktemp("calibrated")
  main(["train", "--config", SMOKE, "--workdir", str(d), "--config.train.steps=20",
        "--config.model.num_hidden_layers=2"])  # fmt: skip
  main(["quantize", "calibrate", str(d), "--batches", "4", "--seq-len", "32"])
  return d


@pytest.fixture(scope="session")
def measured_sweep(tmp_path_factory):
  """experiments/quant_ablation.py:smoke swept end to end (2 points, each trained, calibrated,
  evaluated at `bitnet` and `hw`, lowered, checked bit-exact and measured): about 90 s."""
  from mmfree.sweep import run_sweep

  d = tmp_path_factory.mktemp("sweep") / "quant_ablation"
  spec = str(Path(__file__).parent.parent / "experiments/quant_ablation.py:smoke")
  counts = run_sweep(spec, d, 2)
  assert counts["failed"] == 0 and counts["done"] == 2, counts
  return d
