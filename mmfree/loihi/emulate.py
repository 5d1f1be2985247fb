"""The emulator: a program bundle run token by token in numpy integers, with activity counts.

Each neuron kind is a function of its ports' messages, built from the integer kernels of
`neurons` (the same ones the `hw` model runs), so its integers equal the `hw` model's at every
population output. Messages are integers with a Q format (a per-token exponent for a BitLinear's
integer inputs). Activity per population and token: synaptic operations (non-zero weight ×
non-zero incoming message), messages sent (non-zero outputs), neuron updates, and the messages
each event-driven lever removed (`quant.threshold`, `quant.delta`: a sender applies them to its
output, a receiver of sigma-delta messages accumulates them per port). Clips per
quantization point and token: every saturation a population applies, counted under the `hw`
model's point it implements (the lowering names them in `point_*` and `*_path` parameters), so
they equal the `hw` model's saturation counts on the same tokens. numpy only.
"""

import dataclasses

import numpy as np

from mmfree.core.experiment import as_tuples, to_dataclass
from mmfree.core.quant import QuantConfig
from mmfree.loihi import fixed, neurons, program, ranges
from mmfree.loihi.program import EMBEDDING, HOST, Population, Program

# Counted per population and step: the last two are the messages each lever removed against
# what it was given: non-zero values sent as 0; unchanged values and changes below the delta
# threshold, less the values that fell to 0 (a sigma-delta sender must tell its receivers).
ACTIVITY = ("synops", "messages", "updates", "removed_threshold", "removed_delta")


@dataclasses.dataclass
class Msg:
  """Integers q [B, n] standing for q·2^−frac; a BitLinear input's frac is −e_x per token."""

  q: np.ndarray
  frac: int | np.ndarray


@dataclasses.dataclass
class Result:
  tokens: np.ndarray  # [B, T] the input tokens
  new: np.ndarray  # [B, N] the greedy continuation
  logits: np.ndarray  # [B, T + N − 1, V] float32, one row per step
  outputs: dict  # population -> int64 [B, T, n] it computed (before its levers), when recorded
  activity: dict  # population -> {ACTIVITY name: int64 [steps]}
  clips: dict = dataclasses.field(default_factory=dict)  # (population, point) -> int64 [steps]
  levers: dict = dataclasses.field(default_factory=dict)  # sender -> its point and levers


def _matmul_weights(program: Program, s) -> np.ndarray:
  """Synapse group `s` as float32, whose matmuls are exact while every sum stays within 2^24
  (the static bound of `ranges`); float64 (exact to 2^53) beyond. BLAS, unlike int64 matmuls."""
  lo, hi = ranges.fan_in_interval(program, [s])
  exact32 = max(-lo, hi) <= 1 << 24
  return np.asarray(program.weights(s.name), np.float32 if exact32 else np.float64)


def out_frac(pop: Population) -> int | None:
  """The Q format of a population's messages; None for per-token BitLinear inputs, whose exponent
  travels beside them (what a backend needs to read messages it did not compute)."""
  p = pop.params
  if pop.kind == "bitlinear_in":
    return -p["e_x"] if p["policy"] == "static" else None
  return p["logits_out_frac"] if pop.kind == "readout" else p["out_frac"]


def out_point(pop: Population) -> str | None:
  """The `hw` point a population's messages are the values of (None: the readout's logits)."""
  return pop.params.get("point_in" if pop.kind == "bitlinear_in" else "point_out")


def levers(program: Program) -> dict:
  """{sender (a population or HOST): {"point": its `hw` point, lever: threshold, ...}} for the
  senders with levers, refused where a receiver could not accumulate (a port fed by senders
  with and without delta, a host lm_head)."""
  qcfg = to_dataclass(QuantConfig, as_tuples(program.quant), "quant")
  first = next(q for q in program.populations if q.kind == "rmsnorm")
  points = {HOST: first.params.get("point_in")} | {
    q.name: out_point(q) for q in program.populations
  }
  out = {k: {"point": point, **lv} for k, point in points.items()
         if point and (lv := qcfg.levers_of(point))}  # fmt: skip
  for s in program.synapses:
    if s.target == HOST and s.source in out:
      raise ValueError(
        f"{s.source}: quant.threshold/quant.delta on the lm_head's input need the lm_head on chip "
        "(`mmfree lower --lm-head chip`): the host reads its messages dense"
      )
  for q in program.populations:
    for port in {s.port for s in program.fan_in(q.name)}:
      kinds = {"delta" in out.get(s.source, {}) for s in program.fan_in(q.name) if s.port == port}
      if len(kinds) > 1:
        raise ValueError(f"{q.name}: port {port!r} sums sigma-delta and plain messages")
  return out


def _sub(p: dict, prefix: str) -> dict:
  return {k[len(prefix) + 1 :]: v for k, v in p.items() if k.startswith(prefix + "_")}


class Emulator:
  """Runs `program` (see `bundle_io.load`); `step` advances every population by one token."""

  def __init__(self, program: Program):
    self.p = program
    q = program.quant
    self.rounding = q["rounding"]
    self.lut = neurons.sigmoid_lut(q["lut_size"], q["lut_in_frac"], q["lut_out_frac"],
                                   q["lut_x_max"])  # fmt: skip
    self.embedding = np.asarray(program.arrays[EMBEDDING], np.float32)
    self.fan_in = {q.name: program.fan_in(q.name) for q in program.populations}
    first = next(q for q in program.populations if q.kind == "rmsnorm")
    self.embed_fmt = (first.params["in_frac"], first.params["in_bits"])
    self.embed_point = first.params.get("point_in")
    self.levers = levers(program)
    self.state: dict = {}
    self.last: dict = {}  # sigma-delta sender -> the value its receivers hold [B, n]
    self.acc: dict = {}  # (population, port) fed sigma-delta messages -> their running sum
    self.removed: dict = {}  # sender -> (threshold, delta) messages its levers removed this step
    self.clips: dict = {}  # (population, point) -> values clipped in the current step
    self._pop = HOST  # the population being stepped, for `clip`
    self._weights, self._row_nnz = {}, {}  # built on first use: a Lava neuron process needs none

  def weights(self, synapses: str) -> np.ndarray:
    if synapses not in self._weights:
      self._weights[synapses] = _matmul_weights(self.p, self.p.synapse(synapses))
    return self._weights[synapses]

  def row_nnz(self, synapses: str) -> np.ndarray:
    """Non-zero weights out of each source neuron: the synaptic operations its message costs."""
    if synapses not in self._row_nnz:  # from the int8 weights: counting needs no matmul copy
      self._row_nnz[synapses] = np.count_nonzero(self.p.weights(synapses), axis=1)
    return self._row_nnz[synapses]

  def reset(self, batch: int):
    self.state = {q.name: np.zeros((batch, q.size), np.int64) for q in self.p.populations
                  if "h" in q.state_bits}  # fmt: skip
    delta = {k for k, lv in self.levers.items() if "delta" in lv}
    H = self.embedding.shape[1]
    self.last = {k: np.zeros((batch, H if k == HOST else self.p.population(k).size), np.int64)
                 for k in delta}  # fmt: skip
    self.acc = {(s.target, s.port): np.zeros((batch, s.n_out), np.int64)
                for s in self.p.synapses if s.source in delta}  # fmt: skip

  def count(self, point: str | None, mask):
    """Count the values `mask` marks as clips of `point` (a `hw` point key), in the current
    population; None: a saturation no point stands for (none changes a value)."""
    if point:
      key = (self._pop, point)
      self.clips[key] = self.clips.get(key, 0) + int(np.count_nonzero(mask))

  def clip(self, point: str | None, u, bits: int, also=None):
    """u saturated to `bits`; the values it changed (or `also` marks) count as clips of `point`."""
    q = fixed.saturate(u, bits)
    self.count(point, q != u if also is None else (q != u) | also)
    return q

  def requant(self, q, f_from, f_to, bits, point: str | None, also=None):
    """q·2^−f_from on the grid 2^−f_to (a shift: exact between pow2 grids), saturated to `bits`;
    what the saturation clipped counts as clips of `point`."""
    return self.clip(
      point, fixed.shift_right(q, int(f_from) - int(f_to), self.rounding), bits, also
    )

  def embed(self, tokens_B) -> Msg:
    """The host's part: a token's embedding row quantized to the first norm's input format."""
    f, bits = self.embed_fmt
    u = fixed.round_scaled(self.embedding[np.asarray(tokens_B)], -f, self.rounding)
    self._pop = HOST
    return Msg(self.clip(self.embed_point, u.astype(np.int64), bits), f)

  def send(self, sender: str, y_q: np.ndarray) -> np.ndarray:
    """The messages `sender` sends for its output `y_q` [B, n] under its levers (its own
    integers without any), and what each lever removed, in `self.removed`."""
    lv = self.levers.get(sender)
    if lv is None:  # no lever: the counts' own pass over y_q is the only one
      self.removed[sender] = (0, 0)
      return y_q
    q = neurons.threshold_int(y_q, lv["threshold"]) if "threshold" in lv else y_q
    d = q
    if "delta" in lv:
      d, self.last[sender] = neurons.delta_step_int(q, self.last[sender], lv["delta"])
    nnz = [int(np.count_nonzero(v)) for v in (y_q, q, d)]
    self.removed[sender] = (nnz[0] - nnz[1], nnz[1] - nnz[2])
    return d

  def fire(self, pop: Population, ports: dict) -> Msg:
    """`pop`'s output for the step from its ports' summed synaptic input; a port fed sigma-delta
    messages adds them to what it holds (the receiver's accumulator)."""
    for port, m in ports.items():
      if (key := (pop.name, port)) in self.acc:
        self.acc[key] = self.acc[key] + m.q
        ports[port] = Msg(self.acc[key], m.frac)
    self._pop = pop.name
    return KINDS[pop.kind](self, pop, ports)

  def counts(self, pop: Population, sent: dict) -> tuple[int, ...]:
    """`ACTIVITY` of `pop` in one step, from every sender's messages `sent` [B, n] (the
    levers' removals from `self.removed`)."""
    synops = sum(int(((sent[s.source] != 0) * self.row_nnz(s.name)).sum())
                 for s in self.fan_in[pop.name])  # fmt: skip
    y_q = sent[pop.name]
    messages = int(np.count_nonzero(y_q))
    if pop.kind == "bitlinear_in" and pop.params["policy"] == "per_token":
      messages += len(y_q)  # the token's input exponent, one side message per token
    return synops, messages, pop.size * len(y_q), *self.removed[pop.name]

  def activity(self, outputs: dict) -> dict:
    """Activity per population and step, as `run` counts it, from outputs another backend
    recorded: {population or HOST: integers [B, steps, n]} (before the levers: they are
    applied again here)."""
    self.reset(len(outputs[HOST]))
    rows: dict = {q.name: [] for q in self.p.populations}
    for t in range(outputs[HOST].shape[1]):
      sent = {k: self.send(k, v[:, t]) for k, v in outputs.items()}
      for pop in self.p.populations:
        rows[pop.name].append(self.counts(pop, sent))
    return {k: dict(zip(ACTIVITY, np.asarray(v, np.int64).reshape(-1, len(ACTIVITY)).T,
                        strict=True)) for k, v in rows.items()}  # fmt: skip

  def step(self, tokens_B) -> tuple[dict, dict]:
    """(outputs {population: Msg}, activity {population: (synops, messages, updates)}); the
    step's clips are in `self.clips`."""
    self.clips = {}
    out = {HOST: self.embed(tokens_B)}
    sent = {HOST: self.send(HOST, out[HOST].q)}  # the messages, for the synapses and counts
    activity = {}
    for pop in self.p.populations:
      ports = {}
      for s in self.fan_in[pop.name]:
        if s.source not in out:
          raise ValueError(f"{s.name}: source {s.source!r} runs after its target {pop.name!r}")
        acc = self._matmul(sent[s.source], s.name)
        prev = ports.get(s.port)
        ports[s.port] = Msg(acc if prev is None else prev.q + acc, out[s.source].frac)
      out[pop.name] = y = self.fire(pop, ports)
      sent[pop.name] = self.send(pop.name, y.q)
      activity[pop.name] = self.counts(pop, sent)
    return out, activity

  def run(self, tokens_BxT, max_new_tokens: int = 0, record: bool = False) -> Result:
    """The tokens one per step, then `max_new_tokens` greedy ones, each fed back in (the chip's
    generation); logits, outputs and activity cover every step taken."""
    tokens_BxT = np.atleast_2d(np.asarray(tokens_BxT))
    B, T = tokens_BxT.shape
    steps = T + max(max_new_tokens - 1, 0)  # the last new token is sampled, never fed
    self.reset(B)
    outs: dict = {}
    act = {q.name: np.zeros((len(ACTIVITY), steps), np.int64) for q in self.p.populations}
    clips: dict = {}
    logits, new = [], []
    for t in range(steps):
      o, a = self.step(tokens_BxT[:, t] if t < T else new[-1])
      logits.append(self.logits(o))  # a host lm_head's clips belong to this step
      for name, counts in a.items():
        act[name][:, t] = counts
      for key, n in self.clips.items():
        clips.setdefault(key, np.zeros(steps, np.int64))[t] = n
      if record:
        for name, m in o.items():
          outs.setdefault(name, []).append(m.q)
      if t + 1 >= T and len(new) < max_new_tokens:
        new.append(logits[-1].argmax(-1))
    return Result(
      tokens_BxT,
      np.stack(new, axis=1) if new else np.zeros((B, 0), np.int64),
      np.stack(logits, axis=1),
      {k: np.stack(v, axis=1) for k, v in outs.items()},
      {k: dict(zip(ACTIVITY, v, strict=True)) for k, v in act.items()},
      clips,
      self.levers,
    )

  def logits(self, out: dict) -> np.ndarray:
    """Float32 logits [B, V]: the readout's integers, or the host's lm_head on the final norm's."""
    if "readout" in out:
      m = out["readout"]
    else:
      head = next(s for s in self.p.synapses if s.target == HOST)
      src = out[head.source]
      rescale = _sub(self.p.population(head.source).params, "head")
      self._pop = HOST
      m = self._rescale(Msg(self._matmul(src.q, head.name), src.frac), rescale)
    return (m.q * 2.0**-m.frac).astype(np.float32)

  def _matmul(self, q: np.ndarray, synapses: str) -> np.ndarray:
    w = self.weights(synapses)
    return (q.astype(w.dtype) @ w).astype(np.int64)  # exact: see `_matmul_weights`

  # --- the neuron kinds --------------------------------------------------------------------------

  def _norm(self, p: dict, gain, x: Msg) -> tuple[np.ndarray, int]:
    """The integer RMSNorm of x in the norm's formats: (y, its frac)."""
    n, at = _sub(p, "norm"), p.get("point_norm", "")
    x_q = self.requant(x.q, x.frac, n["x_frac"], n["x_bits"], at and f"{at}.rms_in")
    y, _, clipped = neurons.rmsnorm_int(x_q, gain, **n, clips=True)  # n: hw.RmsFormat's fields
    if at:
      self.count(f"{at}.rms_inv", clipped["r"])
      self.count(f"{at}.rms_out", clipped["y"])
    return y, n["out_frac"]

  def _out(self, y, f, p: dict, name: str = "out", also=None) -> Msg:
    frac, point = p[f"{name}_frac"], p.get(f"point_{name}")
    return Msg(self.requant(y, f, frac, p[f"{name}_bits"], point, also), frac)

  def _rescale(self, acc: Msg, r: dict) -> Msg:
    """A BitLinear's accumulator × β × 2^e_x in its bitlinear_out format."""
    path = r.get("path")
    a = self.clip(path and f"{path}.bitlinear_acc", acc.q, r["acc_bits"])
    e_x = -np.asanyarray(acc.frac)
    y = neurons.bitlinear_rescale(a, r["m"], r["k"], e_x, r["out_frac"], 32, self.rounding)
    return Msg(self.clip(path and f"{path}.bitlinear_out", y, r["out_bits"]), r["out_frac"])

  def _act(self, m: Msg, wide_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(SiLU by the LUT (or ReLU) in Q.lut_in_frac, the mask of inputs clipped to wide_bits:
    the caller counts them with the point its result reaches)."""
    u = fixed.shift_right(m.q, int(m.frac) - self.lut.in_frac_bits, self.rounding)
    x = fixed.saturate(u, wide_bits)
    if self.p.quant["nonlinearity"] == "relu":
      return np.maximum(x, 0), x != u
    return neurons.silu_int(x, self.lut, self.rounding), x != u

  def rmsnorm(self, pop: Population, ports: dict) -> Msg:
    y, f = self._norm(pop.params, self.p.arrays[pop.arrays["gain"]], ports["x"])
    return self._out(y, f, pop.params)

  def bitlinear_in(self, pop: Population, ports: dict) -> Msg:
    """The BitLinear's norm, then its integer input (in_bits wide): a per-token power of two, or
    a static one."""
    p = pop.params
    y, f = self._norm(p, self.p.arrays[pop.arrays["gain"]], ports["x"])
    if p["policy"] == "static":
      return Msg(self.requant(y, f, -p["e_x"], p["in_bits"], p.get("point_in")), -p["e_x"])
    amax = np.abs(y).max(axis=-1, keepdims=True) * 2.0**-f
    e = np.asanyarray(fixed.pow2_exponent(amax, p["in_bits"]), np.int64)
    x = fixed.saturate(fixed.shift_right_each(y, f + e, "half_even"), p["in_bits"])
    return Msg(x, -e)

  def mlgru(self, pop: Population, ports: dict) -> Msg:
    p, F, r = pop.params, pop.params["lut_out_frac"], self.rounding
    f_pre = self._rescale(ports["f"], _sub(p, "f"))
    # σ's input saturates beyond the table's end, where σ is constant: no value changes.
    sig_in = self.requant(f_pre.q, f_pre.frac, self.lut.in_frac_bits, p["sigma_bits"], None)
    sig = neurons.sigmoid_int(sig_in, self.lut, r)
    f_q = (
      neurons.forget_gate_int(sig, self.p.arrays[pop.arrays["lb"]], F, r)
      if "lb" in pop.arrays
      else sig
    )
    W = p["wide_bits"]
    act, act_clipped = self._act(self._rescale(ports["i"], _sub(p, "i")), W)
    c = fixed.mul_shift(act, neurons.one_minus(f_q, F), F, W, W, F + 2, r)
    c = self._out(c, self.lut.in_frac_bits, p, "c", act_clipped).q
    u = fixed.shift_right(c, p["c_frac"] - p["h_frac"], r)
    c = fixed.saturate(u, p["h_bits"])
    h, h_clipped = neurons.mlgru_step_int(self.state[pop.name], f_q, c, F, p["h_bits"], r, True)
    self.count(p.get("point_h"), h_clipped | (c != u))
    self.state[pop.name] = h
    s, s_clipped = self._act(Msg(h, p["h_frac"]), W)
    return self._out(s, self.lut.in_frac_bits, p, also=s_clipped)

  def g_norm(self, pop: Population, ports: dict) -> Msg:
    g = self._rescale(ports["g"], _sub(pop.params, "g"))
    y, f = self._norm(pop.params, self.p.arrays[pop.arrays["gain"]], g)
    return self._out(y, f, pop.params)

  def _product(self, a: Msg, a_bits, b: Msg, b_bits, p: dict) -> Msg:
    e = int(a.frac) + int(b.frac) - p["out_frac"]
    y = fixed.mul_shift(a.q, b.q, e, 32, a_bits, b_bits, self.rounding)
    return Msg(self.clip(p.get("point_out"), y, p["out_bits"]), p["out_frac"])

  def product(self, pop: Population, ports: dict) -> Msg:
    p = pop.params
    return self._product(ports["a"], p["a_bits"], ports["b"], p["b_bits"], p)

  def residual(self, pop: Population, ports: dict) -> Msg:
    p, x = pop.params, ports["x"]
    a = self._rescale(ports["a"], _sub(p, "a"))
    a = self._out(a.q, a.frac, p, "branch")  # the branch's point (attn_out, mlp_out)
    f = max(int(x.frac), int(a.frac))
    s = (x.q << (f - int(x.frac))) + (a.q << (f - int(a.frac)))
    return self._out(s, f, p)

  def glu(self, pop: Population, ports: dict) -> Msg:
    p = pop.params
    r = _sub(p, "gate_up")
    gate = self._rescale(ports["gate"], r)
    gate = self._out(gate.q, gate.frac, p, "gate")
    up = self._rescale(ports["up"], r)
    up = self._out(up.q, up.frac, p, "up")
    s, clipped = self._act(gate, p["wide_bits"])
    s = self._out(s, self.lut.in_frac_bits, p, "silu", clipped)
    return self._product(s, p["silu_bits"], up, p["up_bits"], p)

  def readout(self, pop: Population, ports: dict) -> Msg:
    return self._rescale(ports["x"], _sub(pop.params, "logits"))


KINDS = {k: getattr(Emulator, k) for k in program.KINDS}
