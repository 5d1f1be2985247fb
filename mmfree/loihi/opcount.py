"""Operations per neuron update of each neuron kind, derived from its integer kernel by tracing.

A kind runs once (one token, batch 1) on `Traced` inputs, its ports and its state: numpy arrays
whose every result records the op that made it (a node: its class, its element ops, its inputs).
Walking back from the outputs (the message, a per-token exponent sent beside it, the new state)
keeps the dataflow the neuron computes; what never reaches an output is dead code: the emulator's
clip bookkeeping (`q != u` masks and their counts) drops out. Classes (`OPS`): add (add, subtract,
negate, bitwise and/or/xor/not, sum reductions), multiply, shift, compare (comparisons, max/min,
abs; a clip two, one per bound that binds), select (where), lut (table reads, and `lut_steps`
their search steps), state reads and writes. Per neuron: element ops / size; a reduction over
the D neurons is D − 1 ops, a per-token op (an exponent, 1/√mean) 1/D per neuron.

What the microcode would not run is free (assumptions, all of them the compiler's obvious folds):
- arithmetic on parameters and constants alone: the lowering's work;
- identities: x + 0, x << 0, x·1, x & −1 (and x·0, x & 0 are constants);
- a where on a constant condition that is all true or all false: only the taken branch runs.
A where on data (or on a per-token exponent) charges both branches and the select: no branches.

`kernel_ops` / `program_ops` give ops per neuron of populations; `instructions` adds them up;
`lif_ops` and `LIF_INSTRUCTIONS` trace Loihi 1's LIF neuron (`lif_int`) the same way, so that the
cost model can price an instruction from Loihi 1's measured cost per LIF update.
"""

import math

import numpy as np

from mmfree.loihi import emulate, fixed
from mmfree.loihi.program import HOST, Population, Program

OPS = ("add", "multiply", "shift", "compare", "select", "lut", "lut_steps", "state_read",
       "state_write")  # fmt: skip
# The chip's width (the `hw` model's too): the kernels are int32-exact, and `fixed.bit_length`
# searches 5 steps in int32 where int64 takes 6, a step the chip never runs.
WIDTH = np.int32
_UFUNCS = {  # ufunc -> class, one op per element
  **dict.fromkeys(("add", "subtract", "negative", "bitwise_and", "bitwise_or", "bitwise_xor",
                   "invert", "logical_and", "logical_or", "logical_xor", "logical_not"), "add"),
  # divide: only a per-token exponent's a / qmax (`fixed.pow2_exponent`), a scale by a constant
  **dict.fromkeys(("multiply", "divide", "true_divide", "floor_divide"), "multiply"),
  **dict.fromkeys(("left_shift", "right_shift", "ldexp"), "shift"),
  **dict.fromkeys(("less", "less_equal", "greater", "greater_equal", "equal", "not_equal",
                   "maximum", "minimum", "absolute"), "compare"),
}  # fmt: skip
_PER = {"log2": ("compare", 5)}  # log2 (of a per-token absmax): a bit length, 5 steps in 32 bits
# Free: rounding a log2 to an integer (a bit length is one already), the identity.
_FREE = ("positive", "ceil", "floor", "rint", "trunc")
_REDUCTIONS = {"sum": "add", "max": "compare", "amax": "compare", "min": "compare",
               "amin": "compare", "any": "add", "all": "add"}  # fmt: skip
_MOVES = ("stack", "concatenate", "reshape", "broadcast_to", "squeeze", "expand_dims",
          "transpose", "moveaxis", "atleast_1d", "atleast_2d", "copy", "ravel")  # fmt: skip
# values that carry no trace: counts (the clip bookkeeping's), fresh arrays, indices
_CONSTANT = ("count_nonzero", "zeros_like", "ones_like", "empty_like", "full_like", "shape",
             "ndim", "size", "argmax")  # fmt: skip
# x ∘ c with c the identity (left, right): x + 0, x − 0, x | 0, x ^ 0, x << 0, x >> 0, x·1, x & −1
_IDENTITY = {"add": (0, 0), "subtract": (None, 0), "bitwise_or": (0, 0), "bitwise_xor": (0, 0),
             "left_shift": (None, 0), "right_shift": (None, 0), "multiply": (1, 1),
             "bitwise_and": (-1, -1)}  # fmt: skip


# A node of a trace is a tuple (fast to make): (class, element ops, parent nodes, search steps of
# a table read); class None: an input, or data movement (views, astype, identities).


def _base(x):
  """`x` (an array, or a list or tuple of them) without the trace."""
  if type(x) is Traced:
    return x.view(np.ndarray)
  if isinstance(x, list | tuple):
    return type(x)(_base(v) for v in x)
  return x


def _parents(xs) -> tuple:
  out = []
  for x in xs:
    if type(x) is Traced and x.node is not None:
      out.append(x.node)
    elif isinstance(x, list | tuple):
      out.extend(_parents(x))
  return tuple(out)


def _result(value, op, count, parents, steps=0):
  """`value` traced as an op on `parents`; on constants alone, a constant (nothing to charge)."""
  if not parents:
    return value
  out = (value if isinstance(value, np.ndarray) else np.asarray(value)).view(Traced)
  out.node = (op, count, parents, steps)
  return out


def _fold(name, inputs) -> bool | None:
  """True: the op is the identity on its one traced input (the constant operand makes it so);
  False: its result is constant (x·0, x & 0); None: it does work."""
  a, b = (type(x) is Traced and x.node is not None for x in inputs)
  if a == b:
    return None
  c = inputs[0] if b else inputs[1]  # the constant
  e = _IDENTITY[name][0 if b else 1]
  if type(c) is int:  # the usual case: a Python int, no numpy call
    return False if c == 0 and name in ("multiply", "bitwise_and") else (c == e) or None
  c = np.asarray(c)
  if name in ("multiply", "bitwise_and") and not c.any():
    return False
  return True if e is not None and bool((c == e).all()) else None


def _bounds(a, lo, hi) -> int:
  """How many of clip's bounds bind: numpy drops a Python int beyond a's dtype (a saturation to
  the full width, as 32 bits in int32, changes nothing)."""
  info = np.iinfo(a.dtype) if a.dtype.kind in "iu" else None
  free_lo = lo is None or info is not None and type(lo) is int and lo <= info.min
  free_hi = hi is None or info is not None and type(hi) is int and hi >= info.max
  return 2 - free_lo - free_hi


class Traced(np.ndarray):
  """A numpy array whose every result carries the node of the op that made it (`node`)."""

  node = None

  def __array_finalize__(self, obj):
    # views, slices, reshapes and astype move data: the same values, the same node
    self.node = getattr(obj, "node", None)

  def __array_namespace__(self, api_version=None):
    return NAMESPACE

  def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
    out = kwargs.pop("out", None)
    if out is not None and any(o is not None for o in out):
      raise TypeError(f"opcount: np.{ufunc.__name__} with out= is not traced")
    plain = [x.view(np.ndarray) if type(x) is Traced else x for x in inputs]
    value = (
      ufunc(*plain, **kwargs) if method == "__call__" else getattr(ufunc, method)(*plain, **kwargs)
    )
    parents = tuple(x.node for x in inputs if type(x) is Traced and x.node is not None)
    name = ufunc.__name__
    if not parents or name in _FREE:
      return _result(value, None, 0, parents)
    if method == "reduce" and name in _UFUNCS:  # n values to one: n − 1 ops
      return _result(value, _UFUNCS[name], np.size(inputs[0]) - value.size, parents)
    if method != "__call__" or name not in _UFUNCS and name not in _PER and name != "clip":
      raise TypeError(f"opcount: no cost for np.{name}.{method}")
    if name == "clip":
      return _result(value, "compare", _bounds(inputs[0], *inputs[1:]) * value.size, parents)
    if name in _IDENTITY and (fold := _fold(name, inputs)) is not None:
      return _result(value, None, 0, parents) if fold else value
    op, per = _PER.get(name) or (_UFUNCS[name], 1)
    return _result(value, op, per * value.size, parents)

  def __array_function__(self, func, types, args, kwargs):
    name = func.__name__
    value = func(*_base(args), **_base(kwargs))
    if name in _CONSTANT:
      return value
    parents = _parents(args) + _parents(kwargs.values())
    if name in _MOVES:
      return _result(value, None, 0, parents)
    if name in _REDUCTIONS:
      return _result(value, _REDUCTIONS[name], np.size(args[0]) - value.size, parents)
    if name == "clip" and len(args) == 3 and not kwargs:
      return _result(value, "compare", _bounds(*args) * value.size, parents)
    if name == "where" and len(args) == 3:
      cond, a, b = args
      if not _parents([cond]):  # a constant choice: the microcode computes the branch it takes
        c = np.asarray(cond)
        if c.all() or not c.any():
          return _result(value, None, 0, _parents([a if c.all() else b]))
      return _result(value, "select", value.size, parents)
    raise TypeError(f"opcount: no cost for np.{name}")


class _Namespace:
  """The array namespace `fixed.namespace` finds on `Traced` arrays: numpy's, but `asarray`
  keeps the trace. `int_dtype` takes its int32 for new integers: `WIDTH`, the traced width."""

  def __getattr__(self, name):
    return getattr(np, name)

  @staticmethod
  def take(table, i, axis=None):
    """A table read (np.take dispatches on the table alone: a constant one would drop the trace).
    A microcoded neuron has no indexed memory read (assumption): a read of a table of L entries
    is a search over its breakpoints, ceil(log2 L) compares, then the read."""
    value = np.take(_base(table), _base(i), axis)
    L = np.size(table) if axis is None else np.shape(table)[axis]
    steps = math.ceil(math.log2(max(L, 1)))
    return _result(value, "lut", value.size, _parents((table, i)), steps)

  @staticmethod
  def asarray(x, dtype=None):
    if type(x) is Traced:
      return x if dtype is None or x.dtype == dtype else x.astype(dtype)
    return np.asarray(x, dtype)


NAMESPACE = _Namespace()


def traced(x, dtype=WIDTH) -> Traced:
  """`x` as a traced input: the ops on it, and on what follows from it, are counted."""
  out = np.array(x, dtype).view(Traced)
  out.node = (None, 0, (), 0)
  return out


def count(roots) -> dict[str, int]:
  """Element ops by class on the dataflow into `roots` (traced arrays; others are ignored):
  what never reaches a root is dead code, left out."""
  ops = dict.fromkeys(OPS, 0)
  seen, todo = set(), [r.node for r in roots if isinstance(r, Traced) and r.node is not None]
  while todo:
    node = todo.pop()
    if id(node) in seen:
      continue
    seen.add(id(node))
    op, n, parents, steps = node
    if op is not None:
      ops[op] += n
      ops["lut_steps"] += n * steps
    todo.extend(parents)
  return ops


def instructions(ops: dict) -> float:
  """Microcode instructions per neuron update: one per op of each class and per state read or
  write; a table read is its `lut_steps` compares plus one read."""
  return float(sum(ops[k] for k in OPS))


def _state(pop: Population) -> dict:
  n = float(len(pop.state_bits))  # each state variable: read once, written once per update
  return {"state_read": n, "state_write": n}


def _ports(program: Program, emu: emulate.Emulator, pop: Population, pops: dict) -> dict:
  """Traced zeros [1, size] for each port, in the Q format `Emulator.step` gives it; a per-token
  exponent (a BitLinear input's) travels beside its message: traced too."""
  ports = {}
  for s in emu.fan_in[pop.name]:
    f = emu.embed_fmt[0] if s.source == HOST else emulate.out_frac(pops[s.source])
    frac = traced(np.zeros((1, 1))) if f is None else f
    ports[s.port] = emulate.Msg(traced(np.zeros((1, pop.size))), frac)
  return ports


def _update(emu: emulate.Emulator, pop: Population, ports: dict) -> list:
  """What one update of `pop` by `emu` makes: the message sent (under its levers), its Q format,
  and every state it writes (the MLGRU's h, a sigma-delta sender's last value, a receiver's
  running sums), from traced zero states."""

  def zeros(n: int):
    return traced(np.zeros((1, n)))

  emu.state = {pop.name: zeros(pop.size)} if "h" in pop.state_bits else {}
  emu.last = {pop.name: zeros(pop.size)} if "delta_last" in pop.state_bits else {}
  emu.acc = {(pop.name, p): zeros(pop.size) for p in ports if f"acc_{p}" in pop.state_bits}
  emu.clips = {}
  y = emu.fire(pop, ports)
  return [emu.send(pop.name, y.q), y.frac, *emu.state.values(), *emu.last.values(),
          *emu.acc.values()]  # fmt: skip


_CACHE: dict = {}  # structural key -> ops per neuron


def _key(program: Program, pop: Population, ports: dict) -> str:
  """What the trace depends on: the kind, its size, formats and quant settings, the arrays'
  shapes, the ports' formats; not the names of its clip points (`point_*`, `*path`)."""
  params = sorted((k, v) for k, v in pop.params.items()
                  if not (k.startswith("point_") or k.endswith("path")))  # fmt: skip
  arrays = sorted((k, program.arrays[v].shape, str(program.arrays[v].dtype))
                  for k, v in pop.arrays.items())  # fmt: skip
  fmts = sorted((k, m.frac if isinstance(m.frac, int) else None) for k, m in ports.items())
  quant = sorted(program.quant.items())
  return repr((pop.kind, pop.size, params, arrays, sorted(pop.state_bits.items()), fmts, quant))


def _kernel_ops(program: Program, emu: emulate.Emulator, pop: Population, pops: dict) -> dict:
  ports = _ports(program, emu, pop, pops)
  key = _key(program, pop, ports)
  if key not in _CACHE:
    ops = count(_update(emu, pop, ports))
    _CACHE[key] = {**{k: v / pop.size for k, v in ops.items()}, **_state(pop)}
  return dict(_CACHE[key])


def kernel_ops(program: Program, pop: Population | str) -> dict[str, float]:
  """Ops per neuron per update of population `pop`, by class (`OPS`), from its kernel."""
  pop = program.population(pop) if isinstance(pop, str) else pop
  return _kernel_ops(program, emulate.Emulator(program), pop, _by_name(program))


def program_ops(program: Program) -> dict[str, dict[str, float]]:
  """`kernel_ops` of every population: {population: ops per neuron per update}."""
  emu, pops = emulate.Emulator(program), _by_name(program)
  return {q.name: _kernel_ops(program, emu, q, pops) for q in program.populations}


def program_instructions(program: Program) -> dict[str, float]:
  """Microcode instructions per neuron update of every population (`instructions`)."""
  return {name: instructions(ops) for name, ops in program_ops(program).items()}


def _by_name(program: Program) -> dict:
  return {q.name: q for q in program.populations}


# --- the reference: Loihi 1's LIF neuron, priced per instruction --------------------------------

DECAY_BITS = 12  # Loihi 1's decay constants δu, δv are 12-bit fractions


def lif_int(u, v, x, du, dv, bias, theta):
  """One CUBA LIF update as Loihi 1 runs it: (u, v, spike) from the current u, voltage v, input x.

  u ← u − (u·δu >> 12) + x;  v ← v − (v·δv >> 12) + u + bias;  spike = v > θ, which resets v to 0.
  """
  xp = fixed.namespace(u, v, x)
  u = u - ((u * du) >> DECAY_BITS) + x
  v = v - ((v * dv) >> DECAY_BITS) + u + bias
  spike = v > theta
  return u, xp.where(spike, 0, v), spike


def lif_ops(n: int = 4) -> dict[str, float]:
  """Ops per neuron per update of `lif_int`, traced like a kind (n neurons, per-neuron decays,
  bias and threshold: parameters, not traced); two state variables, u and v."""
  g = np.random.default_rng(0)
  u, v, x = (traced(g.integers(-1000, 1000, (1, n))) for _ in range(3))
  du, dv = g.integers(0, 1 << DECAY_BITS, (2, n))
  ops = count(lif_int(u, v, x, du, dv, g.integers(-10, 10, n), np.full(n, 1 << 10)))
  return {**{k: c / n for k, c in ops.items()}, "state_read": 2.0, "state_write": 2.0}


LIF_INSTRUCTIONS = instructions(lif_ops())
