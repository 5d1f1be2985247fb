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

Finding: (not yet run)
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
