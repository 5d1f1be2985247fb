"""Co-design of the small default model and its Loihi 2 mapping: which quantization and mapping
choices together give the least energy per token within a loss budget.

  uv run mmfree run experiments/tiny.py --workdir runs/tiny        # the model (~6 min)
  uv run mmfree search experiments/codesign_small.py --workdir runs/codesign --trials 40 --workers 2
  uv run mmfree search --report runs/codesign --budget 0.01 --verify
  uv run mmfree search experiments/codesign_small.py:smoke --workdir /tmp/codesign --trials 3
                                                                   # a pipeline check (minutes)

Every design starts from runs/tiny's weights as they are (`train.init_from`, `train.steps=0`: the
post-training setup of experiments/quant_ablation.py), calibrates, evaluates `hw` on the held-out
text, is lowered, checked bit-exact and measured; `mmfree search` trades the `hw` loss against the
predicted mJ per token (NSGA-II over `get_search`), starting from the base design (8-bit
activations, SiLU, per-token BitLinear inputs, weights stored at their own width, chips packed in
order). The quantization levers move both objectives; the event-driven levers at threshold 0 and
the mapping levers (stored weight width, chip placement) move only energy and chips. `--report`
prints the Pareto front and writes the least-energy design within the budget as
runs/codesign/best_overrides.py.

Finding (2026-12-03; runs/tiny retrained: `bitnet` 5.074, `hw` 5.106 at the 8-bit base, 0.3329
mJ/token, 664.6 tokens/s; 20 trials, multi-objective TPE constrained to the 1% budget, 2 workers,
40 min on 2 CPU cores shared with a test run): the least-energy design within 1% of the base loss
is trial 9, static BitLinear input scales with weights stored at 8 bits, loss 5.106 (+0.00%),
0.1668 mJ/token, **0.501x** the base (1,379 tokens/s, 1 chip); `--verify` reran it: bit-exact,
loss and energy equal to the trial's. The best single-knob point of experiments/quant_ablation.py
within 1% (`:ptq`, rerun the same day) is static inputs alone, 0.3304 mJ/token, 0.993x. The win
is the mapping: 8-bit weight storage spreads the populations over 87 cores instead of 61 on the
one chip, each core's serial synaptic work per token shrinks (synops are 0.51 of the 0.73 ms a
token takes), and with 96% of the energy static power per chip, energy per token halves (the
base with 8-bit storage alone: 0.1684, 0.506x, read from its measure.json placements). It rests
on static power being per chip: measured boards give no split by active core, and were it per
core most of this would go. Chip-level placement (`block`: 5 chips) costs 2.5-5x. The front below
the budget: 2-LSB thresholds on the gated and GLU outputs 0.462x at +3.9%, 6-bit activations
0.428x at +8.6%, 4-bit 0.194x at +63%. The event-driven levers did not pay on text at this size:
sigma-delta at threshold 0 is exact but sends 1.2% more messages than dense over all points (a
value falling to 0 must be sent: glu_prod +33%, while the MLGRU's SiLU(h) repeats, silu_h -32%;
delta on silu_h alone: -1.5% messages, 0.9998x energy, its messages feeding a 1:1 skip synapse);
deltas above 0 cost accuracy like narrower widths. Next: a spreading lever (synapses per core)
that gets the 8-bit storage's parallelism with ternary weights, and deltas on slow signals only.
"""

from pathlib import Path

from mmfree import configs
from mmfree.core.quant import MESSAGE_POINTS

ABLATION = Path(__file__).with_name("quant_ablation.py")
SIGMA_DELTA = tuple(f"{p}=0" for p in MESSAGE_POINTS if p != "bitlinear_in")  # per-token inputs


def get_config(arg: str = "default"):
  if arg not in ("default", "smoke"):
    raise ValueError(f"experiments/codesign_small.py: unknown variant {arg!r} (default, smoke)")
  c = configs.load_config(f"{ABLATION}:{arg}")  # smoke: trains its own tiny model
  c.eval.precisions = ("hw",)  # the search's accuracy objective; `bitnet` is no design
  return c


def get_search(arg: str = "default"):
  if arg == "smoke":
    return {
      "quant.act_bits": [8, 4],
      "quant.delta": [(), ("block_in=0", "residual=0")],
      "loihi.placement": ["pack", "block"],
    }
  return {
    "quant.act_bits": [4, 6, 8],
    "quant.state_bits": [8, 12, 16],
    "quant.lut_size": [4, 8, 16],
    "quant.nonlinearity": ["silu", "relu"],
    "quant.bitlinear_input": ["per_token", "static"],
    # Event-driven levers: sigma-delta on the residual stream, on every message point (both
    # exact at 0), or above 0; activation thresholds on the gated outputs.
    "quant.delta": [
      (),
      ("block_in=0", "residual=0"),
      SIGMA_DELTA,
      ("block_in=1", "residual=1", "silu_h=1", "glu_prod=1", "gated=1"),
    ],
    "quant.threshold": [(), ("gated=1", "glu_prod=1"), ("gated=2", "glu_prod=2")],
    "loihi.weights": ["min", "8bit"],
    "loihi.placement": ["pack", "block"],
  }
