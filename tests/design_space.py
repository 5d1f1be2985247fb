"""Draws over the design space for the bit-exactness tests: QuantConfigs over every axis and
random tiny models, calibrated on random tokens, lowered, run by `hw` and the emulator."""

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmfree.algorithms import lower
from mmfree.core.model import ModelConfig
from mmfree.core.quant import MESSAGE_POINTS, QuantConfig
from mmfree.loihi import emulate
from mmfree.models import MMfreeLM
from mmfree.quant import calibrate, hw
from mmfree.quant.points import Probe, recorder, set_hw, set_probe
from mmfree.store.checkpoint import build_model

# Every value of every axis appears in some draw: draw i takes value (i + offset) mod len.
AXES = {
  "act_bits": (8, 4, 6, 12, 16),
  "state_bits": (16, 8, 12, 24),
  "rounding": ("half_even", "floor"),
  "pow2_mode": ("ceil", "nearest"),
  "nonlinearity": ("silu", "relu"),
  "bitlinear_input": ("per_token", "static"),
  "input_bits": (8, 6, 12),
  "lut": ((8, 6, 8), (4, 6, 8), (16, 5, 9), (8, 7, 7)),  # (size, in_frac, out_frac)
  "levers": (  # (threshold, delta): none, sigma-delta at 0 everywhere, thresholds above 0
    ((), ()),
    ((), tuple(f"{p}=0" for p in MESSAGE_POINTS if p != "bitlinear_in")),
    (
      ("gated=2", "glu_prod=1", "g_norm=3"),
      ("residual=2", "block_in=1", "silu_h=1", "attn_norm=0", "final_norm=1"),
    ),
  ),
  "layer_bits": ((), ("layers.0.residual=12", "layers.0.attn.silu_h=6")),  # one module's own
}
MODEL_AXES = {
  "hidden_size": (24, 13, 40, 19),  # powers of two and not
  "num_hidden_layers": (2, 1, 3),
  "use_lower_bound": (True, False),
  "expand_ratio": (1, 2),
  "intermediate_size": (32, 20, 45),
  "lm_head": ("chip", "host"),
}
VOCAB, T, B = 40, 10, 2


def pick(axes: dict, i: int) -> dict:
  return {k: v[(i + 3 * j) % len(v)] for j, (k, v) in enumerate(axes.items())}


@dataclasses.dataclass
class Draw:
  qcfg: QuantConfig
  cfg: ModelConfig
  lm_head: str
  seed: int


def draw(i: int) -> Draw:
  q, m = pick(AXES, i), pick(MODEL_AXES, i)
  size, in_frac, out_frac = q.pop("lut")
  threshold, delta = q.pop("levers")
  bits = q.pop("layer_bits")
  lm_head = m.pop("lm_head")
  qcfg = QuantConfig(**q, lut_size=size, lut_in_frac=in_frac, lut_out_frac=out_frac,
                     lut_x_max=8.0, threshold=threshold, delta=delta, bits=bits)  # fmt: skip
  cfg = ModelConfig(vocab_size=VOCAB, bos_token_id=None, eos_token_id=None, **m)
  return Draw(qcfg, cfg, lm_head, i)


def build(d: Draw):
  """(params as a pure dict, frozen scales, the program) of a random model calibrated on random
  tokens (wider than at init, so that points saturate somewhere)."""
  model = MMfreeLM(d.cfg.replace(precision="bitnet"), nnx.Rngs(d.seed))
  rng = np.random.default_rng(d.seed)
  for path, p in nnx.iter_graph(model):
    if isinstance(p, nnx.Param) and path[-1] in ("kernel", "lower_bounds", "embedding"):
      p[...] = p[...] + jnp.asarray(rng.normal(0, 0.3, p.shape), jnp.float32)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  batches = [rng.integers(0, VOCAB, (B, T)) for _ in range(2)]
  scales, _ = calibrate.calibrate(model, batches, d.qcfg)
  prog = lower.lower(params, d.cfg, d.qcfg, scales, lm_head=d.lm_head)
  return params, scales, prog


def hw_run(d: Draw, params, scales, tokens_BxT):
  """The frozen `hw` model on tokens: (logits, values by point, saturated counts by point)."""
  model = build_model(d.cfg.replace(precision="hw"), params)
  set_hw(model, d.qcfg, scales)
  model.freeze()
  out = {}
  for kind in ("values", "measure"):
    set_probe(model, Probe(kind, rounding=d.qcfg.rounding))
    with hw.inference():
      (logits, _), rec = nnx.jit(recorder(lambda m, t: m(t)))(model, jnp.asarray(tokens_BxT))
    out[kind] = rec
  values = {k: np.asarray(v[0], np.float64) for k, v in out["values"].items()}
  sat = {k: int(sum(np.sum(r["saturated"]) for r in v)) for k, v in out["measure"].items()}
  return np.asarray(logits), values, sat


def outputs_by_point(L: int) -> dict:
  """Population → the `hw` point holding its output (integers at that point's scale)."""
  pairs = {"norm": "final_norm"}
  for l in range(L):
    p = f"layers.{l}"
    pairs |= {f"{p}.attn_norm": f"{p}.attn_norm", f"{p}.attn.mlgru": f"{p}.attn.silu_h",
              f"{p}.attn.g_norm": f"{p}.attn.g_norm", f"{p}.attn.gated": f"{p}.attn.gated",
              f"{p}.res_attn": f"{p}.residual", f"{p}.mlp_norm": f"{p}.mlp_norm",
              f"{p}.mlp.glu": f"{p}.mlp.glu_prod"}  # fmt: skip
    if l + 1 < L:
      pairs[f"{p}.res_mlp"] = f"layers.{l + 1}.block_in"
  return pairs


def emulator_clips(result: emulate.Result) -> dict:
  """Clips the emulator counted, by `hw` point."""
  out: dict = {}
  for (_, point), n in result.clips.items():
    out[point] = out.get(point, 0) + int(n.sum())
  return out
