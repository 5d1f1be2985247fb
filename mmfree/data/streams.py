"""Token streams on disk: documents tokenized chunk by chunk into memory-mappable `.npy` files."""

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmfree.data.pipeline import tokenize_docs
from mmfree.data.tokenizers import Tokenizer

ENCODE_DOCS = 1024  # documents per encode_batch: bounded memory and a moving progress bar
COPY = 1 << 24  # tokens per copy from the raw stream into the .npy


class StreamWriter:
  """Token chunks appended to a raw file, turned into a `.npy` at the end: bounded memory."""

  def __init__(self, path: Path):
    self.path, self.raw = path, path.with_suffix(".raw")
    self.f, self.n, self.dtype = self.raw.open("wb"), 0, None

  def append(self, ids_N: np.ndarray):
    self.dtype = self.dtype or ids_N.dtype
    self.f.write(np.ascontiguousarray(ids_N, self.dtype).tobytes())
    self.n += ids_N.size

  def close(self) -> int:
    self.f.close()
    if self.n == 0:
      self.raw.unlink()
      return 0
    raw_N = np.memmap(self.raw, dtype=self.dtype, mode="r", shape=(self.n,))
    n = save_stream([raw_N[i : i + COPY] for i in range(0, self.n, COPY)], self.path)
    del raw_N
    self.raw.unlink()
    return n


def tokenize_splits(
  split_docs: Iterable[tuple[str, str]], tok: Tokenizer, out_dir: Path
) -> tuple[dict, dict, int]:
  """(split, text) pairs through `tok` into out_dir/{train,val}.npy, in one pass with bounded
  memory; returns documents and tokens per split, and the UTF-8 bytes of the val documents."""
  writers = {split: StreamWriter(out_dir / f"{split}.npy") for split in ("train", "val")}
  chunks = {"train": [], "val": []}
  counts, val_bytes = {"train": 0, "val": 0}, 0
  bos, eos = tok.bos_id is not None, tok.eos_id is not None

  def flush(split):
    if chunks[split]:
      writers[split].append(tokenize_docs(chunks[split], tok, add_bos=bos, add_eos=eos))
      chunks[split] = []

  with tqdm(desc="tokenize", unit="doc", mininterval=2) as bar:
    for split, text in split_docs:
      chunks[split].append(text)
      counts[split] += 1
      val_bytes += len(text.encode()) if split == "val" else 0
      if len(chunks[split]) == ENCODE_DOCS:
        flush(split)
      bar.update()
  for split in chunks:
    flush(split)
  sizes = {split: w.close() for split, w in writers.items()}
  return counts, sizes, val_bytes


def save_stream(parts: Sequence[np.ndarray], path: Path) -> int:
  """Parts written one after another as one 1-D `.npy`, never concatenated in memory."""
  n = sum(p.size for p in parts)
  out_N = np.lib.format.open_memmap(path, mode="w+", dtype=np.result_type(*parts), shape=(n,))
  start = 0
  for p in parts:
    out_N[start : start + p.size] = p
    start += p.size
  out_N.flush()
  return n
