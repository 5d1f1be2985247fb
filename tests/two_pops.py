"""The synthetic program of the cost and fit tests, host → a → b → host, placed with every
update a LIF update's instructions (so the per-update constants apply as given)."""

import numpy as np

from mmfree.loihi import hardware, mapping, opcount
from mmfree.loihi import program as pg


def program(n_a: int, n_b: int) -> pg.Program:
  """host → a (n_a) → b (n_b) → host, every a→b weight ±1."""
  rng = np.random.default_rng(n_a * 100 + n_b)
  arrays = {
    "embed": np.eye(n_a, dtype=np.int8),
    "ab": rng.choice(np.array([-1, 1], np.int8), (n_a, n_b)),
    "out": np.eye(n_b, dtype=np.int8),
  }
  P, S = pg.Population, pg.Synapses
  pops = (P("a", "rmsnorm", n_a, 0, {}, {}, {}, 8), P("b", "bitlinear_in", n_b, 1, {}, {}, {}, 8))
  syns = (S("embed", "host", "a", "x", n_a, n_a, 2, 0, "embed"),
          S("ab", "a", "b", "x", n_a, n_b, 2, 0, "ab"),
          S("out", "b", "host", "logits", n_b, n_b, 2, 0, "out"))  # fmt: skip
  io = {"embedding": "host", "sampling": "host", "lm_head": "chip"}
  return pg.Program(pg.VERSION, {}, {}, io, [], {}, [], pops, syns, arrays)


def place(p: pg.Program, hw: hardware.Hardware) -> mapping.Mapping:
  """`p` placed with a LIF update's instructions per update (the synthetic kinds have no kernel
  parameters to trace)."""
  lif = dict.fromkeys((q.name for q in p.populations), opcount.LIF_INSTRUCTIONS)
  return mapping.place(p, hw, instructions=lif)
