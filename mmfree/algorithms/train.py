"""The training stage: AdamW with warmup + cosine, resumable and deterministic.

Batch k depends only on (data, seed, k), and params, optimizer state and the step are
checkpointed together, so a run killed at any point and rerun continues to bit-identical
parameters.
"""

import functools
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from mmfree.algorithms import evaluate
from mmfree.core.train import TrainConfig
from mmfree.data import pipeline
from mmfree.models import MMfreeLM, ModelConfig
from mmfree.quant.points import set_hw
from mmfree.store import checkpoint
from mmfree.store.tracking import Tracker


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


def make_token_nll(graphdef):
  def token_nll(params, batch_BxT1):
    logits_BxTxV, _ = nnx.merge(graphdef, params)(batch_BxT1[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, batch_BxT1[:, 1:])

  return token_nll


def make_steps(graphdef, tx, grad_accum: int = 1):
  """A jitted train step and per-token loss [B, T] on plain pytrees (params, optimizer state)."""
  token_nll = make_token_nll(graphdef)
  loss_fn = lambda params, batch_BxT1: token_nll(params, batch_BxT1).mean()
  grad_fn = jax.value_and_grad(loss_fn)

  def accumulated(params, batch_BxT1):
    # Strided micro-batches: each keeps rows from every device of the data-sharded batch.
    micro_KxbxT1 = batch_BxT1.reshape(-1, grad_accum, batch_BxT1.shape[-1]).swapaxes(0, 1)

    def add(carry, micro_bxT1):
      loss, grads = grad_fn(params, micro_bxT1)
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(add, zeros, micro_KxbxT1)
    return jax.tree.map(lambda x: x / grad_accum, total)

  @jax.jit
  def train_step(params, opt_state, batch_BxT1):
    if grad_accum == 1:
      loss, grads = grad_fn(params, batch_BxT1)
    else:
      loss, grads = accumulated(params, batch_BxT1)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

  return train_step, jax.jit(token_nll)


def initial_params(model_cfg: ModelConfig, cfg: TrainConfig, hw=None):
  """(graphdef, params): a fresh initialization, or the weights of `init_from`; at `hw` (QAT)
  the model quantizes with `hw` = (QuantConfig, frozen scales)."""
  if not cfg.init_from:
    model = MMfreeLM(model_cfg, nnx.Rngs(cfg.seed))
  else:
    _, params = checkpoint.read_params(Path(cfg.init_from))
    model = checkpoint.build_model(model_cfg, params)
  if hw is not None:
    set_hw(model, *hw)
  return nnx.split(model, nnx.Param)


def _data_sharding():
  """Batches split over a 1-D 'data' mesh of all devices; parameters are replicated."""
  mesh = jax.make_mesh((jax.device_count(),), ("data",), (jax.sharding.AxisType.Auto,))
  return NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())


def _diverged(what: str, mgr) -> FloatingPointError:
  return FloatingPointError(
    f"{what}; the last good checkpoint is step {mgr.latest_step()} in {mgr.directory}. "
    "Rerun in a new --workdir with a lower train.lr or more train.warmup_steps."
  )


def train(
  run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, data, tracker: Tracker, hw=None
) -> dict:
  """Train into `run_dir`, resuming from its latest checkpoint; returns the final metrics.

  `hw` = (QuantConfig, scales) trains at the `hw` level (QAT). `train.steps=0` saves the initial
  weights as step 0 (post-training quantization of `init_from` in a run directory of its own, or
  a random initialization for hardware studies that need a model's shape, not its accuracy).
  """
  run_dir = Path(run_dir)
  if cfg.batch_size % (cfg.grad_accum * jax.device_count()):
    raise ValueError(
      f"train.batch_size={cfg.batch_size} must split over grad_accum={cfg.grad_accum} "
      f"micro-batches and {jax.device_count()} devices"
    )
  tx = optimizer(cfg)
  graphdef, params = initial_params(model_cfg, cfg, hw)
  opt_state = tx.init(params)
  start, final = 0, {}
  batch_sharding, replicated = _data_sharding()
  with checkpoint.manager(run_dir, cfg.keep_checkpoints) as mgr:
    if mgr.latest_step() is not None:
      params, opt_state, start = checkpoint.restore_train_state(mgr, params, opt_state, replicated)
      print(f"resuming {run_dir} from step {start}")
    tracker.jsonl.truncate_after(start)  # rows past the last checkpoint are replayed exactly
    if start >= cfg.steps:
      if mgr.latest_step() is None:
        checkpoint.save_train_state(mgr, 0, params, opt_state)
      return {}
    params, opt_state = jax.device_put((params, opt_state), replicated)
    train_step, token_nll = make_steps(graphdef, tx, cfg.grad_accum)
    val_NxT1 = pipeline.eval_windows(data.val_N, cfg.seq_len, cfg.eval_windows)
    batches = pipeline.batches(data.train_N, cfg.batch_size, cfg.seq_len, cfg.seed, start)
    bpt = data.info.get("val_bytes_per_token")
    tokens_per_step = cfg.batch_size * cfg.seq_len
    t_last, steps_since = time.perf_counter(), 0
    bar = tqdm(range(start + 1, cfg.steps + 1), desc="train", unit="step", initial=start,
               total=cfg.steps, dynamic_ncols=True)  # fmt: skip
    for step in bar:
      batch = jax.device_put(jnp.asarray(next(batches)), batch_sharding)
      new_params, new_opt_state, loss, gnorm = train_step(params, opt_state, batch)
      loss = float(loss)
      if not math.isfinite(loss):
        raise _diverged(f"loss became {loss} at step {step}", mgr)
      params, opt_state = new_params, new_opt_state
      steps_since += 1
      if step == start + 1:  # leave compilation out of tokens/s
        t_last, steps_since = time.perf_counter(), 0
      if step % cfg.log_every == 0 or step == cfg.steps:
        now = time.perf_counter()
        tps = steps_since * tokens_per_step / max(now - t_last, 1e-9) if steps_since else None
        t_last, steps_since = now, 0
        tracker.log(step, loss=loss, grad_norm=float(gnorm), tokens_per_s=tps)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps or 0:,.0f}")
        final.update(loss=loss, tokens_per_s=tps)
      if step % cfg.eval_every == 0 or step == cfg.steps:
        scores = evaluate.score(functools.partial(token_nll, params), val_NxT1, bpt, 16)
        ev = {f"val_{k}": scores[k] for k in ("loss", "ppl", "bpb") if scores[k] is not None}
        tracker.log(step, **ev)
        bar.write(f"step {step}: val_loss {ev['val_loss']:.3f} (ppl {ev['val_ppl']:.1f})")
        final.update(ev)
      if step % cfg.ckpt_every == 0 or step == cfg.steps:
        if not all(jnp.isfinite(x).all() for x in jax.tree.leaves(params)):
          raise _diverged(f"parameters became non-finite by step {step}", mgr)
        checkpoint.save_train_state(mgr, step, params, opt_state)
    bar.close()
  return final
