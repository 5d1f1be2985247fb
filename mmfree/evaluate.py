"""`mmfree eval`: loss, perplexity and bits per byte of a model on a data source's held-out text.

Bits per byte divide by the UTF-8 bytes of the text, so models with different tokenizers compare.
"""

import dataclasses
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmfree.data import pipeline
from mmfree.data.sources import DataConfig, load_data
from mmfree.data.tokenizers import load_tokenizer
from mmfree.models.config import PRECISIONS


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """The eval and calibrate stages of `mmfree run`."""

  precisions: tuple[str, ...] = ()  # () evaluates the model at its own precision
  max_windows: int = 512  # held-out windows of train.seq_len tokens
  calib_batches: int = 16  # batches of training text observed by the calibrate stage
  calib_batch_size: int = 8

  def __post_init__(self):
    bad = [p for p in self.precisions if p not in PRECISIONS]
    if bad:
      raise ValueError(f"eval.precisions: unknown {bad}; choose from {PRECISIONS}")
    for name in ("max_windows", "calib_batches", "calib_batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"eval.{name}={getattr(self, name)}: must be at least 1")


def with_model_tokenizer(data_cfg: DataConfig, model_dir: Path) -> DataConfig:
  """Use the model's own tokenizer whenever it has one, never a freshly trained one."""
  if load_tokenizer(Path(model_dir)) is not None:
    return dataclasses.replace(data_cfg, tokenizer=str(model_dir))
  return data_cfg


def load_model_data(data_cfg: DataConfig, model_dir: Path, vocab_size: int):
  """The data a model is evaluated or calibrated on, refused if its ids exceed the vocabulary."""
  data = load_data(with_model_tokenizer(data_cfg, model_dir))
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
  """Mean next-token loss over up to `max_windows` held-out windows of `seq_len` tokens."""
  from mmfree.api import load

  lm = load(model_dir, precision)
  data = load_model_data(data_cfg, model_dir, lm.config.vocab_size)
  windows_NxT1 = pipeline.eval_windows(data.val_N, seq_len, max_windows)
  nll = np.concatenate([
    lm.token_nll(windows_NxT1[i : i + batch]).ravel()
    for i in tqdm(range(0, len(windows_NxT1), batch), desc="eval", unit="batch", leave=False)
  ])  # fmt: skip
  loss = float(nll.mean())
  bpt = data.info.get("val_bytes_per_token")
  sat = {}
  if lm.config.precision == "hw":  # how often each kind of point clipped on the eval text
    for i in range(0, len(windows_NxT1), batch):
      for key, (n_sat, n) in lm.saturation(windows_NxT1[i : i + batch, :-1]).items():
        kind = key.rpartition(".")[2]
        sat[kind] = tuple(a + b for a, b in zip(sat.get(kind, (0.0, 0.0)), (n_sat, n), strict=True))
  return {
    "loss": loss,
    "ppl": math.exp(min(loss, 700)),
    "bpb": loss / math.log(2) / bpt if bpt else None,
    "tokens": int(nll.size),
    "seq_len": seq_len,
    "precision": lm.config.precision,
    **({"saturation_pct": 100 * sum(a for a, _ in sat.values()) / sum(n for _, n in sat.values()),
        "saturation_pct_by_point": {k: 100 * a / n for k, (a, n) in sorted(sat.items())}}
       if sat else {}),
  }  # fmt: skip
