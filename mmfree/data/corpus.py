"""The embedded default corpus: English prose that ships with every Python interpreter.

Two sources, both read without network and without importing arbitrary modules:
the bundled documentation topics (`pydoc_data.topics`) and the standard library's
docstrings (parsed with `ast`, never imported, so extraction has no side effects).
The text depends on the interpreter's version, which `Corpus.meta` records with a hash.
"""

import ast
import functools
import hashlib
import platform
import pydoc_data.topics
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
_MIN_WORDS = 20  # shorter docstrings are mostly signatures and one-liners
_VAL_BUCKETS = 10_000


@dataclass(frozen=True)
class Corpus:
  """Documents split into train and val; `meta` says where they came from."""

  train: list[str]
  val: list[str]
  meta: dict


def _topic_docs() -> Iterator[tuple[str, str]]:
  for key in sorted(pydoc_data.topics.topics):
    text = pydoc_data.topics.topics[key].strip()
    if text:
      yield f"topics/{key}", text


def _skipped(rel: Path) -> bool:
  return any(p in _SKIP_DIRS or p.startswith("test_") for p in rel.parts)


def _docstrings(node: ast.AST) -> Iterator[str]:
  """Module, class and function docstrings in source order."""
  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
    doc = ast.get_docstring(node, clean=True)
    if doc and len(doc.split()) >= _MIN_WORDS:
      yield doc
  for child in ast.iter_child_nodes(node):
    # Definitions only live in statements; skipping expression subtrees halves the time.
    if isinstance(child, ast.stmt | ast.excepthandler | ast.match_case):
      yield from _docstrings(child)


def _stdlib_docs() -> Iterator[tuple[str, str]]:
  root = Path(sysconfig.get_paths()["stdlib"])
  rels = sorted(p.relative_to(root) for p in root.rglob("*.py"))
  for rel in rels:
    if _skipped(rel):
      continue
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes etc. in old modules
        tree = ast.parse((root / rel).read_bytes(), filename=str(rel))
    except (SyntaxError, ValueError, OSError):
      continue
    docs = list(_docstrings(tree))
    if docs:
      yield f"stdlib/{rel.as_posix()}", "\n\n".join(docs)


def held_out(name: str, val_fraction: float) -> bool:
  """Whether the document called `name` is in val: its name's hash falls below the fraction."""
  # Hashing the name (not the position) keeps a document's split stable across versions.
  bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % _VAL_BUCKETS
  return bucket < round(val_fraction * _VAL_BUCKETS)


def _split_meta(docs: list[str]) -> dict:
  return {
    "documents": len(docs),
    "chars": sum(len(d) for d in docs),
    "bytes": sum(len(d.encode()) for d in docs),
  }


def _corpus_hash(train: list[str], val: list[str]) -> str:
  h = hashlib.sha256()
  for split, docs in (("train", train), ("val", val)):
    h.update(f"\x00{split}\x00".encode())
    for doc in docs:
      h.update(doc.encode())
      h.update(b"\x00")
  return h.hexdigest()


@functools.lru_cache(maxsize=4)
def embedded_corpus(val_fraction: float = 0.05) -> Corpus:
  """Topics then stdlib docstrings; a document is in val iff its name hashes below the fraction."""
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
  train, val = [], []
  for name, text in (*_topic_docs(), *_stdlib_docs()):
    (val if held_out(name, val_fraction) else train).append(text)
  meta = {
    "source": "python-embedded",
    "python_version": platform.python_version(),
    "val_fraction": val_fraction,
    "sha256": _corpus_hash(train, val),
    "train": _split_meta(train),
    "val": _split_meta(val),
  }
  return Corpus(train=train, val=val, meta=meta)
