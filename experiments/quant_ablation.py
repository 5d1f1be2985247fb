"""Hardware-aware quantization of the small default model: which choices cost accuracy.

  uv run mmfree run experiments/tiny.py --workdir runs/tiny       # the `bitnet` model (~5 min)
  uv run mmfree sweep experiments/quant_ablation.py --workdir runs/quant_ablation --workers 2
  uv run mmfree sweep experiments/quant_ablation.py:ptq ...   # the post-training points alone
  uv run mmfree report runs/quant_ablation

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

Finding (the sweep on runs/tiny, 2 workers, 51 min on 2 CPU cores; validation loss on 11,008
held-out tokens; `bitnet` 5.073): the activation width is what matters. 8 bits cost +0.3%
(5.089), 6 bits +6.1% (5.381), 4 bits +52% (7.712); 12 and 16 bits +0.06%. Everything else the
chip needs is nearly free at 8 bits: power-of-two scales (+0.3% against +0.2% with free scales
and float norms), static BitLinear input scales instead of the per-token absmax (5.089 both),
integer RMSNorms (5.089 against 5.090 float), an 8-entry LUT (4 entries: +0.6%; 16, 32: no
gain), and the state from 24 down to 8 bits (5.088 to 5.093). Rounding scales to the nearest power
of two clips (0.04% saturated) and costs +1.4% against rounding up. ReLU instead of SiLU costs +5.1%
after calibration alone, and 100 QAT steps recover it (5.025 against 4.999 for the `bitnet`
control fine-tuned as long). At 8 bits QAT has nothing to recover (5.019 against the control's
PTQ 5.018); at 4 bits 100 steps at lr 5e-4 recover a fifth of the gap (7.712 to 7.114).
"""

from mmfree import configs

BASE = "runs/tiny"
# Float norms and free scales are accuracy studies: a chip has neither, so no program is made.
UNLOWERED = {"stages": ("train", "calibrate", "eval")}
QAT = {"model.precision": "hw", "train.steps": 100, "train.lr": 5e-4, "train.warmup_steps": 10}


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
