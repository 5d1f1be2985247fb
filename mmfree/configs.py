"""Experiment configs: `experiments/<name>.py[:arg]` → ConfigDict → frozen dataclasses.

An experiment file defines `get_config(arg) -> ConfigDict` and optionally
`get_sweep(arg) -> list[dict]` of dotted overrides, built with `axis`, `product` and `zip`.
Modules below this boundary only ever see the frozen dataclasses of `Experiment`.
"""

import builtins
import dataclasses
import importlib.util
import itertools
import types
import typing
from pathlib import Path

import ml_collections
from ml_collections import config_dict

from mmfree.core.experiment import (
  DEFAULT_STAGES,
  SECTIONS,
  Experiment,
  parse_value,
  to_experiment,
)
from mmfree.core.experiment import STAGES as STAGES  # experiment files name the stages
from mmfree.core.model import PRESETS


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
  for name, cls in SECTIONS.items():
    setattr(c, name, section(cls, **(PRESETS[preset].to_dict() if name == "model" else {})))
  c.stages = DEFAULT_STAGES
  return c


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


def load_config(spec: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """The ConfigDict of `spec` ('path.py[:arg]') with dotted `overrides` applied: what an
  experiment file built on another one's config returns from its `get_config`."""
  path, arg = split_spec(spec)
  cfg = _call(_load_module(path).get_config, arg)
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ValueError(f"{path}: get_config must return an ml_collections.ConfigDict")
  return apply_overrides(cfg, overrides or {})


def load_experiment(spec: str, overrides: dict | None = None) -> Experiment:
  """The experiment `spec` ('path.py[:arg]') with dotted `overrides` applied."""
  return to_experiment(load_config(spec, overrides).to_dict(), str(spec), overrides)


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


def load_search(spec: str) -> dict[str, list]:
  """The experiment's search space (`mmfree search`): {dotted key: [choices]}, each choice a
  value as sweep points take it, each checked alone against the experiment."""
  path, arg = split_spec(spec)
  module = _load_module(path)
  if not hasattr(module, "get_search"):
    raise ValueError(
      f"{path} defines no get_search(arg): add one returning the levers to search, e.g. "
      "{'quant.act_bits': [4, 6, 8]}"
    )
  space = _call(module.get_search, arg)
  if not isinstance(space, dict) or not space:
    raise ValueError(f"{path}: get_search must return a non-empty dict of dotted key -> choices")
  for key, choices in space.items():
    if not isinstance(choices, list | tuple) or not choices:
      raise ValueError(f"{path}: get_search: {key!r} has no choices: give a non-empty list")
    texts = [override_text(key, v) for v in choices]
    if len(set(texts)) < len(texts):
      raise ValueError(f"{path}: get_search: {key!r} lists a choice twice: {list(choices)}")
    for v in choices:  # an unknown key or a wrong value fails here, not trials later
      try:
        load_experiment(spec, {key: v})
      except ValueError as e:
        raise ValueError(f"{path}: get_search: {key}={v!r} is no valid choice: {e}") from None
  return {k: list(v) for k, v in space.items()}


def override_text(key: str, value) -> str:
  """The text of `--config.KEY=TEXT` that reads back as `value`: strings raw where that is
  unambiguous, else a Python literal."""
  text = value if isinstance(value, str) and parse_value(value) == value else repr(value)
  if parse_value(text) != value:
    raise ValueError(
      f"override value {key}={value!r} does not survive a command line: use a literal (a number, "
      "string, bool, None, or a tuple or list of them)"
    )
  return text


def override_arg(key: str, value) -> str:
  """`--config.KEY=VALUE` that reads back as `value`."""
  return f"--config.{key}={override_text(key, value)}"


def parse_overrides(args: list[str], prefix: str = "--config.") -> dict:
  """['--config.train.lr=0.01', ...] → {'train.lr': 0.01}."""
  out = {}
  for a in args:
    if not a.startswith(prefix) or "=" not in a:
      raise ValueError(f"unrecognized argument {a!r}: overrides look like {prefix}train.lr=0.001")
    key, _, value = a[len(prefix) :].partition("=")
    out[key] = parse_value(value)
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
