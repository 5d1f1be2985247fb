"""Data sources: documents or token files in, memory-mapped train and val token streams out.

`load_data(DataConfig)` is the one entry point. Document sources (the embedded corpus, text
files, JSONL, Hugging Face datasets) hold out val by a hash of each document's name, are
tokenized once with bos/eos around each document, and are cached as `.npy` streams under
`<cache>/tokens/<key>/`. The key covers the config, the source files' paths, sizes and mtimes
(the corpus hash for the embedded one) and the tokenizer, so editing a file re-tokenizes. Token
sources (1-D integer `.npy` files) are memory-mapped in place and hold out the last
`val_fraction` of the stream: without document boundaries there is nothing to hash.

Bits per byte: `info["val_bytes_per_token"]` is the UTF-8 bytes of the val documents over the
val tokens, bos/eos included (the loss averages over them too), so
bpb = loss_nats / ln 2 / val_bytes_per_token. Token sources have no bytes: it is None.
"""

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import tokenizers

from mmfree.core import digest
from mmfree.core.data import MIN_BPE_VOCAB, DataConfig
from mmfree.data import readers
from mmfree.data.corpus import embedded_corpus, held_out
from mmfree.data.readers import field_error
from mmfree.data.streams import save_stream, tokenize_splits
from mmfree.data.tokenizers import (
  BYTE_FILE,
  HF_FILE,
  SP_FILE,
  ByteTokenizer,
  HFTokenizer,
  SentencePieceTokenizer,
  Tokenizer,
  default_cache_dir,
  load_tokenizer,
  train_bpe,
  unigram_entropy,
)

_CACHE_VERSION = 1  # bump when what a cache entry holds, or how it is made, changes
_META = "meta.json"


@dataclasses.dataclass
class Data:
  """Token streams (memory-mapped), their tokenizer (None for bare ids) and what to record."""

  tokenizer: Tokenizer | None
  train_N: np.ndarray  # noqa: N815 (shape suffix, the house style)
  val_N: np.ndarray  # noqa: N815
  vocab_size: int
  info: dict


# Documents.


def _data_files(cfg: DataConfig) -> list[str]:
  return [f.strip() for f in cfg.data_files.split(",") if f.strip()]


def _read(cfg: DataConfig, spec: str, field: str) -> Iterator[tuple[str, str]]:
  """(name, text) of the documents `spec` names, at most max_docs of them, empty ones dropped."""
  if cfg.source == "text":
    docs = readers.text_docs(spec, field)
  elif cfg.source == "jsonl":
    docs = readers.jsonl_docs(spec, field, cfg.text_field)
  else:
    split = cfg.hf_split if field == "path" else spec
    docs = readers.hf_docs(
      cfg.path, cfg.hf_config, split, _data_files(cfg), cfg.streaming, cfg.text_field
    )
  return ((n, t) for n, t in itertools.islice(docs, cfg.max_docs or None) if t)


def iter_documents(cfg: DataConfig) -> Iterator[tuple[str, str]]:
  """(split, text) for every document, streamed: nothing is held but the current one."""
  if cfg.source == "tokens":
    raise field_error("source", "tokens", "token files hold ids, not documents; use a text source")
  if cfg.source == "embedded":
    corpus = embedded_corpus(cfg.val_fraction)
    yield from (("train", t) for t in corpus.train)
    yield from (("val", t) for t in corpus.val)
  elif cfg.val_path:
    yield from (("train", t) for _, t in _read(cfg, cfg.path, "path"))
    yield from (("val", t) for _, t in _read(cfg, cfg.val_path, "val_path"))
  else:
    for name, text in _read(cfg, cfg.path, "path"):
      # The seed salts the hash; seed 0 hashes the bare name, like the embedded corpus.
      is_val = held_out(f"{cfg.seed}/{name}" if cfg.seed else name, cfg.val_fraction)
      yield ("val" if is_val else "train"), text


def _check_splits(cfg: DataConfig, counts: dict[str, int]):
  for split in ("train", "val"):
    if not counts.get(split):
      raise ValueError(
        f"{cfg.source} source {cfg.path!r}: no {split} documents "
        f"({sum(counts.values())} read, data.val_fraction={cfg.val_fraction}); "
        "use more documents, another data.val_fraction or data.val_path"
      )


def documents(cfg: DataConfig) -> tuple[list[str], list[str], dict]:
  """Train and val documents in memory (small sources), and what to record about them."""
  docs = {"train": [], "val": []}
  for split, text in iter_documents(cfg):
    docs[split].append(text)
  _check_splits(cfg, {k: len(v) for k, v in docs.items()})
  info = {"corpus_meta": embedded_corpus(cfg.val_fraction).meta} if cfg.source == "embedded" else {}
  return docs["train"], docs["val"], info


def _train_texts(cfg: DataConfig) -> Iterator[str]:
  return (t for split, t in iter_documents(cfg) if split == "train")


# Tokenizers.


def _tokenizer_path(cfg: DataConfig) -> Path:
  p = Path(cfg.tokenizer).expanduser()
  if not p.exists():
    raise field_error(
      "tokenizer",
      cfg.tokenizer,
      f"expected byte, bpe or a path to {SP_FILE}, {HF_FILE} or a directory holding one; "
      "no such file or directory",
    )
  return p


def _tokenizer_id(cfg: DataConfig) -> str:
  """The tokenizer's part of a cache key: its kind, or a hash of its files."""
  if cfg.tokenizer == "byte":
    return "byte"
  if cfg.tokenizer == "bpe":  # trained on train docs, which the rest of the key pins down
    return f"bpe/{cfg.vocab_size}/tokenizers-{tokenizers.__version__}"
  p = _tokenizer_path(cfg)
  files = [p / n for n in (SP_FILE, HF_FILE, BYTE_FILE) if (p / n).is_file()] if p.is_dir() else [p]
  h = hashlib.sha256()
  for f in files:
    h.update(f.name.encode() + b"\x00" + f.read_bytes())
  return h.hexdigest()


def resolve_tokenizer(
  cfg: DataConfig, train_docs: Iterable[str], cache_dir: Path | None = None, key: str | None = None
) -> Tokenizer | None:
  """The tokenizer `cfg.tokenizer` names; "bpe" is trained on `train_docs` (cached in cache_dir,
  by `key` when given, else by a hash of the documents).

  None for token files without a tokenizer: their ids are all there is.
  """
  if cfg.tokenizer == "byte":
    return ByteTokenizer()
  if cfg.tokenizer == "bpe":
    if cfg.source == "tokens":
      return None
    return train_bpe(train_docs, cfg.vocab_size, cache_dir or default_cache_dir(), key)
  p = _tokenizer_path(cfg)
  if p.is_dir():
    if (tok := load_tokenizer(p)) is None:
      raise field_error(
        "tokenizer", cfg.tokenizer, f"directory holds no {SP_FILE}, {HF_FILE} or {BYTE_FILE}"
      )
    return tok
  if p.suffix == ".model":
    return SentencePieceTokenizer.from_file(p)
  if p.suffix == ".json":
    return HFTokenizer.from_file(p)
  raise field_error(
    "tokenizer", cfg.tokenizer, "expected a SentencePiece .model or a tokenizers .json file"
  )


# Token streams.


def _token_stream(spec: str, field: str, vocab_size: int, out: Path) -> list:
  """The token files `spec` names, checked, as one stream: [its .npy file, start, stop].

  One file is used in place; several are copied one after another into `out`.
  """
  _, files = readers.find_files(spec, field, readers.SUFFIXES["tokens"])
  arrays = [readers.token_ids(f, vocab_size) for f in files]
  if len(files) == 1:
    return [str(files[0].resolve()), 0, arrays[0].size]
  return [out.name, 0, save_stream(arrays, out)]


def _build_tokens(cfg: DataConfig, root: Path, tmp: Path) -> tuple[Tokenizer | None, dict, dict]:
  tok = resolve_tokenizer(cfg, [], root / "tokenizers")
  vocab_size = tok.vocab_size if tok else cfg.vocab_size
  train = _token_stream(cfg.path, "path", vocab_size, tmp / "train.npy")
  if cfg.val_path:
    streams = {
      "train": train,
      "val": _token_stream(cfg.val_path, "val_path", vocab_size, tmp / "val.npy"),
    }
  else:
    file, _, n = train
    n_val = round(n * cfg.val_fraction)
    if not 0 < n_val < n:
      why = f"holds out {n_val} of the {n} tokens of {cfg.path}"
      raise field_error("val_fraction", cfg.val_fraction, why)
    streams = {"train": [file, 0, n - n_val], "val": [file, n - n_val, n]}
  return tok, streams, {"documents": None, "val_bytes_per_token": None}


def _build_docs(cfg: DataConfig, root: Path, tmp: Path) -> tuple[Tokenizer, dict, dict]:
  # Two streaming passes when a BPE is trained: one to train it, one to tokenize.
  tok = resolve_tokenizer(cfg, _train_texts(cfg), root / "tokenizers", key=_docs_key(cfg))
  counts, sizes, val_bytes = tokenize_splits(iter_documents(cfg), tok, tmp)
  _check_splits(cfg, counts)
  streams = {split: [f"{split}.npy", 0, n] for split, n in sizes.items()}
  info = {"corpus_meta": embedded_corpus(cfg.val_fraction).meta} if cfg.source == "embedded" else {}
  info |= {"documents": counts, "val_bytes_per_token": val_bytes / sizes["val"]}
  return tok, streams, info


# The entry points.


def _stat(f: Path) -> list:
  st = f.stat()
  return [str(f.resolve()), st.st_size, st.st_mtime_ns]


def _inputs(cfg: DataConfig) -> list:
  """What the source reads, cheaply: paths, sizes and mtimes (the corpus hash if embedded).

  A Hub dataset is known by its name, config and split only: clear the cache for a new revision.
  """
  if cfg.source == "embedded":
    return [embedded_corpus(cfg.val_fraction).meta["sha256"]]
  if cfg.source == "hf":
    matches = [sorted(glob.glob(os.path.expanduser(f))) or [f] for f in _data_files(cfg)]
    return [_stat(Path(m)) if Path(m).is_file() else m for ms in matches for m in ms]
  specs = [(cfg.path, "path")] + [(cfg.val_path, "val_path")] * bool(cfg.val_path)
  return [
    _stat(f)
    for spec, field in specs
    for f in readers.find_files(spec, field, readers.SUFFIXES[cfg.source])[1]
  ]


def _cache_key(cfg: DataConfig) -> str:
  key = {
    "version": _CACHE_VERSION,
    "config": dataclasses.asdict(cfg),
    "inputs": _inputs(cfg),
    "tokenizer": _tokenizer_id(cfg),
  }
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def identity(cfg: DataConfig) -> dict:
  """The token stream's identity by content: the config (a tokenizer named by its files' hash,
  not its path), what the source reads (the embedded corpus's hash; files' paths, sizes and
  mtimes) and the tokenizer. Stage outputs record its hash (`data_id`)."""
  fields = dataclasses.asdict(cfg)
  if cfg.tokenizer not in ("byte", "bpe"):
    fields.pop("tokenizer")
  return {"version": _CACHE_VERSION, "config": fields, "inputs": _inputs(cfg),
          "tokenizer": _tokenizer_id(cfg)}  # fmt: skip


def data_id(cfg: DataConfig) -> str:
  return digest.json_sha256(identity(cfg))


def _docs_key(cfg: DataConfig) -> str | None:
  """What identifies the train documents without reading them; None: hash their text instead."""
  if cfg.source == "embedded":
    return None  # small and in memory: the content hash is exact
  fields = {
    k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("tokenizer", "vocab_size")
  }
  key = {"version": _CACHE_VERSION, "config": fields, "inputs": _inputs(cfg)}
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _describe(cfg: DataConfig) -> str:
  if cfg.source == "embedded":
    return "embedded corpus (Python docs and docstrings)"
  where = (
    f"{cfg.path} [{cfg.hf_config or 'default'}/{cfg.hf_split}]" if cfg.source == "hf" else cfg.path
  )
  val = f"val {cfg.val_path}" if cfg.val_path else f"val_fraction {cfg.val_fraction}"
  return f"{cfg.source} {where}, {val}"


@contextlib.contextmanager
def _fresh_dir(path: Path) -> Iterator[Path]:
  """A temporary directory that becomes `path` on success: nobody sees half a cache entry."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
  try:
    yield tmp
    try:
      os.rename(tmp, path)
    except OSError:
      if not (path / _META).is_file():
        raise
      # Another process finished the same entry first; theirs is as good as ours.
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _stream(entry: Path, where: list) -> np.ndarray:
  file, start, stop = where
  return np.load(entry / file, mmap_mode="r")[start:stop]  # an absolute file ignores entry


def _open(entry: Path) -> Data:
  meta = json.loads((entry / _META).read_text())
  info = meta["info"]
  return Data(
    tokenizer=load_tokenizer(entry),
    train_N=_stream(entry, meta["streams"]["train"]),
    val_N=_stream(entry, meta["streams"]["val"]),
    vocab_size=info["vocab_size"],
    info=info,
  )


def load_data(cfg: DataConfig, cache_dir: Path | None = None) -> Data:
  """Memory-mapped train and val streams of `cfg`, built once into `cache_dir`/tokens.

  `cache_dir` defaults to `$MMFREE_CACHE`, else ~/.cache/mmfree; trained BPEs go to its
  `tokenizers/`.
  """
  root = Path(cache_dir) if cache_dir else default_cache_dir().parent
  entry = root / "tokens" / _cache_key(cfg)
  if not (entry / _META).is_file():
    with _building(entry):
      if not (entry / _META).is_file():  # another process may have built it while we waited
        _build(cfg, root, entry)
  return _open(entry)


@contextlib.contextmanager
def _building(entry: Path):
  """One builder per cache entry: sweep workers on a cold cache wait instead of duplicating."""
  locks = entry.parent.parent / "locks"
  locks.mkdir(parents=True, exist_ok=True)
  with (locks / f"{entry.name}.lock").open("w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    yield


def _build(cfg: DataConfig, root: Path, entry: Path):
  """Tokenize `cfg` into a fresh cache entry, renamed into place when complete."""
  with _fresh_dir(entry) as tmp:
    build = _build_tokens if cfg.source == "tokens" else _build_docs
    tok, streams, info = build(cfg, root, tmp)
    vocab_size = tok.vocab_size if tok else cfg.vocab_size
    train_N = _stream(tmp, streams["train"])
    info = {
      "config": dataclasses.asdict(cfg),
      "description": _describe(cfg),
      **info,
      "vocab_size": vocab_size,
      "train_tokens": int(train_N.size),
      "val_tokens": int(streams["val"][2] - streams["val"][1]),
      "unigram_entropy_nats": unigram_entropy(train_N, vocab_size),
    }
    del train_N  # the memmap holds the file open
    if tok is not None:
      tok.save(tmp)
    (tmp / _META).write_text(json.dumps({"streams": streams, "info": info}, indent=2) + "\n")


def train_tokenizer(cfg: DataConfig, vocab_size: int, out_dir: Path) -> Tokenizer:
  """A byte-level BPE trained on the train documents of `cfg`, saved as out_dir/tokenizer.json."""
  if vocab_size < MIN_BPE_VOCAB:
    raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs >= {MIN_BPE_VOCAB}")
  tok = train_bpe(_train_texts(cfg), vocab_size)  # one streaming pass, nothing cached
  tok.save(Path(out_dir))
  return tok
