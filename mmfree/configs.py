"""Experiment configs: `experiments/<name>.py[:arg]` → ConfigDict → frozen dataclasses.

An experiment file defines `get_config(arg) -> ConfigDict` and optionally
`get_sweep(arg) -> list[dict]` of dotted overrides, built with `axis`, `product` and `zip`.
Modules below this boundary only ever see the frozen dataclasses of `Experiment`.
"""

import ast
import builtins
import dataclasses
import importlib.util
import itertools
import json
import types
import typing
from pathlib import Path

import ml_collections
from ml_collections import config_dict

from mmfree.data.sources import DataConfig
from mmfree.evaluate import EvalConfig
from mmfree.measure import LoihiConfig
from mmfree.models.config import PRESETS, ModelConfig
from mmfree.quant.config import QuantConfig
from mmfree.train.loop import TrainConfig
from mmfree.train.tracking import TrackingConfig

STAGES = ("train", "calibrate", "eval", "lower", "emulate", "measure")  # in the order they run
DEFAULT_STAGES = ("train", "eval")
# Filled in from the tokenizer at train time, so they may differ from what the config asked.
DERIVED = ("model.vocab_size", "model.bos_token_id", "model.eos_token_id")


def section(cls, **overrides) -> ml_collections.ConfigDict:
  """A ConfigDict with every field of dataclass `cls`; Optional fields accept their type later."""
  hints = typing.get_type_hints(cls)
  cfg = ml_collections.ConfigDict()
  for f in dataclasses.fields(cls):
    value = overrides.pop(f.name, f.default)
    if value is None:
      inner = [t for t in typing.get_args(hints[f.name]) if t is not type(None)]
      value = config_dict.placeholder(inner[0] if inner else object)
    setattr(cfg, f.name, value)
  if overrides:
    raise ValueError(f"{cls.__name__} has no fields {sorted(overrides)}")
  return cfg


def base_config(preset: str = "small") -> ml_collections.ConfigDict:
  """The defaults every experiment starts from: a model preset and default training."""
  if preset not in PRESETS:
    raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
  c = ml_collections.ConfigDict()
  c.model = section(ModelConfig, **PRESETS[preset].to_dict())
  c.train = section(TrainConfig)
  c.data = section(DataConfig)
  c.tracking = section(TrackingConfig)
  c.quant = section(QuantConfig)
  c.eval = section(EvalConfig)
  c.loihi = section(LoihiConfig)
  c.stages = DEFAULT_STAGES
  return c


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
            "loihi": LoihiConfig}  # fmt: skip


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


def to_experiment(cfg: ml_collections.ConfigDict, spec: str = "", overrides=None) -> Experiment:
  d = cfg.to_dict()
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


def _load_module(path: Path) -> types.ModuleType:
  if not path.is_file():
    raise FileNotFoundError(f"experiment file {path} not found")
  spec = importlib.util.spec_from_file_location(f"mmfree_experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} defines no get_config(arg)")
  return module


def split_spec(spec: str) -> tuple[Path, str | None]:
  """'experiments/x.py:smoke' → (path, 'smoke'); no ':' means the default variant."""
  path, _, arg = str(spec).partition(":")
  return Path(path), (arg or None)


def _call(fn, arg):
  return fn() if arg is None else fn(arg)


def parse_value(text: str):
  """A command-line value: a Python literal when it parses as one, else the string itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Set dotted keys; an unknown key or a wrong type names the key and the valid choices."""
  cfg = cfg.copy_and_resolve_references()
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = cfg
    for i, part in enumerate(parents):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ValueError(f"unknown config key {'.'.join(parents[: i + 1])!r}; valid: {valid}")
      node = node[part]
    if leaf not in node:
      raise ValueError(f"unknown config key {key!r}; valid keys here: {sorted(node.keys())}")
    if isinstance(node[leaf], tuple) and isinstance(value, list):
      value = tuple(value)
    try:
      setattr(node, leaf, value)
    except TypeError as e:
      raise ValueError(f"config key {key!r}: {value!r} has the wrong type ({e})") from None
  return cfg


def load_experiment(spec: str, overrides: dict | None = None) -> Experiment:
  """The experiment `spec` ('path.py[:arg]') with dotted `overrides` applied."""
  path, arg = split_spec(spec)
  cfg = _call(_load_module(path).get_config, arg)
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ValueError(f"{path}: get_config must return an ml_collections.ConfigDict")
  return to_experiment(apply_overrides(cfg, overrides or {}), str(spec), overrides)


def report_hook(spec: str):
  """The experiment's optional `report(run_dir) -> str`, printed after `mmfree run`."""
  path, _ = split_spec(spec)
  return getattr(_load_module(path), "report", None)


def load_sweep(spec: str) -> list[dict]:
  """The experiment's sweep points (dotted overrides); [{}] when it defines no sweep."""
  path, arg = split_spec(spec)
  module = _load_module(path)
  points = _call(module.get_sweep, arg) if hasattr(module, "get_sweep") else [{}]
  if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
    raise ValueError(f"{path}: get_sweep must return a list of dicts of dotted overrides")
  return points


def parse_overrides(args: list[str], prefix: str = "--config.") -> dict:
  """['--config.train.lr=0.01', ...] → {'train.lr': 0.01}."""
  out = {}
  for a in args:
    if not a.startswith(prefix) or "=" not in a:
      raise ValueError(f"unrecognized argument {a!r}: overrides look like {prefix}train.lr=0.001")
    key, _, value = a[len(prefix) :].partition("=")
    out[key] = parse_value(value)
  return out


def differences(saved: dict, wanted: dict) -> list[str]:
  """Dotted keys whose values differ between two config dicts, ignoring derived fields."""
  flat_a, flat_b = flatten(saved), flatten(wanted)
  keys = (set(flat_a) | set(flat_b)) - set(DERIVED)
  return sorted(k for k in keys if json.dumps(flat_a.get(k)) != json.dumps(flat_b.get(k)))


def flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


# Sweep helpers: each returns a list of override dicts.
def _merge(points) -> dict:
  return dict(itertools.chain.from_iterable(p.items() for p in points))


def axis(key: str, values) -> list[dict]:
  return [{key: v} for v in values]


def product(*sweeps: list[dict]) -> list[dict]:
  """Every combination of the points of `sweeps` (later sweeps vary fastest)."""
  return [_merge(ps) for ps in itertools.product(*sweeps)]


def zip(*sweeps: list[dict]) -> list[dict]:  # noqa: A001 (the name users expect)
  """Points taken together, position by position; the sweeps must have equal lengths."""
  if len({len(s) for s in sweeps}) > 1:
    raise ValueError(f"zip of sweeps with different lengths {[len(s) for s in sweeps]}")
  return [_merge(ps) for ps in builtins.zip(*sweeps, strict=True)]
