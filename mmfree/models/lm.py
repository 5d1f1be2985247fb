"""GLU channel mixer, pre-norm block and the full language model."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mmfree.core.model import ModelConfig
from mmfree.models.layers import BitLinear, Frozen, RMSNorm
from mmfree.models.mlgru import MLGRU
from mmfree.quant import hw as hw_lib
from mmfree.quant import integers
from mmfree.quant.points import point


class GLU(nnx.Module):
  """[g | u] = gate(x); out = down(SiLU(g) ⊙ u)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    H, I = cfg.hidden_size, cfg.mlp_size
    std = cfg.initializer_range
    kw = dict(
      eps=cfg.rms_norm_eps, precision=cfg.precision, matmul_dtype=cfg.matmul_dtype, rngs=rngs
    )
    self.gate_proj = BitLinear(H, 2 * I, init=jax.nn.initializers.normal(std), **kw)
    down_init = jax.nn.initializers.normal(std / math.sqrt(2 * cfg.num_hidden_layers))
    self.down_proj = BitLinear(I, H, init=down_init, **kw)

  def __call__(self, x_BxTxH):
    g_BxTxI, u_BxTxI = jnp.split(self.gate_proj(x_BxTxH), 2, axis=-1)
    hw = getattr(self, "hw", None)
    g_BxTxI = point(self, "glu_gate", g_BxTxI)
    s_BxTxI, clipped = (jax.nn.silu(g_BxTxI), None) if hw is None else hw_lib.silu(g_BxTxI, hw.cfg)
    s_BxTxI = point(self, "glu_silu", s_BxTxI, clipped=clipped)
    u_BxTxI = point(self, "glu_up", u_BxTxI)
    if hw is None:
      p_BxTxI = s_BxTxI * u_BxTxI
    else:
      p_BxTxI = hw_lib.product(hw, s_BxTxI, "glu_silu", u_BxTxI, "glu_up", "glu_prod")
    p_BxTxI = point(self, "glu_prod", p_BxTxI)
    return self.down_proj(p_BxTxI)


class Block(nnx.Module):
  """r = x + MLGRU(norm(x)); out = r + GLU(norm(r))."""

  def __init__(self, cfg: ModelConfig, layer_idx: int, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
    self.attn = MLGRU(cfg, layer_idx, rngs)
    self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
    self.mlp = GLU(cfg, rngs)

  def __call__(self, x_BxTxH, lb_D, h0_BxD):
    x_BxTxH = point(self, "block_in", x_BxTxH)
    n_BxTxH = point(self, "attn_norm", self.attn_norm(x_BxTxH))
    a_BxTxH, h_BxD = self.attn(n_BxTxH, lb_D, h0_BxD)
    r_BxTxH = point(self, "residual", x_BxTxH + point(self, "attn_out", a_BxTxH))
    m_BxTxH = point(self, "mlp_out", self.mlp(point(self, "mlp_norm", self.mlp_norm(r_BxTxH))))
    return r_BxTxH + m_BxTxH, h_BxD


def lower_bounds(lb_param_LxD):
  """lb_l = cumsum(softmax(Λ, layers))_l − p_0: lb_0 = 0, and l/L at init."""
  p_LxD = jax.nn.softmax(lb_param_LxD.astype(jnp.float32), axis=0)
  return jnp.cumsum(p_LxD, axis=0) - p_LxD[0]


class MMfreeLM(nnx.Module):
  """HGRNBit: embedding → L blocks → RMSNorm → ternary lm_head. State: h [L, B, D], nothing else."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.config = cfg
    H, L = cfg.hidden_size, cfg.num_hidden_layers
    self.embeddings = nnx.Embed(
      cfg.vocab_size, H, embedding_init=jax.nn.initializers.normal(cfg.initializer_range), rngs=rngs
    )
    self.lower_bounds = nnx.Param(jnp.zeros((L, cfg.inner_size), jnp.float32))
    self.frozen_lb: Frozen | None = None  # `freeze`: the lower bounds, derived once
    self.layers = nnx.List([Block(cfg, l, rngs) for l in range(L)])
    self.stacked = False  # `stack_blocks`: layers[1] holds blocks 1..L-1 stacked
    self.norm = RMSNorm(H, cfg.rms_norm_eps)
    self.lm_head = BitLinear(
      H,
      cfg.vocab_size,
      eps=cfg.rms_norm_eps,
      precision=cfg.precision,
      init=jax.nn.initializers.normal(cfg.initializer_range),
      rngs=rngs,
      matmul_dtype=cfg.matmul_dtype,
    )

  def init_state(self, batch_size: int):
    cfg = self.config
    return jnp.zeros((cfg.num_hidden_layers, batch_size, cfg.inner_size), jnp.float32)

  def __call__(self, tokens_BxT, h_LxBxD=None):
    """Logits [B, T, V] (float32) and the state after the last token."""
    if h_LxBxD is None:
      h_LxBxD = self.init_state(tokens_BxT.shape[0])
    x_BxTxH = self.embeddings(tokens_BxT).astype(jnp.float32)
    lb_LxD = None
    if self.config.use_lower_bound:
      lb = self.frozen_lb
      lb_LxD = lower_bounds(self.lower_bounds[...]) if lb is None else lb[...]
    if self.stacked or self._scannable():
      x_BxTxH, h_LxBxD = self._scanned(x_BxTxH, lb_LxD, h_LxBxD)
    else:
      hs = []
      for l, block in enumerate(self.layers):
        x_BxTxH, h_BxD = block(x_BxTxH, None if lb_LxD is None else lb_LxD[l], h_LxBxD[l])
        hs.append(h_BxD)
      h_LxBxD = jnp.stack(hs)
    return self.lm_head(point(self, "final_norm", self.norm(x_BxTxH))), h_LxBxD

  def _scannable(self) -> bool:
    """`scan_layers` where every block is alike: no `hw` scales or probes (per-module, static)."""
    if not self.config.scan_layers or len(self.layers) < 3:
      return False
    return not any(getattr(m, "hw", None) or getattr(m, "probe", None)
                   for _, m in nnx.iter_modules(self))  # fmt: skip

  def _scanned(self, x_BxTxH, lb_LxD, h_LxBxD):
    """Block 0 (no lower bound), then blocks 1..L-1 as one `lax.scan` over their stacked
    parameters, each merged into block 1's structure (they differ only in their index)."""
    lb = (lambda l: None) if lb_LxD is None else (lambda l: lb_LxD[l])
    x_BxTxH, h0_BxD = self.layers[0](x_BxTxH, lb(0), h_LxBxD[0])
    graphdef, stacked = nnx.split(self.layers[1])
    if not self.stacked:
      stacked = _stack([nnx.state(b) for b in self.layers[1:]])

    def body(x_BxTxH, inputs):
      state, lb_D, h_BxD = inputs
      return nnx.merge(graphdef, state)(x_BxTxH, lb_D, h_BxD)

    if self.config.remat == "block":
      body = jax.checkpoint(body)
    rest = (stacked, None if lb_LxD is None else lb_LxD[1:], h_LxBxD[1:])
    x_BxTxH, hs_LxBxD = jax.lax.scan(body, x_BxTxH, rest)
    return x_BxTxH, jnp.concatenate([h0_BxD[None], hs_LxBxD])

  def freeze(self):
    """Quantize every BitLinear's weights and compute the lower bounds once, in numpy, as the
    lowering does (`integers`): inference only."""
    if self.frozen_lb is None:
      self.frozen_lb = nnx.data(Frozen(jnp.asarray(integers.lower_bounds(self.lower_bounds[...]))))
    for _, m in nnx.iter_modules(self):
      if isinstance(m, BitLinear):
        m.freeze()


def _stack(states):
  return jax.tree.map(lambda *a: jnp.stack(a), *states)


def stack_blocks(graphdef, params):
  """(graphdef, params) with blocks 1..L-1 stored as one block of stacked [L-1, ...] arrays, the
  layout training keeps under `model.scan_layers`: the step then holds as many arrays (and the
  optimizer as many updates) at 32 layers as at 4, so its compile time stays flat with depth.
  Returns the inputs when the blocks cannot be scanned; `unstack_layers` undoes it (on states)."""
  model = nnx.merge(graphdef, params)
  if not model._scannable():
    return graphdef, params
  model.layers = nnx.List(list(model.layers[:2]))
  model.stacked = True
  graphdef, _ = nnx.split(model, nnx.Param)
  return graphdef, map_model_states(stack_layers, params)


def stack_layers(state):
  """A model's state (params, or an optimizer moment shaped like them), blocks 1..L-1 stacked."""
  layers = state["layers"]
  rest = _stack([layers[l] for l in range(1, len(layers))])
  return _with_layers(state, {0: layers[0], 1: rest})


def _with_layers(state, layers):
  state = jax.tree.map(lambda x: x, state)  # a new tree of the same arrays
  # nested states are plain dicts inside an nnx.State
  state["layers"] = {k: v.raw_mapping for k, v in layers.items()}
  return state


def unstack_layers(state):
  """`stack_layers` undone: the canonical layout checkpoints, lowering and evaluation read."""
  layers = state["layers"]
  n = jax.tree.leaves(layers[1])[0].shape[0]
  rest = {1 + l: jax.tree.map(lambda x, l=l: x[l], layers[1]) for l in range(n)}
  return _with_layers(state, {0: layers[0], **rest})


def map_model_states(fn, tree):
  """`fn` on every model state in `tree` (params, or the optimizer state's moments)."""
  is_state = lambda x: isinstance(x, nnx.State) and "layers" in x
  return jax.tree.map(lambda x: fn(x) if is_state(x) else x, tree, is_leaf=is_state)


def set_precision(model: nnx.Module, precision: str):
  """Switch every quantizing module of `model` to `precision` in place."""
  for _, m in nnx.iter_modules(model):
    if hasattr(m, "precision"):
      m.precision = precision
