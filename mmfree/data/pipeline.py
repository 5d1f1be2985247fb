"""Documents to training batches: one token stream, cut into windows of seq_len + 1.

Window i is `ids_N[i*T : i*T + T + 1]`: inputs are its first T tokens, targets its last T,
so consecutive windows share one token and every token is a target exactly once per epoch.
"""

import sys
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from mmfree.data.tokenizers import Tokenizer


def tokenize_docs(
  docs: Sequence[str], tok: Tokenizer, add_bos: bool = True, add_eos: bool = True
) -> np.ndarray:
  """All documents as one int32 stream, each wrapped in bos/eos so the model sees boundaries."""
  for flag, name, special in (
    (add_bos, "bos", tok.bos_id),
    (add_eos, "eos", tok.eos_id),
  ):
    if flag and special is None:
      raise ValueError(f"tokenizer has no {name} token; pass add_{name}=False")
  encode_batch = getattr(tok, "encode_batch", None)
  ids = encode_batch(list(docs)) if encode_batch else [tok.encode(d) for d in docs]
  bos, eos = [tok.bos_id] * add_bos, [tok.eos_id] * add_eos
  parts = [np.asarray(bos + doc + eos, dtype=np.int32) for doc in ids]
  return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


def _num_windows(ids_N: np.ndarray, seq_len: int) -> int:
  if seq_len < 1:
    raise ValueError(f"seq_len must be positive, got {seq_len}")
  n = (len(ids_N) - 1) // seq_len
  if n < 1:
    raise ValueError(
      f"token stream of {len(ids_N)} tokens is shorter than one window of seq_len + 1 = "
      f"{seq_len + 1}; use a shorter seq_len or more text"
    )
  return n


def batches(
  ids_N: np.ndarray,
  batch_size: int,
  seq_len: int,
  seed: int,
  start_step: int = 0,
  process: tuple[int, int] = (0, 1),
  prefetch: int = 0,
) -> Iterator[np.ndarray]:
  """Endless int32 batches [B, T+1] of shuffled windows, reshuffled each epoch; with
  `process` = (index, count), this process's rows of each: [B / count, T+1], rows
  index·B/count onwards, read alone (the other rows are never read here).

  Batch k depends only on (ids_N, batch_size, seq_len, seed, k): a resumed run passes
  `start_step` and sees exactly the batches it would have seen, on any number of processes.
  `prefetch` > 0 reads that many batches ahead on a thread of its own.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  index, count = process
  if batch_size % count:
    raise ValueError(f"batch_size={batch_size} does not split over {count} processes")
  ids_N = np.asarray(ids_N)  # a memmap stays one: windows are read and cast one at a time
  T, b = seq_len, batch_size // count
  windows = (
    grain.MapDataset.range(_num_windows(ids_N, T))
    .shuffle(seed=seed)
    .repeat()  # reseeds the shuffle each epoch
    .map(lambda i: ids_N[i * T : i * T + T + 1].astype(np.int32))
  )
  # global batch k is windows [k·B, (k+1)·B); this process's rows start at index·b
  rows = lambda k: np.stack([windows[k * batch_size + index * b + j] for j in range(b)])
  steps = grain.MapDataset.range(start_step, sys.maxsize).map(rows)
  if prefetch == 0:
    return iter(steps)
  # batches read ahead on a thread, off the training loop's
  return iter(
    steps.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
  )


def eval_windows(ids_N: np.ndarray, seq_len: int, max_windows: int | None = None) -> np.ndarray:
  """The first `max_windows` windows in order, int32 [N, T+1]; their targets do not overlap."""
  ids_N = np.asarray(ids_N)
  n = _num_windows(ids_N, seq_len)
  if max_windows is not None:
    n = min(n, max_windows)
  starts_N = np.arange(n) * seq_len
  return ids_N[starts_N[:, None] + np.arange(seq_len + 1)[None, :]].astype(np.int32)
