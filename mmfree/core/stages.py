"""The eval, calibrate, lower, emulate and measure sections of an experiment."""

import dataclasses

from mmfree.core.model import PRECISIONS

LM_HEADS = ("chip", "host")  # where the lm_head runs: on the chip, or on the host
BACKENDS = ("emulator", "lava")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """The eval and calibrate stages of `mmfree run`."""

  precisions: tuple[str, ...] = ()  # () evaluates the model at its own precision
  max_windows: int = 512  # held-out windows of train.seq_len tokens
  calib_batches: int = 16  # batches of training text observed by the calibrate stage
  calib_batch_size: int = 8
  # the `tasks` stage: zero-shot tasks (names of `mmfree.tasks.docs.TASKS`, or "all")
  tasks: tuple[str, ...] = ()  # () skips the stage
  tasks_dir: str = ""  # local JSONL files; "" = the tasks' Hugging Face datasets
  tasks_limit: int = 0  # the first N examples of each task; 0 = all
  tasks_precisions: tuple[str, ...] = ()  # () = eval.precisions; "program" = the lowered bundle
  tasks_batch: int = 16  # sequences per scoring batch

  def __post_init__(self):
    bad = [p for p in self.precisions if p not in PRECISIONS]
    if bad:
      raise ValueError(f"eval.precisions: unknown {bad}; choose from {PRECISIONS}")
    bad = [p for p in self.tasks_precisions if p not in (*PRECISIONS, "program")]
    if bad:
      raise ValueError(f"eval.tasks_precisions: unknown {bad}; choose from "
                       f"{(*PRECISIONS, 'program')}")  # fmt: skip
    if self.tasks_limit < 0:
      raise ValueError(f"eval.tasks_limit={self.tasks_limit}: must be 0 (all) or more")
    for name in ("max_windows", "calib_batches", "calib_batch_size", "tasks_batch"):
      if getattr(self, name) < 1:
        raise ValueError(f"eval.{name}={getattr(self, name)}: must be at least 1")


@dataclasses.dataclass(frozen=True)
class LoihiConfig:
  """The lower, emulate and measure stages of `mmfree run`."""

  lm_head: str = "chip"  # chip | host
  backend: str = "emulator"  # emulator | lava (activity counted on this backend's integers)
  constants: str = ""  # a hardware constants file (JSON or TOML); "" = hardware.DEFAULT
  weights: str = "min"  # stored weight width: min (the values' own) | 8bit (the published 370M)
  placement: str = "pack"  # pack (fill chips in order) | block (a chip group per block)
  check_tokens: int = 64  # held-out tokens of the emulate stage's check against the `hw` model
  measure_tokens: int = 64  # held-out tokens of the measured prompt
  new_tokens: int = 8  # then greedy generation

  def __post_init__(self):
    if self.lm_head not in LM_HEADS:
      raise ValueError(f"loihi.lm_head={self.lm_head!r}: expected one of {LM_HEADS}")
    if self.backend not in BACKENDS:
      raise ValueError(f"loihi.backend={self.backend!r}: expected one of {BACKENDS}")
    for name in ("check_tokens", "measure_tokens"):
      if getattr(self, name) < 1:
        raise ValueError(f"loihi.{name}={getattr(self, name)}: must be at least 1")
    if self.new_tokens < 0:
      raise ValueError(f"loihi.new_tokens={self.new_tokens}: must be 0 or more")
