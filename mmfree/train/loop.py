"""A first training loop: AdamW on the embedded corpus, writing a run directory.

The experiment system (configs, resume, sweeps) extends this module in the next stage.
"""

import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from mmfree.data import corpus as corpus_lib
from mmfree.data import pipeline
from mmfree.data import tokenizers as tok_lib
from mmfree.models import MMfreeLM, ModelConfig
from mmfree.train import checkpoint
from mmfree.train.metrics import JsonlWriter


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 600
  batch_size: int = 16
  seq_len: int = 128
  lr: float = 3e-3
  min_lr_ratio: float = 0.1
  warmup_steps: int = 50
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.95
  grad_clip: float = 1.0
  eval_every: int = 100
  eval_windows: int = 64
  log_every: int = 10
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class DataConfig:
  corpus: str = "embedded"
  tokenizer: str = "bpe"  # byte | bpe
  vocab_size: int = 4096  # of the BPE


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay; no decay on gains and lower bounds."""
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, cfg.lr, cfg.warmup_steps, max(cfg.steps, cfg.warmup_steps + 1), cfg.lr * cfg.min_lr_ratio
  )
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim == 2, params)
  return optax.chain(
    optax.clip_by_global_norm(cfg.grad_clip),
    optax.adamw(schedule, cfg.b1, cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask),
  )


def cross_entropy(logits_BxTxV, targets_BxT):
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT).mean()


def make_steps(graphdef, tx):
  """Jitted train and eval steps on plain pytrees (params, optimizer state)."""

  def loss_fn(params, batch_BxT1):
    logits_BxTxV, _ = nnx.merge(graphdef, params)(batch_BxT1[:, :-1])
    return cross_entropy(logits_BxTxV, batch_BxT1[:, 1:])

  @jax.jit
  def train_step(params, opt_state, batch_BxT1):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch_BxT1)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, optax.global_norm(grads)

  return train_step, jax.jit(loss_fn)


def prepare_data(data_cfg: DataConfig):
  """Corpus, tokenizer and token streams, plus what to record about them."""
  if data_cfg.corpus != "embedded":
    raise ValueError(f"data.corpus={data_cfg.corpus!r}: only 'embedded' is available here")
  corpus = corpus_lib.embedded_corpus()
  tok = tok_lib.default_tokenizer(corpus, data_cfg.tokenizer, data_cfg.vocab_size)
  train_N = pipeline.tokenize_docs(corpus.train, tok)
  val_N = pipeline.tokenize_docs(corpus.val, tok)
  info = {
    **dataclasses.asdict(data_cfg),
    "corpus_meta": corpus.meta,
    "train_tokens": int(train_N.size),
    "val_tokens": int(val_N.size),
    "val_bytes_per_token": sum(len(d.encode()) for d in corpus.val) / val_N.size,
    "unigram_entropy_nats": tok_lib.unigram_entropy(train_N, tok.vocab_size),
  }
  return tok, train_N, val_N, info


def train(run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, data_cfg: DataConfig) -> dict:
  """Train from scratch into `run_dir`; returns the final metrics."""
  run_dir = Path(run_dir)
  tok, train_N, val_N, info = prepare_data(data_cfg)
  model_cfg = model_cfg.replace(
    vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id
  )
  checkpoint.write_config(
    run_dir, model_cfg, train=dataclasses.asdict(cfg), data=info, python=info["corpus_meta"]
  )
  tok.save(run_dir)

  model = MMfreeLM(model_cfg, nnx.Rngs(cfg.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optimizer(cfg)
  opt_state = tx.init(params)
  train_step, eval_loss = make_steps(graphdef, tx)
  val_BxT1 = pipeline.eval_windows(val_N, cfg.seq_len, cfg.eval_windows)
  batches = pipeline.batches(train_N, cfg.batch_size, cfg.seq_len, cfg.seed)
  bpt = info["val_bytes_per_token"]

  def evaluate():
    losses = [float(eval_loss(params, val_BxT1[i : i + 16])) for i in range(0, len(val_BxT1), 16)]
    loss = float(np.mean(losses))
    return {"val_loss": loss, "val_ppl": math.exp(loss), "val_bpb": loss / math.log(2) / bpt}

  writer = JsonlWriter(run_dir / "metrics.jsonl")
  tokens_per_step = cfg.batch_size * cfg.seq_len
  final = {}
  t_last, steps_since = time.perf_counter(), 0
  bar = tqdm(range(1, cfg.steps + 1), desc="train", unit="step", dynamic_ncols=True)
  for step in bar:
    batch = jnp.asarray(next(batches))
    params, opt_state, loss, gnorm = train_step(params, opt_state, batch)
    steps_since += 1
    if step == 1:  # leave compilation out of tokens/s
      jax.block_until_ready(loss)
      t_last, steps_since = time.perf_counter(), 0
    if step % cfg.log_every == 0 or step == cfg.steps:
      loss = float(loss)
      if not math.isfinite(loss):
        raise FloatingPointError(f"loss became {loss} at step {step}: lower train.lr?")
      now = time.perf_counter()
      tps = steps_since * tokens_per_step / (now - t_last)
      t_last, steps_since = now, 0
      writer.write(step, loss=loss, grad_norm=gnorm, tokens_per_s=tps)
      bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
      final.update(loss=loss, tokens_per_s=tps)
    if step % cfg.eval_every == 0 or step == cfg.steps:
      ev = evaluate()
      writer.write(step, **ev)
      bar.write(f"step {step}: val_loss {ev['val_loss']:.3f} (ppl {ev['val_ppl']:.1f})")
      final.update(ev)
  writer.close()
  checkpoint.save_params(run_dir, cfg.steps, nnx.to_pure_dict(params))
  return {**final, "unigram_entropy_nats": info["unigram_entropy_nats"]}
