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
