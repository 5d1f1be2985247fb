"""The train and tracking sections of an experiment."""

import dataclasses

MODES = ("disabled", "offline", "online")  # of tracking.wandb


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 300
  batch_size: int = 16
  seq_len: int = 128
  grad_accum: int = 1  # micro-batches per step: batch_size / grad_accum sequences each
  lr: float = 3e-3
  min_lr_ratio: float = 0.1
  warmup_steps: int = 50
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.95
  grad_clip: float = 1.0
  eval_every: int = 100
  eval_windows: int = 64
  log_every: int = 10
  ckpt_every: int = 100
  keep_checkpoints: int = 2
  seed: int = 0
  init_from: str = ""  # a run directory or Hugging Face checkpoint to fine-tune from
  vocab_size: int = 0  # the model's vocabulary: 0 = the tokenizer's; more pads embedding and head
  prefetch: int = 2  # batches read ahead on a thread (0: read in the loop)

  def __post_init__(self):
    positive = ("batch_size", "seq_len", "grad_accum", "log_every", "eval_every",
                "eval_windows", "ckpt_every", "keep_checkpoints")  # fmt: skip
    for name in positive:
      if getattr(self, name) < 1:
        raise ValueError(f"train.{name}={getattr(self, name)}: must be a positive integer")
    if self.prefetch < 0:
      raise ValueError(f"train.prefetch={self.prefetch}: must be >= 0")
    if self.warmup_steps < 0:
      raise ValueError(f"train.warmup_steps={self.warmup_steps}: must be >= 0")
    if self.steps < 0:  # 0 saves the initial weights: init_from's, or a random initialization
      raise ValueError(f"train.steps={self.steps}: must be 0 or more")
    if self.vocab_size < 0:
      raise ValueError(f"train.vocab_size={self.vocab_size}: must be 0 (the tokenizer's) or more")
    if self.batch_size % self.grad_accum:
      raise ValueError(f"train.grad_accum={self.grad_accum} must divide train.batch_size")


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
  wandb: str = "disabled"  # disabled | offline | online
  project: str = "mmfree"
  entity: str = ""
  name: str = ""  # default: the run directory's name

  def __post_init__(self):
    if self.wandb not in MODES:
      raise ValueError(f"tracking.wandb={self.wandb!r}: expected one of {MODES}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """The devices as a (data, fsdp) mesh: batch rows split over both axes, parameters and optimizer
  state sharded over `fsdp`, replicated over `data`. 0 takes every device the other axis leaves.
  Which devices a run uses changes no number it computes (to float reduction order)."""

  data: int = 0
  fsdp: int = 1

  def __post_init__(self):
    for name in ("data", "fsdp"):
      if getattr(self, name) < 0:
        raise ValueError(f"mesh.{name}={getattr(self, name)}: must be 0 (the rest) or more")
    if self.data == self.fsdp == 0:
      raise ValueError("mesh.data and mesh.fsdp are both 0: give one of them a size")

  def shape(self, devices: int) -> tuple[int, int]:
    """(data, fsdp) over `devices` devices."""
    data, fsdp = self.data, self.fsdp
    if data == 0 or fsdp == 0:
      known = data or fsdp
      if devices % known:
        raise ValueError(
          f"mesh: {devices} devices do not split into groups of {known} (mesh.data or "
          "mesh.fsdp): pick a divisor of the device count"
        )
      data, fsdp = (devices // known, fsdp) if data == 0 else (data, devices // known)
    if data * fsdp != devices:
      raise ValueError(
        f"mesh.data={data} x mesh.fsdp={fsdp} = {data * fsdp} devices, but there are "
        f"{devices}: make the product {devices}, or set one of them to 0"
      )
    return data, fsdp
