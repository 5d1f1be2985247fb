"""Import of upstream HGRNBit checkpoints, checked against an independent numpy forward pass.

The fixture is written with safetensors directly under the upstream names and layout, never with
the code under test; the reference below follows shared/spec/model.md, in float32 so that int8
rounding sees the same values as the model.
"""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from mmfree.models import hf
from mmfree.models.lm import lower_bounds
from mmfree.store.checkpoint import abstract_params, build_model

V, H, L, M, EPS = 50, 16, 2, 32, 1e-6  # M: intermediate_size, the spec's I
B, T = 2, 5

UPSTREAM_CONFIG = {
  "architectures": ["HGRNBitForCausalLM"],
  "attn_mode": "fused_recurrent",
  "bos_token_id": 1,
  "conv_size": 4,
  "eos_token_id": 2,
  "expand_ratio": 1,
  "fuse_cross_entropy": True,
  "hidden_act": "swish",
  "hidden_ratio": 4,
  "hidden_size": H,
  "initializer_range": 0.02,
  "intermediate_size": M,
  "max_position_embeddings": 2048,
  "model_type": "hgrn_bit",
  "num_heads": 1,
  "num_hidden_layers": L,
  "pad_token_id": None,
  "rms_norm_eps": EPS,
  "share_conv_kernel": True,
  "tie_word_embeddings": False,
  "torch_dtype": "float32",
  "transformers_version": "4.40.1",
  "use_cache": True,
  "use_lower_bound": True,
  "use_short_conv": False,
  "vocab_size": V,
}


def upstream_tensors(seed=0) -> dict[str, np.ndarray]:
  """Random weights under upstream names, Linear weights [out, in]."""
  rng = np.random.default_rng(seed)
  w = lambda dout, din: rng.normal(0, 0.05, (dout, din))
  gain = lambda n: 1 + 0.1 * rng.normal(size=n)
  t = {
    "model.embeddings.weight": rng.normal(size=(V, H)),
    "model.lower_bounds": rng.normal(size=(L, H)),
    "model.norm.weight": gain(H),
    "lm_head.weight": w(V, H),
    "lm_head.norm.weight": gain(H),
  }
  for layer in range(L):
    p = f"model.layers.{layer}."
    t[p + "attn_norm.weight"] = gain(H)
    for name in ("i_proj", "f_proj", "g_proj"):
      t[p + f"attn.{name}.weight"] = w(H, H)
      t[p + f"attn.{name}.norm.weight"] = gain(H)
    t[p + "attn.g_norm.weight"] = gain(H)
    t[p + "attn.o_proj.weight"] = w(H, H)
    t[p + "attn.o_proj.norm.weight"] = gain(H)
    t[p + "mlp_norm.weight"] = gain(H)
    t[p + "mlp.gate_proj.weight"] = w(2 * M, H)
    t[p + "mlp.gate_proj.norm.weight"] = gain(H)
    t[p + "mlp.down_proj.weight"] = w(H, M)
    t[p + "mlp.down_proj.norm.weight"] = gain(M)
  return {k: v.astype(np.float32) for k, v in t.items()}


def write_checkpoint(d, tensors, config=UPSTREAM_CONFIG):
  d.mkdir(parents=True, exist_ok=True)
  (d / "config.json").write_text(json.dumps(config))
  save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
  return d


@pytest.fixture(scope="module")
def tensors():
  return upstream_tensors()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tensors):
  return write_checkpoint(tmp_path_factory.mktemp("hf") / "MMfreeLM-tiny", tensors)


# --- numpy reference (spec equations), float32 ---


def sigmoid(z):
  return 1 / (1 + np.exp(-z))


def silu(z):
  return z * sigmoid(z)


def ref_rmsnorm(x, w):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(EPS)) * w


def ref_bitlinear(t, key, x):
  """Own RMSNorm, absmax int8 per token, absmean ternary per tensor, one rescale."""
  x = ref_rmsnorm(x, t[key + ".norm.weight"])
  s = np.float32(127) / np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-5))
  x_q = np.clip(np.round(x * s), -128, 127)
  w = t[key + ".weight"]
  beta = np.maximum(np.abs(w).mean(), np.float32(1e-5))
  w_q = np.clip(np.round(w / beta), -1, 1)
  return (x_q @ w_q.T) * beta / s


def ref_lower_bounds(t):
  lam = t["model.lower_bounds"]
  p = np.exp(lam - lam.max(axis=0))
  p = p / p.sum(axis=0)
  return np.cumsum(p, axis=0) - p[0]


def ref_block(t, layer, x, lb):
  """Returns the block output and the last recurrent state."""
  p = f"model.layers.{layer}."
  xn = ref_rmsnorm(x, t[p + "attn_norm.weight"])
  f = sigmoid(ref_bitlinear(t, p + "attn.f_proj", xn))
  if layer > 0:
    f = lb + (1 - lb) * f
  c = silu(ref_bitlinear(t, p + "attn.i_proj", xn)) * (1 - f)
  h = np.zeros((x.shape[0], f.shape[-1]), np.float32)
  hs = []
  for step in range(x.shape[1]):
    h = f[:, step] * h + c[:, step]
    hs.append(h)
  g = ref_rmsnorm(ref_bitlinear(t, p + "attn.g_proj", xn), t[p + "attn.g_norm.weight"])
  r = x + ref_bitlinear(t, p + "attn.o_proj", g * silu(np.stack(hs, axis=1)))
  gu = ref_bitlinear(t, p + "mlp.gate_proj", ref_rmsnorm(r, t[p + "mlp_norm.weight"]))
  return r + ref_bitlinear(t, p + "mlp.down_proj", silu(gu[..., :M]) * gu[..., M:]), h


def ref_logits(t, tokens):
  x = t["model.embeddings.weight"][tokens]
  lb = ref_lower_bounds(t)
  for layer in range(L):
    x, _ = ref_block(t, layer, x, lb[layer])
  return ref_bitlinear(t, "lm_head", ref_rmsnorm(x, t["model.norm.weight"]))


def assert_close(got, want):
  want = np.asarray(want)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


# --- tests ---


def test_config_mapping(ckpt, tmp_path):
  cfg = hf.hf_config(ckpt)
  assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.mlp_size) == (V, H, L, M)
  assert (cfg.num_heads, cfg.expand_ratio, cfg.rms_norm_eps) == (1, 1, EPS)
  assert cfg.use_lower_bound and cfg.precision == "bitnet"
  (tmp_path / "config.json").write_text(json.dumps({**UPSTREAM_CONFIG, "intermediate_size": None}))
  assert hf.hf_config(tmp_path).mlp_size == 256  # 256 · ceil(int(16 · 4 · 2/3) / 256)


def test_layout_matches_model(ckpt, tensors):
  cfg = hf.hf_config(ckpt)
  params = hf.to_params(tensors, cfg)
  shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)
  assert shapes(params) == shapes(abstract_params(cfg))
  assert jax.tree.all(jax.tree.map(lambda a: a.dtype == np.float32, params))
  # Export is the exact inverse, back to the upstream layout.
  back = hf.from_params(params, cfg)
  assert back.keys() == tensors.keys()
  for k, v in tensors.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_block_matches_numpy_reference(ckpt, tensors):
  cfg, params = hf.load_hf(ckpt)
  model = build_model(cfg, params)
  lb_LxD = lower_bounds(model.lower_bounds[...])
  assert_close(lb_LxD, ref_lower_bounds(tensors))
  x = np.random.default_rng(1).normal(size=(B, T, H)).astype(np.float32)
  out, h = model.layers[1](jnp.asarray(x), lb_LxD[1], jnp.zeros((B, H), jnp.float32))
  want_out, want_h = ref_block(tensors, 1, x, ref_lower_bounds(tensors)[1])
  assert_close(out, want_out)
  assert_close(h, want_h)


def test_logits_match_numpy_reference(ckpt, tensors):
  cfg, params = hf.load_hf(ckpt)
  tokens = np.random.default_rng(2).integers(0, V, (B, T))
  logits, _ = build_model(cfg, params)(jnp.asarray(tokens))
  assert logits.shape == (B, T, V)
  assert_close(logits, ref_logits(tensors, tokens))


def test_sharded_checkpoint_loads_identically(ckpt, tensors, tmp_path):
  keys = list(tensors)
  halves = {
    "model-00001-of-00002.safetensors": keys[:20],
    "model-00002-of-00002.safetensors": keys[20:],
  }
  for name, part in halves.items():
    save_file({k: tensors[k] for k in part}, str(tmp_path / name), metadata={"format": "pt"})
  weight_map = {k: name for name, part in halves.items() for k in part}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  (tmp_path / "config.json").write_text(json.dumps(UPSTREAM_CONFIG))
  cfg, params = hf.load_hf(tmp_path)
  cfg_single, params_single = hf.load_hf(ckpt)
  assert cfg == cfg_single
  assert_same_params(params, params_single)

  (tmp_path / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
    hf.load_hf(tmp_path)


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
def test_half_precision_loads_as_rounded_float32(tensors, tmp_path, dtype):
  half = {k: v.astype(dtype) for k, v in tensors.items()}
  write_checkpoint(tmp_path, half)
  got = hf.read_tensors(tmp_path)
  for k, v in half.items():
    assert got[k].dtype == np.float32
    np.testing.assert_array_equal(got[k], v.astype(np.float32), err_msg=k)
  cfg, params = hf.load_hf(tmp_path)
  want = hf.to_params({k: v.astype(np.float32) for k, v in half.items()}, cfg)
  assert_same_params(params, want)


def test_mismatched_tensors_are_all_named(tensors, tmp_path):
  bad = dict(tensors)
  del bad["model.layers.1.attn.g_norm.weight"]
  bad["model.layers.0.attn.h_conv1d.weight"] = np.zeros((H, 4), np.float32)
  bad["model.layers.0.mlp.down_proj.weight"] = np.zeros((H, M + 1), np.float32)
  write_checkpoint(tmp_path, bad)
  with pytest.raises(ValueError) as e:
    hf.load_hf(tmp_path)
  msg = str(e.value)
  assert "missing (1): model.layers.1.attn.g_norm.weight" in msg
  assert "unexpected (1): model.layers.0.attn.h_conv1d.weight" in msg
  assert f"model.layers.0.mlp.down_proj.weight: expected [{H}, {M}], got [{H}, {M + 1}]" in msg


def test_pickled_checkpoint_is_refused_with_conversion_hint(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(UPSTREAM_CONFIG))
  (tmp_path / "pytorch_model.bin").write_bytes(b"never read")
  with pytest.raises(ValueError, match="never unpickles") as e:
    hf.load_hf(tmp_path)
  assert "safetensors.torch import save_file" in str(e.value)


@pytest.mark.parametrize(
  "field, value",
  [
    ("use_short_conv", True),
    ("tie_word_embeddings", True),
    ("model_type", "llama"),
    ("hidden_act", "gelu"),
    ("vocab_size", None),
  ],
)
def test_unrepresentable_config_is_refused(tmp_path, field, value):
  (tmp_path / "config.json").write_text(json.dumps({**UPSTREAM_CONFIG, field: value}))
  with pytest.raises(ValueError, match=rf"config\.json: {field}="):
    hf.hf_config(tmp_path)


def test_missing_directory_or_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere not found"):
    hf.load_hf(tmp_path / "nowhere")
  (tmp_path / "model.safetensors").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_hf(tmp_path)
  (tmp_path / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="not found"):
    hf.read_tensors(tmp_path / "nowhere")
  (tmp_path / "config.json").write_text(json.dumps(UPSTREAM_CONFIG))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf.load_hf(tmp_path)


def test_is_hf_dir(ckpt, tmp_path):
  assert hf.is_hf_dir(ckpt)
  assert not hf.is_hf_dir(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model": {"hidden_size": H}}))
  assert not hf.is_hf_dir(tmp_path)  # an mmfree run directory


@pytest.mark.parametrize("max_shard_bytes", [None, 4096])
def test_save_load_round_trip(ckpt, tmp_path, max_shard_bytes):
  cfg, params = hf.load_hf(ckpt)
  hf.save_hf(tmp_path, cfg, params, max_shard_bytes=max_shard_bytes)
  sharded = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
  if max_shard_bytes is None:
    assert (tmp_path / "model.safetensors").is_file() and not sharded
  else:
    assert len(sharded) > 2 and (tmp_path / "model.safetensors.index.json").is_file()
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model_type"] == "hgrn_bit" and saved["architectures"] == ["HGRNBitForCausalLM"]
  cfg2, params2 = hf.load_hf(tmp_path)
  assert cfg2 == cfg
  assert_same_params(params2, params)
  with pytest.raises(FileExistsError):
    hf.save_hf(tmp_path, cfg, params)


def test_mmfree_load_and_import_hf_cli_match_reference(ckpt, tensors, tmp_path):
  import mmfree
  from mmfree.cli import main

  tokens = np.random.default_rng(3).integers(0, V, (B, 12))
  want = ref_logits(tensors, tokens)
  lm = mmfree.load(ckpt)
  assert lm.tokenizer is None  # ids in, logits out without tokenizer files
  got = lm.logits(tokens)
  assert got.dtype == np.float32 and got.shape == (B, 12, V)
  assert_close(got, want)
  main(["import-hf", str(ckpt), "--out", str(tmp_path / "run")])
  assert_close(mmfree.load(tmp_path / "run").logits(tokens), want)
  with pytest.raises(SystemExit, match="already holds a checkpoint"):
    main(["import-hf", str(ckpt), "--out", str(tmp_path / "run")])
