"""The static range check: the worst-case width of every wide intermediate of a program.

Each row bounds one intermediate of one population from the declared widths of what feeds it (the
source's graded-spike bits, the largest fan-in count of non-zero weights, the multipliers, the
largest input exponent), and compares it with the width that holds it. Either it fits, or the
design clips there (the accumulator clipped to `acc_bits`, a rescale or residual clipped to its
point, the MLGRU state): such rows are marked "may saturate" only when the value that reaches the
clip can exceed it. Anything else is an error of the lowering. The emulator counts the clips that
actually happen. numpy only.
"""

import math

from mmfree.loihi import fixed, hardware, neurons
from mmfree.loihi.program import HOST, Csr, Program

# Ports whose accumulator the target rescales (β and the input exponent), with the params prefix.
RESCALED = {
  "mlgru": {"f": "f", "i": "i"},
  "g_norm": {"g": "g"},
  "residual": {"a": "a"},
  "glu": {"gate": "gate_up", "up": "gate_up"},
  "readout": {"x": "logits"},
}
INT32 = 32  # the neuron program's registers


def _signed(bits: int) -> tuple[int, int]:
  return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _times(a: tuple, b: tuple, n: int = 1) -> tuple[int, int]:
  """The interval of a sum of n products of values from intervals a and b."""
  ends = [x * y for x in a for y in b]
  return n * min(ends), n * max(ends)


def _row(pop: str, value: str, bits: int, width: int, saturates: bool = False) -> dict:
  return {"population": pop, "value": value, "bits": int(bits), "width": int(width),
          "saturates": bool(saturates and bits > width)}  # fmt: skip


def _message_bits(program: Program, source: str) -> int:
  if source == HOST:  # the host quantizes the embedding into the first norm's input format
    return next(q for q in program.populations if q.kind == "rmsnorm").params["in_bits"]
  return program.population(source).out_bits


def fan_in_interval(program: Program, groups) -> tuple[int, int]:
  """The interval of a target's summed input over `groups`, any messages within their widths."""
  lo = hi = 0
  for s in groups:
    nnz = int(program.nnz_per_target(s.name).max(initial=0))
    w = program.arrays[s.weights]
    w = w.data if isinstance(w, Csr) else w
    if nnz:
      a, b = _times(_signed(_message_bits(program, s.source)), (int(w.min()), int(w.max())), nnz)
      lo, hi = lo + a, hi + b
  return lo, hi


def input_exponent(program: Program, sources) -> int:
  """The largest input exponent e_x (x = x_q·2^e_x) of BitLinear input populations: the static
  one, or the per-token one of the largest value their norm can output."""
  e = []
  for name in sources:
    p = program.population(name).params if name != HOST else {}
    if p.get("policy") == "static":
      e.append(p["e_x"])
    elif p.get("policy") == "per_token":
      amax = float(2 ** (p["norm_out_bits"] - 1)) * 2.0 ** -p["norm_out_frac"]
      e.append(int(fixed.pow2_exponent(amax, p["in_bits"])))
  return max(e, default=0)


def _rescale(pop: str, port: str, acc: tuple, p: dict, prefix: str, e_x: int) -> list[dict]:
  """Rows of a rescale: the accumulator, acc·m, and the value that reaches the output's clip,
  bounded by the largest acc·m at the largest input exponent."""
  acc_bits = p[f"{prefix}_acc_bits"]
  lo, hi = _signed(acc_bits)
  sat = (max(acc[0], lo), min(acc[1], hi))  # the accumulator is clipped to acc_bits first
  v = _times(sat, (p[f"{prefix}_m"],))
  s = p[f"{prefix}_k"] - e_x - p[f"{prefix}_out_frac"]  # y = v·2^−s
  y = (v[0] >> s, -(-v[1] >> s)) if s >= 0 else (v[0] << -s, v[1] << -s)  # rounding outward
  return [
    _row(pop, f"{port}.acc", fixed.signed_bits(*acc), acc_bits, saturates=True),
    _row(pop, f"{port}.acc*m", fixed.signed_bits(*v), INT32),
    _row(pop, f"{port}.rescaled", fixed.signed_bits(*y), p[f"{prefix}_out_bits"], True),
  ]


def _kind_rows(program: Program, q) -> list[dict]:
  p, rows = q.params, []
  if q.kind in ("rmsnorm", "bitlinear_in", "g_norm"):
    sq = neurons.rms_sum_sq_mag_bits(q.size, p["norm_x_bits"], p["norm_sq_shift"])
    rows.append(_row(q.name, "sum of squares", math.ceil(sq) + 1, INT32 - 1))
  if q.kind == "mlgru":  # f·h >> F within the state (f ≤ 1), plus c in the state's format
    c = (1 << (p["c_bits"] - 1)) << max(0, p["h_frac"] - p["c_frac"])
    h_lo, h_hi = _signed(q.state_bits["h"])
    rows.append(_row(q.name, "state h", fixed.signed_bits(h_lo - c, h_hi + c),
                     q.state_bits["h"], saturates=True))  # fmt: skip
  if q.kind == "residual":
    f = max(p["x_frac"], p["branch_frac"])
    s = max(p["x_bits"] + f - p["x_frac"], p["branch_bits"] + f - p["branch_frac"]) + 1
    rows += [_row(q.name, "x + a", s, INT32), _row(q.name, "sum", s, p["out_bits"], True)]
  head = [s for s in program.synapses if s.source == q.name and s.target == HOST]
  if head:  # the lm_head the host runs: the same rescale, off chip
    e_x = input_exponent(program, [q.name])
    rows += _rescale(q.name, "head", fan_in_interval(program, head), p, "head", e_x)
  return rows


def check(program: Program, hw: hardware.Hardware = hardware.DEFAULT) -> list[dict]:
  """One row per wide intermediate: {population, value, bits (worst case), width, saturates}."""
  spike_bits = hw.formats.spike_bits.value
  rows = []
  for q in program.populations:
    fan_in = program.fan_in(q.name)
    rescaled = RESCALED.get(q.kind, {})
    for port in dict.fromkeys(s.port for s in fan_in):
      acc = fan_in_interval(program, [s for s in fan_in if s.port == port])
      # Dendritic sums arrive as graded messages: they must fit one, saturating or not.
      rows.append(_row(q.name, f"{port} (fan-in sum)", fixed.signed_bits(*acc), spike_bits))
      if port in rescaled:
        e_x = input_exponent(program, {s.source for s in fan_in if s.port == port})
        rows += _rescale(q.name, port, acc, q.params, rescaled[port], e_x)
    rows += _kind_rows(program, q)
  return rows


def failures(rows: list[dict]) -> list[dict]:
  """Rows that exceed their width where the design does not saturate."""
  return [r for r in rows if r["bits"] > r["width"] and not r["saturates"]]


def saturating_lines(rows: list[dict], limit: int = 40) -> list[str]:
  """The rows that may saturate, one line each (grouped by value beyond `limit` rows)."""
  sat = [r for r in rows if r["saturates"]]
  if len(sat) <= limit:
    return [f"  {r['population']}: {r['value']} can reach {r['bits']} bits, clipped to "
            f"{r['width']}" for r in sat]  # fmt: skip
  kinds: dict = {}
  for r in sat:
    kinds[r["value"]] = kinds.get(r["value"], 0) + 1
  return [f"  {v}: {n} populations" for v, n in sorted(kinds.items())]


def summary(rows: list[dict]) -> dict:
  return {
    "checked": len(rows),
    "saturating": [f"{r['population']}: {r['value']}" for r in rows if r["saturates"]],
    "failures": [f"{r['population']}: {r['value']}" for r in failures(rows)],
  }


def require(rows: list[dict]) -> dict:
  """The check's summary; raises naming every intermediate that would overflow."""
  bad = failures(rows)
  if bad:
    lines = "\n".join(
      f"  {r['population']}: {r['value']} needs {r['bits']} bits, holds {r['width']}" for r in bad
    )
    raise ValueError(
      f"static range check: {len(bad)} intermediates can overflow without saturating:\n{lines}\n"
      "lower the activation bits or the fan-in, or declare wider formats"
    )
  return summary(rows)
