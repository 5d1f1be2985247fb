"""Nested dicts as dotted names, the one flattening every module uses."""

from collections.abc import Callable


def flatten(d: dict, prefix: str = "", leaf: Callable[[str, object], bool] | None = None) -> dict:
  """{"a": {"b": 1}} → {"a.b": 1}; an empty dict, or a value `leaf(key, value)` accepts, stays
  whole under its key."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and v and not (leaf and leaf(key, v)):
      out.update(flatten(v, key + ".", leaf))
    else:
      out[key] = v
  return out
