"""`mmfree eval`: loss, perplexity and bits per byte of a model on a data source's held-out text.

Bits per byte divide by the UTF-8 bytes of the text, so models with different tokenizers compare.
"""

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmfree.algorithms.load import load
from mmfree.core.data import DataConfig
from mmfree.data import pipeline, sources
from mmfree.data.tokenizers import load_tokenizer


def figures(loss: float, bytes_per_token: float | None) -> dict:
  """Loss (nats per token), perplexity and, when the text's bytes are known, bits per byte."""
  bpb = loss / math.log(2) / bytes_per_token if bytes_per_token else None
  return {"loss": loss, "ppl": math.exp(min(loss, 700)), "bpb": bpb}


def batches(windows_NxT1, batch: int, progress: bool = False):
  """(windows [batch, T + 1], how many rows are real), `batch` at a time: the last batch is
  padded with copies of its last row, so that every call has one shape (one compilation)."""
  starts = range(0, len(windows_NxT1), batch)
  for i in tqdm(starts, desc="eval", unit="batch", leave=False, disable=not progress):
    w = np.asarray(windows_NxT1[i : i + batch])
    n = len(w)
    yield np.concatenate([w, np.repeat(w[-1:], batch - n, axis=0)]), n


def score(token_nll: Callable, windows_NxT1, bytes_per_token: float | None, batch: int,
          progress: bool = False) -> dict:  # fmt: skip
  """`figures` of the mean next-token loss over windows, `token_nll` [b, T] of `batch` at a time."""
  nll = [np.asarray(token_nll(w))[:n] for w, n in batches(windows_NxT1, batch, progress)]
  nll = np.concatenate(nll).ravel()
  return {**figures(float(nll.mean()), bytes_per_token), "tokens": int(nll.size)}


def score_saturation(lm, windows_NxT1, bytes_per_token: float | None, batch: int) -> dict:
  """`score` at `hw` and, from the same forward passes, the share of values each kind of
  quantization point clipped (padding rows left out)."""
  nll, sat = [], {}
  for w, n in batches(windows_NxT1, batch, progress=True):
    nll_b, sat_b = lm.token_nll_saturation(w)
    nll.append(nll_b[:n])
    for key, (a, c) in sat_b.items():  # per row [batch] for activations, per call for gains
      a, c = (float(np.sum(v[:n] if np.ndim(v) else v)) for v in (a, c))
      kind = key.rpartition(".")[2]
      sat[kind] = tuple(x + y for x, y in zip(sat.get(kind, (0.0, 0.0)), (a, c), strict=True))
  nll = np.concatenate(nll).ravel()
  return {
    **figures(float(nll.mean()), bytes_per_token),
    "tokens": int(nll.size),
    "saturation_pct": 100 * sum(a for a, _ in sat.values()) / sum(c for _, c in sat.values()),
    "saturation_pct_by_point": {k: 100 * a / c for k, (a, c) in sorted(sat.items())},
  }


def with_model_tokenizer(data_cfg: DataConfig, model_dir: Path) -> DataConfig:
  """Use the model's own tokenizer whenever it has one, never a freshly trained one."""
  if load_tokenizer(Path(model_dir)) is not None:
    return dataclasses.replace(data_cfg, tokenizer=str(model_dir))
  return data_cfg


def data_id(data_cfg: DataConfig, model_dir: Path) -> str:
  """The identity of the token stream a model is evaluated or calibrated on."""
  return sources.data_id(with_model_tokenizer(data_cfg, model_dir))


def load_model_data(data_cfg: DataConfig, model_dir: Path, vocab_size: int):
  """The data a model is evaluated or calibrated on, refused if its ids exceed the vocabulary."""
  data = sources.load_data(with_model_tokenizer(data_cfg, model_dir))
  if data.vocab_size > vocab_size:
    raise ValueError(
      f"the data has token ids up to {data.vocab_size - 1} but the model's vocabulary is "
      f"{vocab_size}: pass the model's tokenizer (data.tokenizer)"
    )
  return data


def evaluate_model(
  model_dir: Path,
  data_cfg: DataConfig,
  seq_len: int,
  precision: str | None = None,
  max_windows: int = 512,
  batch: int = 8,
) -> dict:
  """`score` over up to `max_windows` held-out windows of `seq_len` tokens; at `hw`, how often
  each kind of quantization point saturated."""
  lm = load(model_dir, precision)
  data = load_model_data(data_cfg, model_dir, lm.config.vocab_size)
  windows_NxT1 = pipeline.eval_windows(data.val_N, seq_len, max_windows)
  bpt = data.info.get("val_bytes_per_token")
  if lm.config.precision == "hw":  # how often each kind of point clipped on the eval text
    scores = score_saturation(lm, windows_NxT1, bpt, batch)
  else:
    scores = score(lm.token_nll, windows_NxT1, bpt, batch, True)
  return {**scores, "seq_len": seq_len, "precision": lm.config.precision}
