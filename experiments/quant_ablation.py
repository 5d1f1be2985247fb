"""Hardware-aware quantization of the small default model: which choices cost accuracy.

  uv run mmfree run experiments/tiny.py --workdir runs/tiny       # the `bitnet` model (~5 min)
  uv run mmfree sweep experiments/quant_ablation.py --workdir runs/quant_ablation --workers 2
  uv run mmfree sweep experiments/quant_ablation.py:ptq ...   # the post-training points alone
  uv run mmfree report runs/quant_ablation
  uv run mmfree search experiments/quant_ablation.py:ptq --workdir runs/quant_search --trials 40 \
    --workers 2                                                 # the levers together (get_search)
  uv run mmfree search --report runs/quant_search               # its front and best design

Every point starts from runs/tiny's weights (`train.init_from`; another trained run or imported
checkpoint: `--config.train.init_from=DIR`). Post-training points take them as they are
(`train.steps=0`), calibrate (16 batches, min-max, frozen scales) and evaluate `bitnet` and `hw`
on the held-out text; then each point is lowered, checked bit-exact against its `hw` model, and
measured (64 held-out tokens plus 8 generated through the emulator, then the Loihi 2 cost model),
so `mmfree report` and `notebooks/accuracy_vs_energy.ipynb` show accuracy against predicted
energy per point. One choice changes per point, from the 8-bit default (power-of-two scales,
per-token BitLinear inputs, 16-bit state, 8-entry LUTs, integer RMSNorm, SiLU). QAT points
fine-tune at `hw` for 100 steps; the `bitnet` control fine-tunes as long without the quantizers,
so the QAT gain is not mistaken for more training.

Finding (post-training points, `:ptq`, rerun 2026-12-02 after every clip became a counted point;
runs/tiny, 2 workers, 33 min on 2 CPU cores; validation loss on 11,008 held-out tokens; `bitnet`
5.079): the activation width is what matters. 8 bits cost +0.26% (5.092), 6 bits +5.9% (5.377),
4 bits +63% (8.285); 12 and 16 bits +0.06% (5.082). Static BitLinear input scales cost nothing at
8 bits (5.092); with 12-bit activations the inputs stay int8 (their own width, `quant.input_bits`:
5.084, clips counted: 2e-6%) or become 12-bit (5.081, 1.23x the energy of the default). The state
from 24 down to 8 bits: 5.093 to 5.094; an 8-entry LUT (4 entries: +0.6%; 16, 32: no gain);
integer RMSNorms 5.092 against 5.094 float. Rounding scales to the nearest power of two costs
+1.1% (5.149) and the per-point counts show why: it clips 1/rms in 49% of the tokens and 44% of
the norm gains. At 4 bits 47% of the tokens saturate 1/rms (calibrated on unquantized inputs, the
norm then sees 4-bit ones; 82% in the rerun below), a cause of the 4-bit loss that only the
kernel's own count reveals: calibrating the norms on `hw` inputs, or giving 1/rms headroom, is the
fix to try.
ReLU instead of SiLU costs +5.1% (5.338) after calibration alone. Predicted energy: 0.0874 mJ per
token at 8 bits, 4.0x less at 4 bits (0.0219), 0.84x at 6, 1.12x at 12.
Energy rerun (2026-12-02, the cost model on Loihi 2's measurements: 0.213 W a chip, neuron
updates priced by each kind's traced instructions, messages by payload width;
`scripts/energy_levers.py runs/quant_ablation_ptq`): 0.335 mJ per token at 8 bits, 98% of it
static and idle power, so totals move with time per token: 0.40x at 4 bits, 0.91x at 6, 1.08x at
12 and 16. Dynamic energy shows the levers: ReLU 0.979x (0.991x priced on activity alone: its
neurons skip the σ-LUT search), static BitLinear inputs 0.973x (0.999x on activity alone: no
per-token absmax), 12-bit static inputs 1.14x (1.18x), LUT 4/16/32 entries 1.004/1.000/1.001x
(their update energy -0.7%/+0.8%/+1.4%); state width moves nothing (the state never leaves its
neuron). The `hw` losses of this rerun: 8 bits 5.090, 4 bits 8.285, 6 bits 5.400. An earlier run's
4-bit 7.435 is not reproducible: every commit from its day on gives 8.2848 (bisected; NOTES).
Event-driven levers (2026-12-03, runs/tiny retrained: `bitnet` 5.074, `hw` 5.106 at 8 bits,
0.3329 mJ/token; 44 min for the 20 points): sigma-delta at threshold 0 on every message point
leaves the loss as it is (5.1057) and sends 1.2% more messages (198 a token beyond the dense 16,669:
values falling to 0 are messages too; per point in measure.json: silu_h -32%, glu_prod +33%),
1.002x the energy; thresholds of 2 LSBs on the gated and GLU outputs remove 778 messages a token
(-6.3% synops) for +3.9% loss (5.305), 0.969x. Within 1% of the 8-bit loss the least energy is
static BitLinear inputs (0.3304, 0.993x); `pow2_mode=nearest` +0.96% at 1.033x, LUT 4 +0.30%.
QAT (the full sweep, an earlier runs/tiny with `bitnet` 5.073): ReLU recovers with 100 QAT steps
(5.025 against 4.999 for the `bitnet` control fine-tuned as long); at 8 bits QAT has nothing to
recover; at 4 bits 100 steps at lr 5e-4 recover a fifth of the gap (7.712 to 7.114).
"""

from mmfree import configs
from mmfree.core.quant import MESSAGE_POINTS

BASE = "runs/tiny"
# Float norms and free scales are accuracy studies: a chip has neither, so no program is made.
UNLOWERED = {"stages": ("train", "calibrate", "eval")}
QAT = {"model.precision": "hw", "train.steps": 100, "train.lr": 5e-4, "train.warmup_steps": 10}
# Event-driven levers: sigma-delta at threshold 0 on every message point (exact, only unchanged
# values go silent), activation thresholds of 2 LSBs on the gated MLGRU and GLU outputs.
SIGMA_DELTA = tuple(f"{p}=0" for p in MESSAGE_POINTS if p != "bitlinear_in")  # per-token inputs
THRESHOLD = ("gated=2", "glu_prod=2")


def get_config(arg: str = "default"):
  c = configs.base_config("small")
  c.stages = ("train", "calibrate", "eval", "lower", "emulate", "measure")
  c.eval.precisions = ("bitnet", "hw")
  if arg == "smoke":  # trains its own tiny model: no base run needed
    c.model.hidden_size = 32
    c.model.num_hidden_layers = 1
    c.model.intermediate_size = 64
    c.data.tokenizer = "byte"
    c.train.steps = 4
    c.train.batch_size = 4
    c.train.seq_len = 32
    c.train.warmup_steps = 1
    c.train.eval_windows = 4
    c.eval.max_windows = 4
    c.eval.calib_batches = 2
    c.loihi.check_tokens = c.loihi.measure_tokens = 16
    c.loihi.new_tokens = 2
  elif arg in ("default", "ptq"):
    c.train.init_from = BASE
    c.train.steps = 0
  else:
    raise ValueError(
      f"experiments/quant_ablation.py: unknown variant {arg!r} (default, ptq, smoke)"
    )
  return c


def get_sweep(arg: str = "default"):
  """One change at a time from the default, then QAT at 8 and 4 bits against a control."""
  one_at_a_time = [
    {},
    *configs.axis("quant.act_bits", [4, 6, 12, 16]),
    *configs.axis("quant.state_bits", [8, 12, 24]),
    {"quant.scale": "free", "quant.rmsnorm": "float", **UNLOWERED},  # integer norms need shifts
    {"quant.pow2_mode": "nearest"},
    {"quant.bitlinear_input": "static"},
    {"quant.bitlinear_input": "static", "quant.act_bits": 12},  # int8 inputs, their clips counted
    {"quant.bitlinear_input": "static", "quant.act_bits": 12, "quant.input_bits": 12},
    *configs.axis("quant.lut_size", [4, 16, 32]),
    {"quant.rmsnorm": "float", **UNLOWERED},
    {"quant.nonlinearity": "relu"},
    {"quant.delta": SIGMA_DELTA},
    {"quant.threshold": THRESHOLD},
  ]
  if arg == "smoke":
    return [{}, {"quant.act_bits": 4}]
  if arg == "ptq":  # post-training points only: no fine-tuning
    return one_at_a_time
  fine_tune = [
    {"train.steps": 100, "train.lr": 5e-4, "train.warmup_steps": 10},  # the bitnet control
    QAT,
    {**QAT, "quant.act_bits": 4},
    {**QAT, "quant.nonlinearity": "relu"},
  ]
  return one_at_a_time + fine_tune


def get_search(arg: str = "default"):
  """The levers of the post-training points together, for `mmfree search`: all of them valid in
  any combination (integer RMSNorm inputs stay within 16 bits, BitLinear inputs within 8)."""
  if arg == "smoke":  # a tuple-valued lever too: the per-point widths
    return {
      "quant.act_bits": [8, 4],
      "quant.nonlinearity": ["silu", "relu"],
      "quant.bits": [(), ("block_in=12", "residual=12")],
    }
  if arg not in ("default", "ptq"):
    raise ValueError(f"experiments/quant_ablation.py: no search for {arg!r} (default, ptq, smoke)")
  residual = ("block_in=12", "residual=12")  # the residual stream, wider than the activations
  norms = ("attn_norm=12", "mlp_norm=12", "final_norm=12")  # the norms' outputs
  return {
    "quant.act_bits": [4, 6, 8],
    "quant.input_bits": [4, 6, 8],
    "quant.state_bits": [8, 12, 16],
    "quant.lut_size": [4, 8, 16],
    "quant.nonlinearity": ["silu", "relu"],
    "quant.bitlinear_input": ["per_token", "static"],
    "quant.bits": [(), residual, norms, residual + norms],
  }
