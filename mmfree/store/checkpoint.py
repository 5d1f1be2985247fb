"""The run directory: `config.json`, orbax checkpoints of the parameters, tokenizer files.

Parameters are saved as the pure dict of `nnx.state(model, nnx.Param)`, so a checkpoint is plain
nested arrays that any JAX program can read without this package's classes.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from mmfree.core import digest, files
from mmfree.core.dicts import flatten
from mmfree.core.files import CHECKPOINTS, CONFIG, read_json, write_json
from mmfree.models import MMfreeLM, ModelConfig, hf


def write_config(run_dir: Path, model_cfg: ModelConfig, **sections):
  """Write `config.json` atomically: {"model": ..., **sections}."""
  run_dir.mkdir(parents=True, exist_ok=True)
  write_json(run_dir / CONFIG, {"model": model_cfg.to_dict(), **sections})


def read_config(run_dir: Path) -> dict:
  path = Path(run_dir) / CONFIG
  try:
    cfg = json.loads(path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"{path} not found: is {run_dir} a run directory?") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from None
  if "model" not in cfg:
    raise ValueError(f"{path} has no 'model' section: not an mmfree run directory")
  return cfg


def model_config(run_dir: Path) -> ModelConfig:
  return ModelConfig.from_dict(read_config(run_dir)["model"])


def manager(run_dir: Path, max_to_keep: int | None = 3) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINTS, options=options)


def save_train_state(mgr: ocp.CheckpointManager, step: int, params, opt_state):
  """Parameters, optimizer state and the step (the data position) in one atomic checkpoint."""
  pure = nnx.to_pure_dict(params)
  mgr.save(
    step,
    args=ocp.args.Composite(
      params=ocp.args.StandardSave(pure),
      opt_state=ocp.args.StandardSave(opt_state),
      meta=ocp.args.JsonSave({"step": step}),
    ),
  )
  mgr.wait_until_finished()
  if jax.process_count() > 1:  # every process takes part in the gather; process 0 writes
    pure = multihost_utils.process_allgather(pure, tiled=True)
    if jax.process_index():
      return
  record_digest(Path(mgr.directory).parent, step, pure)


def _abstract(tree, shardings=None):
  """Restore targets placed as `shardings` says (a tree like `tree`; None: this process's first
  device), whatever devices or processes saved the checkpoint."""
  if shardings is None:
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: one, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)  # fmt: skip


def restore_train_state(mgr: ocp.CheckpointManager, params, opt_state, place=None):
  """(params, opt_state, step) of the latest checkpoint, shaped like the given templates and laid
  out as `place(tree)` says (a tree of shardings; None: this process's first device)."""
  step = mgr.latest_step()
  as_abstract = lambda tree: _abstract(tree, place and place(tree))
  restored = mgr.restore(
    step,
    args=ocp.args.Composite(
      params=ocp.args.StandardRestore(as_abstract(nnx.to_pure_dict(params))),
      opt_state=ocp.args.StandardRestore(as_abstract(opt_state)),
      meta=ocp.args.JsonRestore(),
    ),
  )
  nnx.replace_by_pure_dict(params, restored["params"])
  return params, restored["opt_state"], restored["meta"]["step"]


def save_params(run_dir: Path, step: int, params: dict):
  with manager(run_dir) as mgr:
    mgr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    mgr.wait_until_finished()
  record_digest(run_dir, step, params)


def params_sha256(params: dict) -> str:
  """The content hash of a parameter tree (a pure dict), as its arrays' names and bytes."""
  leaves = flatten(jax.device_get(params))
  return digest.arrays_sha256({k: np.asarray(v) for k, v in leaves.items()})


def record_digest(run_dir: Path, step: int, params: dict):
  """`checkpoint_digests.json`: each saved step's parameter hash, the checkpoint's identity."""
  path = Path(run_dir) / files.DIGESTS
  write_json(path, {**(read_json(path) or {}), str(step): params_sha256(params)})


def checkpoint_id(path: Path) -> dict:
  """What a model's weights are: {"step", "params_sha256"} of a run's latest checkpoint (hashed
  now if the save did not record it), or {"hf_sha256"} of a Hugging Face directory's weights."""
  path = Path(path)
  if (path / CHECKPOINTS).is_dir():
    ident = files.recorded_checkpoint_id(path)
    if ident is None:
      raise FileNotFoundError(f"no checkpoint under {path / CHECKPOINTS}")
    if ident["params_sha256"] is None:
      record_digest(path, ident["step"], restore_params(path, model_config(path), ident["step"]))
      ident = files.recorded_checkpoint_id(path)
    return ident
  weights, _ = hf.weight_files(path)
  return {"hf_sha256": digest.files_sha256([*weights, path / hf.CONFIG])}


def abstract_params(cfg: ModelConfig) -> dict:
  """Shapes and dtypes of the parameters, nothing allocated."""
  model = nnx.eval_shape(lambda: MMfreeLM(cfg, nnx.Rngs(0)))
  return _abstract(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def restore_params(run_dir: Path, cfg: ModelConfig, step: int | None = None) -> dict:
  with manager(run_dir, max_to_keep=None) as mgr:
    step = mgr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {Path(run_dir) / CHECKPOINTS}")
    args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params(cfg)))
    return mgr.restore(step, args=args)["params"]


def build_model(cfg: ModelConfig, params: dict) -> MMfreeLM:
  """A model holding `params` (a pure dict as saved), without a random initialization."""
  model = nnx.eval_shape(lambda: MMfreeLM(cfg, nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  # Device arrays once here: numpy leaves would be copied to the device on every call.
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  nnx.update(model, state)
  return model


def read_config_of(path: Path) -> ModelConfig:
  """The model config of a run directory or a Hugging Face checkpoint, without the weights."""
  if (path / CHECKPOINTS).is_dir():
    return model_config(path)
  return hf.hf_config(path)


def read_params(path: Path, step: int | None = None) -> tuple[ModelConfig, dict]:
  """(config, params) of a run directory (orbax) or a Hugging Face checkpoint directory."""
  if not path.is_dir():
    raise FileNotFoundError(f"{path}: no such directory (expected a run or checkpoint directory)")
  if (path / CHECKPOINTS).is_dir():
    cfg = read_config_of(path)
    return cfg, restore_params(path, cfg, step)
  return hf.load_hf(path)
