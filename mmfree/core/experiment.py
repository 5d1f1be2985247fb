"""The resolved, plain-data configuration of one run, and the helpers that build and compare it.

Modules below the orchestration layer see only these frozen dataclasses, never a ConfigDict.
"""

import ast
import dataclasses
import json

from mmfree.core.data import DataConfig
from mmfree.core.dicts import flatten
from mmfree.core.model import ModelConfig
from mmfree.core.quant import QuantConfig
from mmfree.core.stages import EvalConfig, LoihiConfig
from mmfree.core.train import MeshConfig, TrackingConfig, TrainConfig

STAGES = ("train", "calibrate", "eval", "lower", "emulate", "measure", "tasks")  # in this order
DEFAULT_STAGES = ("train", "eval")
# Filled in from the tokenizer at train time, so they may differ from what the config asked.
DERIVED = ("model.vocab_size", "model.bos_token_id", "model.eos_token_id")


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The resolved, plain-data configuration of one run."""

  model: ModelConfig
  train: TrainConfig
  data: DataConfig
  tracking: TrackingConfig
  stages: tuple[str, ...]
  quant: QuantConfig = QuantConfig()
  eval: EvalConfig = EvalConfig()
  loihi: LoihiConfig = LoihiConfig()
  mesh: MeshConfig = MeshConfig()
  spec: str = ""
  overrides: dict = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict:
    return {
      "experiment": {"spec": self.spec, "overrides": self.overrides},
      **{k: dataclasses.asdict(getattr(self, k)) for k in SECTIONS},
      "stages": list(self.stages),
    }


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig,
            "tracking": TrackingConfig, "quant": QuantConfig, "eval": EvalConfig,
            "loihi": LoihiConfig, "mesh": MeshConfig}  # fmt: skip


def as_tuples(d: dict) -> dict:
  """JSON and command lines give lists where the dataclasses hold tuples."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def to_dataclass(cls, d: dict, name: str):
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise ValueError(f"unknown keys {[f'{name}.{k}' for k in unknown]}; valid: {sorted(names)}")
  try:
    return cls(**d)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name}: {e}") from None


def to_experiment(d: dict, spec: str = "", overrides=None) -> Experiment:
  """The frozen Experiment of a config dict (`ConfigDict.to_dict()`), every field validated."""
  valid = {*SECTIONS, "stages"}
  unknown = sorted(set(d) - valid)
  if unknown:
    raise ValueError(f"unknown top-level config keys {unknown}; valid: {sorted(valid)}")
  stages = tuple(d.get("stages", DEFAULT_STAGES))
  bad = [s for s in stages if s not in STAGES]
  if bad or list(stages) != sorted(stages, key=STAGES.index):
    raise ValueError(f"stages={list(stages)}: valid stages, in this order, are {list(STAGES)}")
  return Experiment(
    **{k: to_dataclass(cls, as_tuples(d.get(k, {})), k) for k, cls in SECTIONS.items()},
    stages=stages,
    spec=spec,
    overrides=dict(overrides or {}),
  )


def parse_value(text: str):
  """A command-line value: a Python literal when it parses as one, else the string itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def differences(saved: dict, wanted: dict) -> list[str]:
  """Dotted keys whose values differ between two config dicts, ignoring derived fields."""
  flat_a, flat_b = flatten(saved), flatten(wanted)
  keys = (set(flat_a) | set(flat_b)) - set(DERIVED)
  return sorted(k for k in keys if json.dumps(flat_a.get(k)) != json.dumps(flat_b.get(k)))


RUNTIME_MODEL_FIELDS = (
  "precision",
  "scan",
  "matmul_dtype",
  "scan_layers",
  "remat",
)  # the rest: architecture


def config_changes(saved: dict, wanted: dict) -> list[str]:
  """Dotted keys where a run's `config.json` differs from the config wanted now; fields the
  run derives (vocabulary, and with `train.init_from` the architecture it brings) excepted."""
  changed = differences({k: saved.get(k) for k in wanted}, wanted)
  if wanted.get("train", {}).get("init_from"):
    arch = [f"model.{k}" for k in wanted.get("model", {}) if k not in RUNTIME_MODEL_FIELDS]
    changed = [k for k in changed if k not in arch]
  return changed
