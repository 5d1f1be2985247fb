"""The training stage: AdamW with warmup + cosine, resumable and deterministic.

Batch k depends only on (data, seed, k), and params, optimizer state and the step are
checkpointed together, so a run killed at any point and rerun continues to bit-identical
parameters.
"""

import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from tqdm import tqdm

from mmfree.algorithms import evaluate, mesh
from mmfree.core.train import MeshConfig, TrainConfig
from mmfree.data import pipeline
from mmfree.models import MMfreeLM, ModelConfig, lm
from mmfree.quant.points import set_hw
from mmfree.store import checkpoint
from mmfree.store.tracking import Tracker


def decay_mask(params):
  """True on the BitLinear kernels (paths ending in `kernel`), False elsewhere: RMSNorm gains,
  `lower_bounds` and the embedding. The embedding is a full-precision lookup table, not a ternary
  kernel, and decoupled decay would shrink the rows of tokens absent from a batch at every step
  while only their own (rare) gradients restore them; many LLM recipes leave it out too."""
  last_name = lambda path: [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
  return jax.tree_util.tree_map_with_path(lambda path, _: last_name(path) == "kernel", params)


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay, decaying the kernels only (`decay_mask`)."""
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, cfg.lr, cfg.warmup_steps, max(cfg.steps, cfg.warmup_steps + 1), cfg.lr * cfg.min_lr_ratio
  )
  return optax.chain(
    optax.clip_by_global_norm(cfg.grad_clip),
    optax.adamw(schedule, cfg.b1, cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask),
  )


def make_token_nll(graphdef):
  def token_nll(params, batch_BxT1):
    logits_BxTxV, _ = nnx.merge(graphdef, params)(batch_BxT1[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, batch_BxT1[:, 1:])

  return token_nll


def make_steps(graphdef, tx, grad_accum: int = 1, layout=None):
  """A jitted train step and per-token loss [B, T] on plain pytrees (params, optimizer state).

  The train step donates its params and optimizer state: the caller keeps only the returned ones.
  `layout` = (param shardings, optimizer-state shardings, replicated) keeps them where they are.
  """
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

  def train_step(params, opt_state, batch_BxT1):
    if grad_accum == 1:
      loss, grads = grad_fn(params, batch_BxT1)
    else:
      loss, grads = accumulated(params, batch_BxT1)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

  if layout is None:
    return jax.jit(train_step, donate_argnums=(0, 1)), jax.jit(token_nll)
  p, o, rep = layout
  step = jax.jit(train_step, donate_argnums=(0, 1), out_shardings=(p, o, rep, rep))
  return step, jax.jit(token_nll, out_shardings=rep)


def watch_finite(train_step, layout=None):
  """`train_step` that also carries `first_bad`, the first step whose loss or updated parameters
  were non-finite (0 while none was), on the device: the loop reads it only when it logs,
  evaluates or saves, instead of syncing with the host at every step."""
  out = None if layout is None else (layout[0], layout[1], *(layout[2],) * 3)

  @functools.partial(jax.jit, donate_argnums=(0, 1), out_shardings=out)
  def step_fn(params, opt_state, batch_BxT1, step, first_bad):
    params, opt_state, loss, gnorm = train_step(params, opt_state, batch_BxT1)
    finite = jax.tree.map(lambda x: jnp.isfinite(x).all(), params)
    ok = jax.tree.reduce(jnp.logical_and, finite, jnp.isfinite(loss))
    first_bad = jnp.where((first_bad == 0) & ~ok, step, first_bad)
    return params, opt_state, loss, gnorm, first_bad

  return step_fn


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


def _diverged(what: str, mgr) -> FloatingPointError:
  good = mgr.latest_step()
  where = "no checkpoint was saved" if good is None else f"the last good checkpoint is step {good}"
  return FloatingPointError(
    f"{what}; {where} in {mgr.directory}. "
    "Rerun in a new --workdir with a lower train.lr or more train.warmup_steps."
  )


def train(
  run_dir: Path,
  model_cfg: ModelConfig,
  cfg: TrainConfig,
  data,
  tracker: Tracker,
  hw=None,
  mesh_cfg: MeshConfig | None = None,
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
  main, process = jax.process_index() == 0, (jax.process_index(), jax.process_count())
  record = tracker.log if main else lambda *_, **__: None  # metrics come from process 0 alone
  devices = mesh.make_mesh(mesh_cfg or MeshConfig())
  batch_sharding, replicated = mesh.batch(devices), mesh.replicated(devices)
  with checkpoint.manager(run_dir, cfg.keep_checkpoints) as mgr:
    if mgr.latest_step() is not None:
      place = functools.partial(mesh.shardings, mesh=devices)
      params, opt_state, start = checkpoint.restore_train_state(mgr, params, opt_state, place)
      if main:
        print(f"resuming {run_dir} from step {start}")
    if main:
      tracker.jsonl.truncate_after(start)  # rows past the last checkpoint are replayed exactly
    if start >= cfg.steps:
      if mgr.latest_step() is None:
        checkpoint.save_train_state(mgr, 0, params, opt_state)
      return {}
    # Under model.scan_layers the step keeps blocks 1..L-1 stacked; checkpoints stay canonical.
    graphdef_s, params = lm.stack_blocks(graphdef, params)
    saved = lambda tree: tree
    if graphdef_s is not graphdef:
      opt_state = lm.map_model_states(lm.stack_layers, opt_state)
      saved = functools.partial(lm.map_model_states, lm.unstack_layers)
    layout = (mesh.shardings(params, devices), mesh.shardings(opt_state, devices), replicated)
    params, opt_state = jax.device_put((params, opt_state), layout[:2])
    first_bad = jax.device_put(jnp.zeros((), jnp.int32), replicated)
    train_step, token_nll = make_steps(graphdef_s, tx, cfg.grad_accum, layout)
    train_step = watch_finite(train_step, layout)
    val_NxT1 = pipeline.eval_windows(data.val_N, cfg.seq_len, cfg.eval_windows)
    batches = pipeline.batches(data.train_N, cfg.batch_size, cfg.seq_len, cfg.seed, start,
                               process, cfg.prefetch)  # fmt: skip
    # every process holds the same windows: a replicated global array
    val_nll = lambda w: token_nll(params, jax.make_array_from_process_local_data(replicated, w))
    bpt = data.info.get("val_bytes_per_token")
    tokens_per_step = cfg.batch_size * cfg.seq_len
    t_last, steps_since = time.perf_counter(), 0
    bar = tqdm(range(start + 1, cfg.steps + 1), desc="train", unit="step", initial=start,
               total=cfg.steps, dynamic_ncols=True, disable=not main)  # fmt: skip
    for step in bar:
      # this process's rows of the global batch, onto its devices' shards
      batch = jax.make_array_from_process_local_data(batch_sharding, next(batches))
      params, opt_state, loss, gnorm, first_bad = train_step(
        params, opt_state, batch, step, first_bad
      )
      steps_since += 1
      last = step == cfg.steps
      log = step % cfg.log_every == 0 or last
      val = step % cfg.eval_every == 0 or last
      save = step % cfg.ckpt_every == 0 or last
      # The only host syncs, each waiting for the step to finish: nothing is logged or saved past
      # a non-finite step, so the latest checkpoint is always a good one.
      if (step == start + 1 or log or val or save) and (bad := int(first_bad)):
        raise _diverged(f"the loss or parameters became non-finite at step {bad}", mgr)
      if step == start + 1:  # leave compilation out of tokens/s
        t_last, steps_since = time.perf_counter(), 0
      if log:
        loss = float(loss)
        now = time.perf_counter()
        tps = steps_since * tokens_per_step / max(now - t_last, 1e-9) if steps_since else None
        t_last, steps_since = now, 0
        record(step, loss=loss, grad_norm=float(gnorm), tokens_per_s=tps)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps or 0:,.0f}")
        final.update(loss=loss, tokens_per_s=tps)
      if val:
        scores = evaluate.score(val_nll, val_NxT1, bpt, 16)
        ev = {f"val_{k}": scores[k] for k in ("loss", "ppl", "bpb") if scores[k] is not None}
        record(step, **ev)
        if main:
          bar.write(f"step {step}: val_loss {ev['val_loss']:.3f} (ppl {ev['val_ppl']:.1f})")
        final.update(ev)
      if save:
        checkpoint.save_train_state(mgr, step, saved(params), saved(opt_state))
    bar.close()
  return final
