"""The default small model on the embedded corpus: the first thing to run on a CPU.

  uv run mmfree run experiments/tiny.py --workdir runs/tiny          # ~6 min on 2 CPU cores
  uv run mmfree run experiments/tiny.py:smoke --workdir /tmp/smoke   # seconds: a pipeline check

Shows that the MatMul-free LM (`bitnet` precision: ternary weights, int8 activations) learns
English-like text from the prose that ships with Python. Expected (300 steps, 2-core CPU,
~2,200 tokens/s): validation loss from ln(4096) ≈ 8.3 down to ≈ 5.0 nats/token (perplexity
≈ 150, ≈ 2.1 bits per byte), against a unigram entropy of ≈ 6.6 nats/token.
"""

from mmfree import configs


def get_config(arg: str = "default"):
  c = configs.base_config("small")
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
  elif arg != "default":
    raise ValueError(f"experiments/tiny.py: unknown variant {arg!r} (default, smoke)")
  return c


def get_sweep(arg: str = "default"):
  """Learning rate against width: the first sweep anyone runs."""
  return configs.product(
    configs.axis("train.lr", [1e-3, 3e-3]),
    configs.axis("model.hidden_size", [32, 64] if arg == "smoke" else [128, 256]),
  )
