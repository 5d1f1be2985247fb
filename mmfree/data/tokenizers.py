"""Tokenizers: bytes, Hugging Face `tokenizers` (BPE) and SentencePiece behind one protocol.

A tokenizer lives in a directory (a run directory, a checkpoint directory) as the files its
library writes; `load_tokenizer` reads whichever is there. `encode` never adds bos/eos: the
data pipeline adds them by id, so text that happens to contain "<s>" stays text.
"""

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import sentencepiece
import tokenizers

SP_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"
BYTE_FILE = "tokenizer_byte.json"

_BOS_TOKENS = ("<s>", "<|bos|>", "<|begin_of_text|>")
_EOS_TOKENS = ("</s>", "<|eos|>", "<|endoftext|>", "<|end_of_text|>")


class Tokenizer(Protocol):
  """What the training loop and text-level commands need from a tokenizer."""

  vocab_size: int
  bos_id: int | None
  eos_id: int | None

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...

  def save(self, directory: Path) -> None: ...


class ByteTokenizer:
  """UTF-8 bytes are ids 0..255; 256 is bos, 257 is eos."""

  vocab_size = 258
  bos_id = 256
  eos_id = 257

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [list(t.encode("utf-8")) for t in texts]

  def decode(self, ids: Sequence[int]) -> str:
    data = bytes(int(i) for i in ids if i not in (self.bos_id, self.eos_id))
    return data.decode("utf-8", errors="replace")  # a sampled model can emit invalid UTF-8

  def save(self, directory: Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / BYTE_FILE).write_text(json.dumps({"kind": "byte"}) + "\n")


class HFTokenizer:
  """A Hugging Face `tokenizers.Tokenizer`; bos/eos found among the usual special tokens."""

  def __init__(self, tok: tokenizers.Tokenizer):
    tok.encode_special_tokens = True  # special tokens in text are text, not control ids
    self.tok = tok
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    self.bos_id = _first_id(tok, _BOS_TOKENS)
    self.eos_id = _first_id(tok, _EOS_TOKENS)

  @classmethod
  def from_file(cls, path: Path) -> "HFTokenizer":
    try:
      return cls(tokenizers.Tokenizer.from_file(str(path)))
    except Exception as e:  # the Rust side raises plain Exception
      raise ValueError(f"{path}: not a valid tokenizers file ({e})") from e

  def encode(self, text: str) -> list[int]:
    return self.tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    encodings = self.tok.encode_batch_fast(list(texts), add_special_tokens=False)
    return [e.ids for e in encodings]

  def decode(self, ids: Sequence[int]) -> str:
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def save(self, directory: Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    self.tok.save(str(directory / HF_FILE))


class SentencePieceTokenizer:
  """A SentencePiece model; bos/eos are whatever the model defines (None when disabled)."""

  def __init__(self, proto: bytes):
    self.sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    self.proto = proto
    self.vocab_size = self.sp.vocab_size()
    self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
    self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None

  @classmethod
  def from_file(cls, path: Path) -> "SentencePieceTokenizer":
    try:
      return cls(Path(path).read_bytes())
    except (RuntimeError, OSError) as e:
      raise ValueError(f"{path}: not a valid SentencePiece model ({e})") from e

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self.sp.encode(list(texts), out_type=int)

  def decode(self, ids: Sequence[int]) -> str:
    return self.sp.decode([int(i) for i in ids])

  def save(self, directory: Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SP_FILE).write_bytes(self.proto)


def _first_id(tok: tokenizers.Tokenizer, candidates: Sequence[str]) -> int | None:
  for token in candidates:
    if (i := tok.token_to_id(token)) is not None:
      return i
  return None


def load_tokenizer(directory: Path) -> Tokenizer | None:
  """The tokenizer saved in `directory` (SentencePiece, then HF, then bytes), or None."""
  directory = Path(directory)
  if (path := directory / SP_FILE).is_file():
    return SentencePieceTokenizer.from_file(path)
  if (path := directory / HF_FILE).is_file():
    return HFTokenizer.from_file(path)
  if (path := directory / BYTE_FILE).is_file():
    try:
      kind = json.loads(path.read_text()).get("kind")
    except (json.JSONDecodeError, AttributeError) as e:
      raise ValueError(f"{path}: not valid JSON with a 'kind' field ({e})") from e
    if kind != "byte":
      raise ValueError(f"{path}: expected kind 'byte', got {kind!r}")
    return ByteTokenizer()
  return None


def _atomic_save(tok: HFTokenizer, path: Path) -> None:
  # Write then rename, so concurrent runs sharing a cache never read half a file.
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
  os.close(fd)
  tok.tok.save(tmp)
  os.replace(tmp, path)


def train_bpe(
  texts: Iterable[str], vocab_size: int, cache_dir: Path | None = None, key: str | None = None
) -> HFTokenizer:
  """A byte-level BPE with <s> and </s>, trained in one streaming pass over `texts`.

  Cached in `cache_dir` by `key` (which must identify the texts), or by a hash of the texts.
  """
  path = None
  if cache_dir is not None:
    if key is None:
      texts = list(texts)
      h = hashlib.sha256()
      for t in texts:
        h.update(t.encode())
        h.update(b"\x00")
      key = h.hexdigest()
    key = hashlib.sha256(f"{key}/{vocab_size}/tokenizers-{tokenizers.__version__}".encode())
    path = Path(cache_dir) / f"bpe-{vocab_size}-{key.hexdigest()[:16]}" / HF_FILE
    if path.is_file():
      return HFTokenizer.from_file(path)

  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=["<s>", "</s>"],
    # All 256 bytes, so any text encodes and decode(encode(s)) == s.
    initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(texts, trainer=trainer)
  out = HFTokenizer(tok)
  if path is not None:
    _atomic_save(out, path)
  return out


def default_cache_dir() -> Path:
  """`$MMFREE_CACHE/tokenizers`, else `~/.cache/mmfree/tokenizers`."""
  root = os.environ.get("MMFREE_CACHE")
  return (Path(root) if root else Path.home() / ".cache" / "mmfree") / "tokenizers"


def token_counts(ids_N: np.ndarray, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
  """How often each id occurs, int64 [V]; reads `chunk` ids at a time, so memmaps stay on disk."""
  ids_N = np.asarray(ids_N).ravel()
  counts_V = np.zeros(vocab_size, np.int64)
  for start in range(0, ids_N.size, chunk):
    ids_C = ids_N[start : start + chunk]
    lo, hi = ids_C.min(), ids_C.max()
    if lo < 0 or hi >= vocab_size:
      raise ValueError(f"token ids must lie in [0, {vocab_size}), got [{lo}, {hi}]")
    counts_V += np.bincount(ids_C.astype(np.intp), minlength=vocab_size)
  return counts_V


def unigram_entropy(ids_N: np.ndarray, vocab_size: int) -> float:
  """Entropy of the token frequencies in nats per token: the loss a unigram model reaches."""
  counts_V = token_counts(ids_N, vocab_size)
  if counts_V.sum() == 0:
    raise ValueError("unigram_entropy needs at least one token")
  p_V = counts_V[counts_V > 0] / counts_V.sum()
  return float(-(p_V * np.log(p_V)).sum())
