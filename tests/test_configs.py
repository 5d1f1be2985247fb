"""Experiment configs: loading, overrides, validation, sweep helpers."""

from pathlib import Path

import pytest

from mmfree import configs
from mmfree.core import experiment

ROOT = Path(__file__).parent.parent
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.py"))


def test_overrides_apply_and_are_typed():
  exp = configs.load_experiment(
    str(ROOT / "experiments/tiny.py:smoke"),
    {"train.lr": 0.01, "model.intermediate_size": 96, "stages": ["train"]},
  )
  assert exp.train.lr == 0.01 and exp.model.mlp_size == 96 and exp.stages == ("train",)
  assert exp.train.steps == 6  # the smoke variant's own value


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"train.lrr": 1.0}, r"unknown config key 'train.lrr'.*'lr'"),
    ({"trian.lr": 1.0}, r"unknown config key 'trian'.*'train'"),
    ({"train.steps": "many"}, r"'train.steps'.*wrong type"),
    ({"model.precision": "int3"}, r"model.precision='int3'"),
    ({"stages": ("train", "deploy")}, r"stages=\['train', 'deploy'\]: valid stages"),
  ],
)
def test_bad_overrides_name_the_key(overrides, match):
  with pytest.raises(ValueError, match=match):
    configs.load_experiment(str(ROOT / "experiments/tiny.py"), overrides)


def test_parse_overrides():
  got = configs.parse_overrides(
    ["--config.train.lr=1e-3", "--config.data.path=/x/y", "--config.stages=('train',)"]
  )
  assert got == {"train.lr": 1e-3, "data.path": "/x/y", "stages": ("train",)}
  with pytest.raises(ValueError, match="unrecognized argument"):
    configs.parse_overrides(["--lr=3"])


def test_sweep_helpers():
  a = configs.axis("train.lr", [1, 2])
  b = configs.axis("model.hidden_size", [8, 16])
  assert configs.product(a, b) == [
    {"train.lr": 1, "model.hidden_size": 8},
    {"train.lr": 1, "model.hidden_size": 16},
    {"train.lr": 2, "model.hidden_size": 8},
    {"train.lr": 2, "model.hidden_size": 16},
  ]
  assert configs.zip(a, b) == [
    {"train.lr": 1, "model.hidden_size": 8},
    {"train.lr": 2, "model.hidden_size": 16},
  ]
  with pytest.raises(ValueError, match="different lengths"):
    configs.zip(a, configs.axis("x", [1]))


def test_differences_ignore_derived_fields():
  a = {"model": {"vocab_size": 258, "hidden_size": 8}, "train": {"lr": 1.0}}
  b = {"model": {"vocab_size": 4096, "hidden_size": 8}, "train": {"lr": 2.0}}
  assert experiment.differences(a, b) == ["train.lr"]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_resolves_with_its_sweep(path):
  exp = configs.load_experiment(f"{path}:smoke")
  assert exp.stages
  for point in configs.load_sweep(f"{path}:smoke"):
    configs.load_experiment(f"{path}:smoke", point)
