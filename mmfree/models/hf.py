"""Hugging Face checkpoints of upstream HGRNBit (ridger/MMfreeLM-*): `config.json` + safetensors.

Upstream stores Linear weights [out, in]; our BitLinear kernels are [in, out], so they are
transposed on the way in and out. Only safetensors is read: pickled PyTorch files are refused,
never unpickled, because loading a pickle runs arbitrary code.
"""

import json
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from mmfree.core.model import ModelConfig

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
MODEL_TYPE = "hgrn_bit"
PICKLED = (".bin", ".pt", ".pth", ".ckpt")
# Importing ml_dtypes registers "bfloat16" with numpy, which safetensors' numpy reader needs.
FLOATS = (
  np.dtype(np.float16),
  np.dtype(np.float32),
  np.dtype(np.float64),
  np.dtype(ml_dtypes.bfloat16),
)

# config.json fields that become ModelConfig fields (same names); the rest is HF bookkeeping.
FIELDS = (
  "vocab_size",
  "hidden_size",
  "num_hidden_layers",
  "num_heads",
  "expand_ratio",
  "hidden_ratio",
  "intermediate_size",
  "rms_norm_eps",
  "use_lower_bound",
  "bos_token_id",
  "eos_token_id",
  "initializer_range",
)
NULLABLE = ("intermediate_size", "bos_token_id", "eos_token_id")

CONVERT = (
  'python -c "import torch; from safetensors.torch import save_file; '
  "save_file(torch.load('pytorch_model.bin', map_location='cpu', weights_only=True), "
  "'model.safetensors', metadata={'format': 'pt'})\""
)


def is_hf_dir(ckpt_dir) -> bool:
  """True when `ckpt_dir` has a Hugging Face style `config.json` (one with a `model_type`)."""
  try:
    d = json.loads((Path(ckpt_dir) / CONFIG).read_text())
  except (OSError, ValueError):
    return False
  return isinstance(d, dict) and "model_type" in d


def hf_config(ckpt_dir) -> ModelConfig:
  """ModelConfig from an upstream `config.json`; refuses what this model cannot represent."""
  path = Path(ckpt_dir) / CONFIG
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: is {ckpt_dir} a Hugging Face checkpoint directory?")
  try:
    d = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from None

  def refuse(field, why):
    raise ValueError(f"{path}: {field}={d.get(field)!r}: {why}")

  if d.get("model_type") != MODEL_TYPE:
    refuse("model_type", f"expected {MODEL_TYPE!r} (HGRNBit, ridgerchu/matmulfreellm)")
  if d.get("use_short_conv", False):
    refuse("use_short_conv", "short convolutions are not implemented (no published model has them)")
  if d.get("tie_word_embeddings", False):
    refuse("tie_word_embeddings", "the lm_head is a separate ternary BitLinear here, never tied")
  if d.get("hidden_act", "swish") not in ("swish", "silu"):
    refuse("hidden_act", "the GLU is SiLU-gated; only 'swish'/'silu' are supported")
  for field in ("vocab_size", "hidden_size", "num_hidden_layers"):
    if not isinstance(d.get(field), int):
      refuse(field, "required integer")
  # Upstream treats a null hidden_ratio etc. as its default, which ModelConfig's defaults match.
  kw = {k: d[k] for k in FIELDS if k in d and (d[k] is not None or k in NULLABLE)}
  try:
    return ModelConfig(**kw)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: {e}") from None


def _layout(cfg: ModelConfig) -> list[tuple[str, tuple, tuple[int, ...], bool]]:
  """The one mapping table: (upstream key, our pure-dict path, our shape, transpose)."""
  V, H, D, M = cfg.vocab_size, cfg.hidden_size, cfg.inner_size, cfg.mlp_size  # M: spec's I

  def linear(key, path, din, dout):
    return [(f"{key}.weight", (*path, "kernel"), (din, dout), True)] + [
      (f"{key}.norm.weight", (*path, "norm", "weight"), (din,), False)
    ]

  def norm(key, path, dim):
    return [(f"{key}.weight", (*path, "weight"), (dim,), False)]

  rows = [("model.embeddings.weight", ("embeddings", "embedding"), (V, H), False)]
  if cfg.use_lower_bound:
    rows.append(("model.lower_bounds", ("lower_bounds",), (cfg.num_hidden_layers, D), False))
  for n in range(cfg.num_hidden_layers):
    k, p = f"model.layers.{n}", ("layers", n)
    rows += norm(f"{k}.attn_norm", (*p, "attn_norm"), H)
    for name in ("i_proj", "f_proj", "g_proj"):
      rows += linear(f"{k}.attn.{name}", (*p, "attn", name), H, D)
    rows += norm(f"{k}.attn.g_norm", (*p, "attn", "g_norm"), D)
    rows += linear(f"{k}.attn.o_proj", (*p, "attn", "o_proj"), D, H)
    rows += norm(f"{k}.mlp_norm", (*p, "mlp_norm"), H)
    rows += linear(f"{k}.mlp.gate_proj", (*p, "mlp", "gate_proj"), H, 2 * M)
    rows += linear(f"{k}.mlp.down_proj", (*p, "mlp", "down_proj"), M, H)
  rows += norm("model.norm", ("norm",), H)
  rows += linear("lm_head", ("lm_head",), H, V)
  return rows


def _check_representable(cfg: ModelConfig):
  # Upstream keeps lower_bounds [L, hidden_size] and adds them to gates of width H·expand_ratio.
  if cfg.use_lower_bound and cfg.expand_ratio != 1:
    raise ValueError(
      f"expand_ratio={cfg.expand_ratio} with use_lower_bound has no upstream layout "
      "(upstream lower bounds are [L, hidden_size]); use expand_ratio=1"
    )


def to_params(tensors: dict[str, np.ndarray], cfg: ModelConfig) -> dict:
  """Our parameter pure dict (float32 numpy) from upstream tensors; every mismatch is listed."""
  _check_representable(cfg)
  rows = _layout(cfg)
  missing = [key for key, *_ in rows if key not in tensors]
  unexpected = sorted(set(tensors) - {key for key, *_ in rows})
  bad, params = [], {}
  for key, path, shape, transpose in rows:
    if key not in tensors:
      continue
    t = tensors[key]
    want = shape[::-1] if transpose else shape
    if tuple(t.shape) != want:
      bad.append(f"{key}: expected {list(want)}, got {list(t.shape)}")
    elif t.dtype not in FLOATS:
      bad.append(f"{key}: expected a floating dtype, got {t.dtype}")
    else:
      _set(params, path, np.ascontiguousarray((t.T if transpose else t).astype(np.float32)))
  if missing or unexpected or bad:
    lines = [f"checkpoint tensors do not match the config ({len(rows)} expected):"]
    for title, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", bad)):
      if names:
        lines.append(f"  {title} ({len(names)}): " + ", ".join(names))
    raise ValueError("\n".join(lines))
  if not cfg.use_lower_bound:
    # Our model always holds the parameter; without lower bounds it is never read.
    params["lower_bounds"] = np.zeros((cfg.num_hidden_layers, cfg.inner_size), np.float32)
  return params


def from_params(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """Upstream tensors (float32, weights [out, in]) from latent (unfrozen) params."""
  _check_representable(cfg)
  out = {}
  for key, path, shape, transpose in _layout(cfg):
    t = np.asarray(_get(params, path), np.float32)
    if t.shape != shape:
      name = "/".join(map(str, path))
      raise ValueError(f"param {name}: expected {list(shape)}, got {list(t.shape)}")
    out[key] = np.ascontiguousarray(t.T if transpose else t)
  return out


def weight_files(d: Path) -> tuple[list[Path], dict | None]:
  """The safetensors files to read (and the index's weight map); pickles get a conversion hint."""
  if not d.is_dir():
    raise FileNotFoundError(f"checkpoint directory {d} not found")
  if (d / WEIGHTS).is_file():  # as transformers does, the single file wins over an index
    return [d / WEIGHTS], None
  if (d / INDEX).is_file():
    weight_map = json.loads((d / INDEX).read_text()).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{d / INDEX} has no 'weight_map' object")
    files = [d / name for name in sorted(set(weight_map.values()))]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
      raise FileNotFoundError(f"{d / INDEX} lists shards that are not in {d}: {absent}")
    return files, weight_map
  pickled = sorted(p.name for p in d.iterdir() if p.suffix in PICKLED)
  if pickled:
    raise ValueError(
      f"{d} holds only pickled PyTorch weights {pickled}; mmfree never unpickles (it can run "
      f"arbitrary code). Convert to safetensors once, in an environment with torch, inside {d}:\n"
      f"  {CONVERT}\n(if it complains about shared tensors, save {{k: v.contiguous().clone()}})"
    )
  raise FileNotFoundError(f"no {WEIGHTS} or {INDEX} in {d}")


def read_tensors(ckpt_dir) -> dict[str, np.ndarray]:
  """All tensors of `model.safetensors` or of the shards its index lists; floats become float32."""
  d = Path(ckpt_dir)
  files, weight_map = weight_files(d)
  tensors = {}
  for f in files:
    with safe_open(f, framework="numpy") as sf:
      for key in sf.keys():  # noqa: SIM118 (safe_open is not iterable)
        if key in tensors:
          raise ValueError(f"tensor {key} appears in more than one shard of {d}")
        t = sf.get_tensor(key)
        tensors[key] = t.astype(np.float32) if t.dtype in FLOATS else t
  if weight_map is not None and set(weight_map) != set(tensors):
    stray = sorted(set(weight_map) ^ set(tensors))
    raise ValueError(f"{d / INDEX} weight_map disagrees with the shards' contents on {stray}")
  return tensors


def load_hf(ckpt_dir) -> tuple[ModelConfig, dict]:
  """(config, params pure dict) from an upstream checkpoint directory."""
  weight_files(Path(ckpt_dir))  # a directory of pickles is told how to convert before anything
  cfg = hf_config(ckpt_dir)
  tensors = read_tensors(ckpt_dir)
  try:
    return cfg, to_params(tensors, cfg)
  except ValueError as e:
    raise ValueError(f"{ckpt_dir}: {e}") from None


def save_hf(ckpt_dir, cfg: ModelConfig, params: dict, max_shard_bytes: int | None = None):
  """Write `config.json` and safetensors in the upstream layout, sharded past `max_shard_bytes`."""
  d = Path(ckpt_dir)
  if (d / WEIGHTS).exists() or (d / INDEX).exists():
    raise FileExistsError(f"{d} already holds a checkpoint: write to a new directory")
  tensors = from_params(params, cfg)
  d.mkdir(parents=True, exist_ok=True)
  upstream = dict(
    model_type=MODEL_TYPE,
    architectures=["HGRNBitForCausalLM"],
    **{k: getattr(cfg, k) for k in FIELDS},
    attn_mode="fused_recurrent",
    use_short_conv=False,
    conv_size=4,
    share_conv_kernel=True,
    hidden_act="swish",
    max_position_embeddings=2048,
    pad_token_id=None,
    tie_word_embeddings=False,
    fuse_cross_entropy=True,
    use_cache=True,
    torch_dtype="float32",
  )
  (d / CONFIG).write_text(json.dumps(upstream, indent=2) + "\n")

  shards, size = [{}], 0
  for key, t in tensors.items():
    if max_shard_bytes is not None and shards[-1] and size + t.nbytes > max_shard_bytes:
      shards, size = [*shards, {}], 0
    shards[-1][key] = t
    size += t.nbytes
  # transformers refuses safetensors files whose metadata lacks a known format.
  meta = {"format": "pt"}
  if len(shards) == 1:
    save_file(shards[0], d / WEIGHTS, metadata=meta)
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, d / name, metadata=meta)
    weight_map.update(dict.fromkeys(shard, name))
  total = sum(t.nbytes for t in tensors.values())
  index = {"metadata": {"total_size": total}, "weight_map": weight_map}
  (d / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value
