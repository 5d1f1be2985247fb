"""Readers of source files: documents from text, JSONL and Hugging Face datasets; token ids.

A document's name (its path under the source's root, with a line number for JSONL; its row
index for datasets) is what the val split hashes, so it must not depend on where the root is.
"""

import glob
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mmfree.data.tokenizers import token_counts

SUFFIXES = {"text": (".txt", ".md", ".rst"), "jsonl": (".jsonl",), "tokens": (".npy",)}


def field_error(field: str, value, why: str) -> ValueError:
  """The error for a bad config value, naming it as the command line spells it."""
  return ValueError(f"data.{field}={value!r}: {why}")


def find_files(spec: str, field: str, suffixes: Sequence[str]) -> tuple[Path, list[Path]]:
  """Files named by a file, a directory (walked, sorted) or a glob; and the root names start at."""
  spec = os.path.expanduser(spec)
  if any(c in spec for c in "*?["):
    files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    root = Path(os.path.commonpath([f.parent for f in files])) if files else None
  elif Path(spec).is_dir():
    root = Path(spec)
    files = sorted(f for f in root.rglob("*") if f.suffix in suffixes and f.is_file())
  elif Path(spec).is_file():
    root, files = Path(spec).parent, [Path(spec)]
  else:
    raise field_error(field, spec, "no such file or directory, and not a glob")
  if not files:
    raise field_error(field, spec, f"no {' / '.join(suffixes)} files found, or glob matches none")
  return root, files


def text_docs(spec: str, field: str) -> Iterator[tuple[str, str]]:
  root, files = find_files(spec, field, SUFFIXES["text"])
  for f in files:
    try:
      text = f.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
      raise ValueError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    yield f.relative_to(root).as_posix(), text


def jsonl_docs(spec: str, field: str, text_field: str) -> Iterator[tuple[str, str]]:
  root, files = find_files(spec, field, SUFFIXES["jsonl"])
  for f in files:
    with f.open("rb") as lines:
      for n, raw in enumerate(lines, 1):
        if not raw.strip():
          continue
        where = f"{f}:{n}"
        try:
          obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
          raise ValueError(f"{where}: not a UTF-8 JSON object ({e})") from None
        text = obj.get(text_field) if isinstance(obj, dict) else None
        if not isinstance(text, str):
          raise ValueError(f"{where}: no string field {text_field!r} (data.text_field)")
        yield f"{f.relative_to(root).as_posix()}:{n}", text


def hf_docs(
  path: str, config: str, split: str, data_files: Sequence[str], streaming: bool, text_field: str
) -> Iterator[tuple[str, str]]:
  """Rows of `datasets.load_dataset(path, config, split=split)`; local data_files work offline."""
  import datasets  # slow to import: only hf sources pay for it

  ds = datasets.load_dataset(
    path, name=config or None, split=split, data_files=data_files or None, streaming=streaming
  )
  n = 0
  for batch in ds.iter(batch_size=1000):
    if text_field not in batch:
      raise field_error("text_field", text_field, f"not a column of {path!r}: {sorted(batch)}")
    for text in batch[text_field]:
      if not isinstance(text, str):
        raise ValueError(f"{path} [{split}] row {n}: {text_field!r} is not a string")
      yield str(n), text
      n += 1


def token_ids(f: Path, vocab_size: int) -> np.ndarray:
  """The ids in a `.npy` file, memory-mapped, checked a chunk at a time to fit the vocab."""
  try:
    ids = np.load(f, mmap_mode="r")
  except (ValueError, OSError) as e:
    raise ValueError(f"{f}: not a .npy array ({e})") from None
  if not isinstance(ids, np.ndarray):
    raise ValueError(f"{f}: expected one array of token ids, got a {type(ids).__name__}")
  if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or ids.size == 0:
    raise ValueError(
      f"{f}: expected a non-empty 1-D integer array of token ids, "
      f"got shape {ids.shape} and dtype {ids.dtype}"
    )
  try:
    token_counts(ids, vocab_size)
  except ValueError as e:
    raise ValueError(f"{f}: {e}; the vocab is data.vocab_size or the tokenizer's") from None
  return ids
