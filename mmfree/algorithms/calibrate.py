"""Calibration of a run: its (or `init_from`'s) `bitnet` model observed on its training text.

The record in `quant/config.json` names the inputs by content (the checkpoint's parameter hash,
the QuantConfig, the calibration settings, the data stream), so a stage can tell it is current.
"""

from pathlib import Path

from flax import nnx

from mmfree.algorithms.evaluate import data_id, load_model_data
from mmfree.core.quant import QuantConfig
from mmfree.data import pipeline
from mmfree.models.layers import BitLinear
from mmfree.quant import calibrate, hw
from mmfree.store import checkpoint


def inputs(run_dir: Path, cfg: QuantConfig, data_cfg, num_batches: int, batch_size: int,
           seq_len: int, source: Path | None = None) -> dict:  # fmt: skip
  """What a calibration of `source` (default: the run) into `run_dir` depends on."""
  return {
    "checkpoint": checkpoint.checkpoint_id(Path(source or run_dir)),
    "quant": cfg.to_dict(),
    "calibration": {"batches": num_batches, "batch_size": batch_size, "seq_len": seq_len},
    "data": data_id(data_cfg, Path(run_dir)),
  }


def check_input_bits(model, cfg: QuantConfig):
  """Refuse before calibrating an input width no BitLinear of `model` accumulates exactly."""
  for path, m in nnx.iter_modules(model):
    if isinstance(m, BitLinear):
      where = ".".join(map(str, path))
      hw.check_input_bits(where, m.kernel.shape[0], cfg.bits_of("bitlinear_in"))


def calibrate_run(
  run_dir: Path,
  cfg: QuantConfig,
  data_cfg,
  num_batches: int,
  batch_size: int,
  seq_len: int,
  source: Path | None = None,
) -> dict:
  """Calibrate the `bitnet` model of `source` (default: the run itself) on its training data;
  writes `run_dir/quant/` (QAT calibrates the checkpoint it starts from into the new run)."""
  record = inputs(run_dir, cfg, data_cfg, num_batches, batch_size, seq_len, source)
  model_cfg, params = checkpoint.read_params(Path(source or run_dir))
  model = checkpoint.build_model(model_cfg.replace(precision="bitnet"), params)
  check_input_bits(model, cfg)
  data = load_model_data(data_cfg, Path(run_dir), model_cfg.vocab_size)
  it = pipeline.batches(data.train_N, batch_size, seq_len, seed=0)
  batches = [next(it)[:, :-1] for _ in range(num_batches)]
  scales, stats = calibrate.calibrate(model, batches, cfg)
  meta = {"batches": num_batches, "batch_size": batch_size, "seq_len": seq_len,
          "data": data.info.get("description"), "source": str(source or run_dir),
          "inputs": record}  # fmt: skip
  calibrate.save(Path(run_dir), cfg, scales, stats, meta)
  return stats
