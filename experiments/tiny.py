"""The default small model on the embedded corpus: the first thing to run on a CPU.

  uv run mmfree run experiments/tiny.py --workdir runs/tiny          # ~6 min on 2 CPU cores
  uv run mmfree run experiments/tiny.py:smoke --workdir /tmp/smoke   # seconds: a pipeline check

Shows that the MatMul-free LM (`bitnet` precision: ternary weights, int8 activations) learns
English-like text from the prose that ships with Python. Measured (300 steps of 16 × 128
tokens, 2-core CPU, ≈ 2,600 tokens/s, ≈ 4 min of training): validation loss from ln(4096) ≈ 8.3
to 5.92 (step 100), 5.33 (200), 5.09 (300) nats/token — perplexity 162, 2.08 bits per byte —
against a unigram entropy of 6.61 nats/token.
"""

from mmfree import configs


def get_config(arg: str = "default"):
  c = configs.base_config("small")
  c.stages = configs.STAGES  # train, calibrate, eval, lower, emulate, measure
  c.eval.precisions = ("bitnet", "hw")
  if arg == "smoke":
    c.model.hidden_size = 32
    c.model.num_hidden_layers = 1
    c.model.intermediate_size = 64
    c.data.tokenizer = "byte"
    c.train.steps = 6
    c.train.batch_size = 4
    c.train.seq_len = 32
    c.train.warmup_steps = 2
    c.train.log_every = 2
    c.train.eval_every = 3
    c.train.ckpt_every = 3
    c.train.eval_windows = 4
    c.stages = ("train", "eval")
    c.eval.precisions = ()
  elif arg != "default":
    raise ValueError(f"experiments/tiny.py: unknown variant {arg!r} (default, smoke)")
  return c


def get_sweep(arg: str = "default"):
  """Learning rate against width: the first sweep anyone runs."""
  return configs.product(
    configs.axis("train.lr", [1e-3, 3e-3]),
    configs.axis("model.hidden_size", [32, 64] if arg == "smoke" else [128, 256]),
  )
