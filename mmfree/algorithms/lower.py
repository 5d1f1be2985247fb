"""Lowering: a calibrated `hw` model's parameters → a neuron program bundle (`program.py`).

Plain data in (a params pytree, the model and quant configs, the frozen scales), integers out:
ternary weights, β as a multiplier and shift, RMSNorm gains and formats, lower bounds, LUTs. The
populations follow the `hw` model's dataflow, with these fusions:
  bitlinear_in   a BitLinear's own RMSNorm + its int8 quantizer (per-token exponent or static)
  mlgru          rescale of f and i, LUT σ, lower bound, SiLU(i)·(1−f), integrator, SiLU(h)
  g_norm         rescale of g + RMSNorm
  glu            rescale of gate and up, SiLU LUT, product
  residual       rescale of the branch's accumulator + residual add + requantize
Skip connections are identity synapses into a residual population's `x` port (a fan-in sum on
the chip). A BitLinear's accumulator is rescaled by its target population, which receives the
per-token input exponent beside the accumulated messages. The static range check (`ranges`) runs
on every program: it is refused if an intermediate can overflow where the design does not
saturate, and its rows (saturating ones marked) go into `program.json`. Event-driven levers
(`quant.threshold`, `quant.delta`) are the senders' (`emulate.send`); the state they keep joins
the populations' `state_bits`, so that the mapping places it.
"""

import dataclasses
from pathlib import Path

import numpy as np

from mmfree.core import files
from mmfree.core.model import ModelConfig
from mmfree.core.quant import QuantConfig, Scale
from mmfree.data.tokenizers import load_tokenizer
from mmfree.loihi import bundle_io, emulate, fixed, neurons, program, ranges
from mmfree.loihi.program import HOST, Population, Program, Synapses
from mmfree.quant import calibrate, hw, integers
from mmfree.store import checkpoint

FUSIONS = ("bitlinear_in", "mlgru", "g_norm", "glu", "residual")


def _fmt(s: Scale) -> dict:
  return {"frac": hw.frac_of(s), "bits": s.bits}


def point_key(path: str, point: str) -> str:
  """The `hw` model's name of a quantization point (what its saturation counts are keyed by)."""
  return f"{path}.{point}" if path else point


class _Builder:
  """Collects populations, synapse groups and arrays; reads scales by module path."""

  def __init__(self, params: dict, cfg: ModelConfig, qcfg: QuantConfig, scales: dict):
    self.params, self.cfg, self.qcfg, self.scales = params, cfg, qcfg, scales
    self.populations, self.synapses, self.arrays = [], [], {}

  def scale(self, path: str, point: str) -> Scale:
    s = self.scales.get(point_key(path, point))
    if s is None:
      raise ValueError(
        f"no frozen scale for {path}.{point}: lowering needs every point calibrated with "
        "power-of-two scales (run `mmfree quantize calibrate` without quant.disabled)"
      )
    return s

  def fmt(self, path: str, point: str) -> dict:
    return _fmt(self.scale(path, point))

  def param(self, path: str):
    node = self.params
    for part in path.split("."):
      node = node[int(part) if part.isdigit() else part]
    return node

  def array(self, key: str, a) -> str:
    self.arrays[key] = np.asarray(a)
    return key

  def norm(self, path: str, D: int) -> tuple[dict, dict]:
    """(params, arrays) of the integer RMSNorm at `path` (a module with rms_* points)."""
    own = {n: self.scale(path, n) for n in ("rms_in", "rms_gain", "rms_inv", "rms_out")}
    fmt = hw.rms_format(hw.Hw(self.qcfg, tuple(own.items())), D, self.cfg.rms_norm_eps)
    if fmt is None:
      raise ValueError(f"{path}: lowering needs integer RMSNorms (quant.rmsnorm='int')")
    gain = np.asarray(self.param(f"{path}.weight"), np.float32)
    gain_q = fixed.quantize(gain, -fmt.gain_frac, fmt.gain_bits, fmt.rounding, np.int32)
    return {"norm": dataclasses.asdict(fmt)}, {"gain": self.array(f"{path}.gain", gain_q)}

  def rmsnorm(self, path: str, size: int, layer: int | None, source: str, fmt_in: tuple,
              fmt_out: tuple) -> str:  # fmt: skip
    """A standalone RMSNorm population: its input's format in, the point after it out, each
    given as (module path, point)."""
    params, arrays = self.norm(path, size)
    params |= {"in": self.fmt(*fmt_in), "out": self.fmt(*fmt_out),
               "point": {"norm": path, "in": point_key(*fmt_in),
                         "out": point_key(*fmt_out)}}  # fmt: skip
    name = self.population(path, "rmsnorm", size, layer, params, arrays, out=params["out"])
    self.identity(source, name, size)
    return name

  def population(self, name, kind, size, layer, params, arrays=None, state=None, out=None):
    """Add a population; nested params ({"f": {"m": 3}}) flatten to "f_m" (program.json is flat)."""
    flat = {}
    for k, v in params.items():
      items = {f"{k}_{k2}": v2 for k2, v2 in v.items()} if isinstance(v, dict) else {k: v}
      clash = sorted(set(items) & set(flat))
      if clash:  # e.g. "a" {"out_frac"} against "a_out" {"frac"}: one would silently win
        raise ValueError(f"{name}: parameters {clash} are named twice when flattened")
      flat |= items
    out_bits = (out or {}).get("bits", program.HOST_OUT_BITS)
    self.populations.append(
      Population(name, kind, size, layer, flat, arrays or {}, state or {}, out_bits)
    )
    return name

  def bitlinear(self, path: str, source: str, layer: int | None, target: str, *ports) -> dict:
    """The fused norm + int8 quantizer population of BitLinear `path` (fed by `source`) and its
    synapses into `target`, its columns split evenly over `ports`; returns the rescale the target
    applies (β = m·2^−k, the output format)."""
    w = np.asarray(self.param(f"{path}.kernel"), np.float32)
    I, O = w.shape
    w_q, beta = integers.ternary(w)  # as the frozen `hw` model derives them
    in_bits = self.qcfg.bits_of("bitlinear_in")
    m, k = neurons.multiplier(np.float32(beta), neurons.rescale_m_bits(I, in_bits))
    out = self.fmt(path, "bitlinear_out")
    rescale = {"m": int(m), "k": int(k), "acc_bits": self.qcfg.acc_bits, "out_frac": out["frac"],
               "out_bits": out["bits"], "path": path}  # fmt: skip
    norm_params, norm_arrays = self.norm(f"{path}.norm", I)
    policy = {"policy": self.qcfg.bitlinear_input, "in_bits": in_bits,
              "point": {"norm": f"{path}.norm", "in": f"{path}.bitlinear_in"}}  # fmt: skip
    if self.qcfg.bitlinear_input == "static":
      s_in = self.scale(path, "bitlinear_in")
      policy |= {"e_x": -hw.frac_of(s_in), "in_bits": s_in.bits}
    if target == HOST:  # the host applies the rescale of an lm_head it runs itself
      policy["head"] = rescale
    name = self.population(f"{path}.in", "bitlinear_in", I, layer, {**norm_params, **policy},
                           norm_arrays, out={"bits": policy["in_bits"]})  # fmt: skip
    self.identity(source, name, I)
    n = O // len(ports)
    for j, port in enumerate(ports):
      group = path if len(ports) == 1 else f"{path}.{port}"
      key = self.array(group + ".weight", np.asarray(w_q[:, j * n : (j + 1) * n], np.int8))
      self.synapses.append(Synapses(group, name, target, port, I, n, 2, 0, key))
    return rescale

  def identity(self, source: str, target: str, n: int, port: str = "x"):
    """A skip connection: one synapse of weight 1 per neuron (a fan-in sum on the chip)."""
    key = self.array(f"{target}.{port}{program.SKIP}", np.eye(n, dtype=np.int8))
    self.synapses.append(Synapses(key, source, target, port, n, n, 2, 0, key))


def lower(params: dict, cfg: ModelConfig, qcfg: QuantConfig, scales: dict, *, lm_head="chip",
          source: str = "", inputs: dict | None = None) -> Program:  # fmt: skip
  """The program of a calibrated model: `params` a pure dict (`nnx.to_pure_dict`); `inputs` (the
  content hashes it was lowered from) go into its provenance."""
  if qcfg.scale != "pow2" or qcfg.rmsnorm != "int":
    raise ValueError(
      "lowering needs shifts everywhere: calibrate with quant.scale='pow2' and quant.rmsnorm='int'"
    )
  if lm_head not in program.IO["lm_head"]:
    raise ValueError(f"lm_head={lm_head!r}: expected one of {program.IO['lm_head']}")
  b = _Builder(params, cfg, qcfg, scales)
  H, D, I = cfg.hidden_size, cfg.inner_size, cfg.mlp_size
  lut = neurons.sigmoid_lut(qcfg.lut_size, qcfg.lut_in_frac, qcfg.lut_out_frac, qcfg.lut_x_max)
  lut_params = {"lut": [int(v) for v in lut.values], "lut_step_bits": lut.step_bits,
                "lut_in_frac": qcfg.lut_in_frac, "lut_out_frac": qcfg.lut_out_frac,
                "nonlinearity": qcfg.nonlinearity, "rounding": qcfg.rounding}  # fmt: skip
  lb_LxD = integers.lower_bounds(params["lower_bounds"])  # as the frozen `hw` model does
  F = qcfg.lut_out_frac
  b.array(
    program.EMBEDDING, np.asarray(params["embeddings"]["embedding"], np.float32)
  )  # the host's
  x = HOST  # the residual stream's source: the host's embedding, then each block's output
  for l in range(cfg.num_hidden_layers):
    p, a, m = f"layers.{l}", f"layers.{l}.attn", f"layers.{l}.mlp"
    attn_norm = b.rmsnorm(f"{p}.attn_norm", H, l, x, (p, "block_in"), (p, "attn_norm"))
    mlgru, g_norm = f"{a}.mlgru", f"{a}.g_norm"
    f = b.bitlinear(f"{a}.f_proj", attn_norm, l, mlgru, "f")
    i = b.bitlinear(f"{a}.i_proj", attn_norm, l, mlgru, "i")
    g = b.bitlinear(f"{a}.g_proj", attn_norm, l, g_norm, "g")
    arrays = {}
    if l > 0 and cfg.use_lower_bound:
      lb_q = fixed.quantize(lb_LxD[l], -F, F + 2, qcfg.rounding, np.int32)
      arrays["lb"] = b.array(f"{a}.lb", lb_q)
    b.population(mlgru, "mlgru", D, l,
                 {**lut_params, "f": f, "i": i, "c": b.fmt(a, "c"), "h": b.fmt(a, "h"),
                  "out": b.fmt(a, "silu_h"), "wide_bits": hw.WIDE_BITS,
                  "sigma_bits": hw.sigma_bits(qcfg),
                  "point": {"c": point_key(a, "c"), "h": point_key(a, "h"),
                            "out": point_key(a, "silu_h")}},
                 arrays, {"h": qcfg.state_bits}, b.fmt(a, "silu_h"))  # fmt: skip
    g_params, g_arrays = b.norm(g_norm, D)
    b.population(g_norm, "g_norm", D, l,
                 {**g_params, "g": g, "out": b.fmt(a, "g_norm"),
                  "point": {"norm": g_norm, "out": point_key(a, "g_norm")}},
                 g_arrays, out=b.fmt(a, "g_norm"))  # fmt: skip
    gated = b.population(f"{a}.gated", "product", D, l,
                         {"a": b.fmt(a, "g_norm"), "b": b.fmt(a, "silu_h"),
                          "out": b.fmt(a, "gated"), "rounding": qcfg.rounding,
                          "point": {"out": point_key(a, "gated")}},
                         out=b.fmt(a, "gated"))  # fmt: skip
    b.identity(g_norm, gated, D, "a")
    b.identity(mlgru, gated, D, "b")
    res_attn = f"{p}.res_attn"
    o = b.bitlinear(f"{a}.o_proj", gated, l, res_attn, "a")
    b.population(res_attn, "residual", H, l,
                 {"a": o, "x": b.fmt(p, "block_in"), "branch": b.fmt(p, "attn_out"),
                  "out": b.fmt(p, "residual"), "rounding": qcfg.rounding,
                  "point": {"branch": point_key(p, "attn_out"), "out": point_key(p, "residual")}},
                 out=b.fmt(p, "residual"))  # fmt: skip
    b.identity(x, res_attn, H)
    mlp_norm = b.rmsnorm(f"{p}.mlp_norm", H, l, res_attn, (p, "residual"), (p, "mlp_norm"))
    glu, res_mlp = f"{m}.glu", f"{p}.res_mlp"
    gu = b.bitlinear(f"{m}.gate_proj", mlp_norm, l, glu, "gate", "up")  # [gate | up] columns
    b.population(glu, "glu", I, l,
                 {**lut_params, "gate_up": gu, "gate": b.fmt(m, "glu_gate"),
                  "up": b.fmt(m, "glu_up"), "silu": b.fmt(m, "glu_silu"),
                  "out": b.fmt(m, "glu_prod"), "wide_bits": hw.WIDE_BITS,
                  "point": {"gate": point_key(m, "glu_gate"), "up": point_key(m, "glu_up"),
                            "silu": point_key(m, "glu_silu"), "out": point_key(m, "glu_prod")}},
                 out=b.fmt(m, "glu_prod"))  # fmt: skip
    d = b.bitlinear(f"{m}.down_proj", glu, l, res_mlp, "a")
    last = l == cfg.num_hidden_layers - 1
    nxt = ("norm", "rms_in") if last else (f"layers.{l + 1}", "block_in")
    out = b.fmt(*nxt)
    b.population(res_mlp, "residual", H, l,
                 {"a": d, "x": b.fmt(p, "residual"), "branch": b.fmt(p, "mlp_out"), "out": out,
                  "rounding": qcfg.rounding,
                  "point": {"branch": point_key(p, "mlp_out"), "out": point_key(*nxt)}},
                 out=out)  # fmt: skip
    b.identity(res_attn, res_mlp, H)
    x = res_mlp
  final = b.rmsnorm("norm", H, None, x, ("norm", "rms_in"), ("", "final_norm"))
  if lm_head == "chip":
    head = b.bitlinear("lm_head", final, None, "readout", "x")
    b.population("readout", "readout", cfg.vocab_size, None,
                 {"logits": head, "rounding": qcfg.rounding})  # fmt: skip
  else:
    b.bitlinear("lm_head", final, None, HOST, "logits")
  prog = Program(
    version=program.VERSION,
    model=cfg.to_dict(),
    quant=qcfg.to_dict(),
    io={"embedding": HOST, "sampling": HOST, "lm_head": lm_head},
    fusions=list(FUSIONS),
    provenance=program.provenance(source, inputs or {}),
    ranges=[],
    populations=tuple(b.populations),
    synapses=tuple(b.synapses),
    arrays=b.arrays,
  )
  prog = dataclasses.replace(prog, populations=_lever_states(prog))
  rows = ranges.check(prog)
  ranges.require(rows)
  return dataclasses.replace(prog, ranges=rows)


def _lever_states(prog: Program) -> tuple:
  """Populations with the state their event-driven levers keep: a sigma-delta sender the value
  its receivers hold (its message width), a receiver the running sum per port (the port's
  summed-input width, `ranges`)."""
  lv = emulate.levers(prog)
  delta = {k for k, v in lv.items() if "delta" in v}
  out = []
  for q in prog.populations:
    state = dict(q.state_bits)
    if q.name in delta:
      state["delta_last"] = q.out_bits
    for port in sorted({s.port for s in prog.fan_in(q.name) if s.source in delta}):
      groups = [s for s in prog.fan_in(q.name) if s.port == port]
      state[f"acc_{port}"] = fixed.signed_bits(*ranges.fan_in_interval(prog, groups))
    out.append(dataclasses.replace(q, state_bits=state))
  return tuple(out)


def inputs(run_dir: Path, lm_head: str) -> dict:
  """What the program of a run depends on: its checkpoint, its calibration, the lm_head's place."""
  run_dir = Path(run_dir)
  return {"checkpoint": checkpoint.checkpoint_id(run_dir), "quant": files.quant_id(run_dir),
          "lm_head": lm_head}  # fmt: skip


def lower_run(run_dir: Path, out: Path | None = None, lm_head: str = "chip") -> Path:
  """`mmfree lower`: the calibrated run's program, saved to `out` (default RUN_DIR/program)."""
  run_dir = Path(run_dir)
  qcfg, scales = calibrate.load(run_dir)
  record = inputs(run_dir, lm_head)
  cfg, params = checkpoint.read_params(run_dir)  # a pure dict already: no model is built
  prog = lower(params, cfg, qcfg, scales, lm_head=lm_head, source=str(run_dir), inputs=record)
  del params
  out = bundle_io.save(prog, out or run_dir / files.PROGRAM)
  if (tok := load_tokenizer(run_dir)) is not None:  # the host's: prompts in, text out
    tok.save(out)
  return out
