"""Log-likelihoods of continuations, in length-sorted batches at near forward-pass speed.

A scorer is `score(tokens_BxT, targets_BxT, mask_BxT) -> (ll_B, greedy_B)`: the summed
log-probability of `targets` where `mask` is set and whether each was the argmax. Requests are
deduplicated, sorted longest first and cut into batches of `batch` rows, each padded on the right
to a multiple of SCORE_CHUNK (the model reads a chunk per call, its state carried: one
compilation for every length); a recurrent model reads left to right, so right padding changes
no scored position.
"""

import time
from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from mmfree.algorithms.load import padded_length
from mmfree.tasks.requests import Pair

MAX_LEN = 2048  # tokens a request is cut to on the left, as lm-eval's `hf` model's max_length
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def sequence(pair: Pair, max_len: int | None) -> tuple[tuple[int, ...], int]:
  """(model input, continuation length): lm-eval's (context + continuation)[:-1], cut on the
  left to `max_len` tokens, the continuation scored at its last positions."""
  ctx, cont = pair
  whole = ctx + cont
  if max_len is not None:
    whole = whole[-(max_len + 1) :]
  if not ctx:
    raise ValueError("a request whose context has no tokens (only whitespace): nothing to "
                     "condition the continuation on")  # fmt: skip
  if len(cont) >= len(whole):
    raise ValueError(f"a continuation of {len(cont)} tokens does not fit max_len={max_len}")
  return whole[:-1], len(cont)


def loglikelihoods(score: Scorer, pairs: Sequence[Pair], batch: int = 16,
                   max_len: int | None = None, progress: bool = False,
                   desc: str = "score"):  # fmt: skip
  """(ll [N] float64, greedy [N] bool, stats) of every pair; stats counts examples scored,
  tokens read (padding left out), padded tokens and seconds."""
  unique = {}
  for p in pairs:
    if p[1] and p not in unique:  # an empty continuation has log-likelihood 0, and is greedy
      unique[p] = sequence(p, max_len)
  order = sorted(unique, key=lambda p: -len(unique[p][0]))
  ll, greedy = {}, {}
  tokens = padded = 0
  t0 = time.perf_counter()
  starts = range(0, len(order), batch)
  for i in tqdm(starts, desc=desc, unit="batch", leave=False, disable=not progress):
    rows = order[i : i + batch]
    T = padded_length(len(unique[rows[0]][0]))
    tokens_BxT = np.zeros((batch, T), np.int32)
    targets_BxT = np.zeros((batch, T), np.int32)
    mask_BxT = np.zeros((batch, T), bool)
    for b in range(batch):  # missing rows repeat the last: one batch shape
      p = rows[min(b, len(rows) - 1)]
      inp, n = unique[p]
      tokens_BxT[b, : len(inp)] = inp
      targets_BxT[b, len(inp) - n : len(inp)] = p[1]
      mask_BxT[b, len(inp) - n : len(inp)] = True
    ll_B, greedy_B = score(tokens_BxT, targets_BxT, mask_BxT)
    for b, p in enumerate(rows):
      ll[p], greedy[p] = float(ll_B[b]), bool(greedy_B[b])
      tokens += len(unique[p][0])
    padded += batch * T
  seconds = time.perf_counter() - t0
  out_ll = np.array([ll.get(p, 0.0) for p in pairs], np.float64)
  out_greedy = np.array([greedy.get(p, True) for p in pairs], bool)
  stats = {"requests": len(pairs), "sequences": len(order), "tokens": tokens,
           "padded_tokens": padded, "seconds": seconds}  # fmt: skip
  return out_ll, out_greedy, stats
