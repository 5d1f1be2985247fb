"""Model configuration and size presets (spec: shared/spec/model.md, "Sizes")."""

import dataclasses
import math
from typing import Literal

Precision = Literal["float", "bitnet", "hw"]
PRECISIONS = ("float", "bitnet", "hw")
SCANS = ("associative", "sequential")
MATMUL_DTYPES = ("float32", "bfloat16")
REMATS = ("none", "block")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of HGRNBit; field names follow the checkpoints' config.json where they can."""

  vocab_size: int = 32000
  hidden_size: int = 1024
  num_hidden_layers: int = 24
  num_heads: int = 1
  expand_ratio: int = 1
  hidden_ratio: int = 4
  intermediate_size: int | None = None
  rms_norm_eps: float = 1e-6
  use_lower_bound: bool = True
  bos_token_id: int | None = 1
  eos_token_id: int | None = 2
  initializer_range: float = 0.02
  precision: Precision = "bitnet"
  scan: str = "associative"  # how training and prefill run the recurrence over time
  # Operand dtype of the BitLinear matmuls (accumulation is always float32). At `bitnet` the
  # operands are small integers, exact in bfloat16, so bfloat16 changes speed, not results.
  matmul_dtype: str = "float32"
  # Blocks 1..L-1 under one `jax.lax.scan` (one compiled block, whatever the depth) at `float` and
  # `bitnet`; "block" also rematerializes each block's activations in the backward pass.
  scan_layers: bool = False
  remat: str = "none"

  def __post_init__(self):
    if self.remat not in REMATS:
      raise ValueError(f"model.remat={self.remat!r}: expected one of {REMATS}")
    if self.remat != "none" and not self.scan_layers:
      raise ValueError("model.remat applies to scanned blocks: set model.scan_layers=True too")
    if self.precision not in PRECISIONS:
      raise ValueError(f"model.precision={self.precision!r}: expected one of {PRECISIONS}")
    if self.matmul_dtype not in MATMUL_DTYPES:
      raise ValueError(f"model.matmul_dtype={self.matmul_dtype!r}: expected one of {MATMUL_DTYPES}")
    if self.scan not in SCANS:
      raise ValueError(f"model.scan={self.scan!r}: expected one of {SCANS}")
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "expand_ratio"):
      if getattr(self, name) < 1:
        raise ValueError(f"model.{name}={getattr(self, name)}: must be a positive integer")
    if self.inner_size % self.num_heads:
      raise ValueError(f"model.num_heads={self.num_heads} must divide hidden_size*expand_ratio")

  @property
  def inner_size(self) -> int:
    """D: width of the MLGRU state."""
    return self.hidden_size * self.expand_ratio

  @property
  def mlp_size(self) -> int:
    """I: GLU width, rounded up to a multiple of 256 as upstream does."""
    if self.intermediate_size is not None:
      return self.intermediate_size
    return 256 * math.ceil(int(self.hidden_size * self.hidden_ratio * 2 / 3) / 256)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "ModelConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(names)}")
    return cls(**d)


PRESETS = {
  "370m": ModelConfig(hidden_size=1024, num_hidden_layers=24),
  "1.3b": ModelConfig(hidden_size=2048, num_hidden_layers=24),
  "2.7b": ModelConfig(hidden_size=2560, num_hidden_layers=32),
  # CPU-sized: the default model trained on the embedded corpus.
  "small": ModelConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=4),
  # Test-sized: compiles and runs in well under a second.
  "tiny": ModelConfig(vocab_size=258, hidden_size=64, num_hidden_layers=2, intermediate_size=128),
}


def preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)
