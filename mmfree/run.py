"""`mmfree run`: an experiment's stages in order, each skipped when its outputs are complete.

The run directory is the unit of work: `config.json` (the resolved config), `status.json`,
`metrics.jsonl`, `checkpoints/`, `quant/`, `eval.json`, `program/`, `emulate.json`, `measure.json`.
Rerunning the same command resumes.
"""

import contextlib
import datetime
import json
import signal
import threading
from pathlib import Path

from mmfree import configs, measure
from mmfree.configs import Experiment
from mmfree.data.sources import load_data
from mmfree.files import STATUS, exclusive, write_json
from mmfree.train import checkpoint
from mmfree.train.tracking import Tracker

EVAL = "eval.json"


def set_status(run_dir: Path, status: str, stage: str = "", error: str | None = None):
  now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  write_json(run_dir / STATUS, {"status": status, "stage": stage, "error": error, "updated": now})


def _check_same_experiment(run_dir: Path, exp: Experiment):
  path = run_dir / checkpoint.CONFIG
  if not path.exists():
    return
  saved = json.loads(path.read_text())
  wanted = exp.to_dict()
  changed = configs.differences({k: saved.get(k) for k in wanted}, wanted)
  ignored = ["experiment.", "tracking.", "stages", "eval.", "loihi."]  # not what was trained
  if exp.train.init_from:  # the architecture is init_from's, not the experiment's
    ignored += [f"model.{k}" for k in wanted["model"] if k not in RUNTIME_MODEL_FIELDS]
  changed = [k for k in changed if not k.startswith(tuple(ignored))]
  if changed:
    raise ValueError(
      f"{run_dir} holds a run with a different config ({', '.join(changed)}); "
      "use a new --workdir, or delete the directory to start over"
    )


RUNTIME_MODEL_FIELDS = ("precision", "scan", "matmul_dtype")  # all else is architecture


def data_config(exp: Experiment):
  """The experiment's data, tokenized with init_from's own tokenizer when it has one."""
  if exp.train.init_from:
    from mmfree.evaluate import with_model_tokenizer

    return with_model_tokenizer(exp.data, Path(exp.train.init_from))
  return exp.data


def model_config(exp: Experiment, vocab_size: int, tokenizer):
  """The model to train: the experiment's, or init_from's architecture, sized to the data."""
  if exp.train.init_from:
    from mmfree.api import read_config_of

    src = read_config_of(Path(exp.train.init_from))
    cfg = src.replace(**{k: getattr(exp.model, k) for k in RUNTIME_MODEL_FIELDS})
    if vocab_size > cfg.vocab_size:
      raise ValueError(
        f"the data's tokenizer has {vocab_size} ids but {exp.train.init_from} has a vocabulary "
        f"of {cfg.vocab_size}: set data.tokenizer to the checkpoint's tokenizer"
      )
    return cfg
  bos = getattr(tokenizer, "bos_id", None)
  eos = getattr(tokenizer, "eos_id", None)
  vocab = max(vocab_size, exp.train.vocab_size)  # e.g. the published checkpoints' 32000
  return exp.model.replace(vocab_size=vocab, bos_token_id=bos, eos_token_id=eos)


def stage_train(exp: Experiment, run_dir: Path):
  from mmfree.train import loop

  with checkpoint.manager(run_dir) as mgr:
    latest = mgr.latest_step()
  if latest is not None and latest >= exp.train.steps:
    return
  data = load_data(data_config(exp))
  model_cfg = model_config(exp, data.vocab_size, data.tokenizer)
  resolved = {**exp.to_dict(), "model": model_cfg.to_dict(), "data_info": data.info}
  write_json(run_dir / checkpoint.CONFIG, resolved)
  if data.tokenizer is not None:
    data.tokenizer.save(run_dir)
  hw = qat_scales(exp, run_dir) if model_cfg.precision == "hw" else None
  tracker = Tracker(run_dir, exp.tracking, resolved)
  try:
    loop.train(run_dir, model_cfg, exp.train, data, tracker, hw)
  finally:
    tracker.close()


def qat_scales(exp: Experiment, run_dir: Path):
  """(QuantConfig, frozen scales) for training at `hw` (QAT): the run's own calibration, made
  from `train.init_from`'s weights on the first call."""
  from mmfree.quant import calibrate

  if not calibrate.is_current(run_dir, exp.quant):
    if not exp.train.init_from:
      raise ValueError(
        "model.precision='hw' trains with frozen calibrated scales (QAT): set train.init_from "
        "to a trained `bitnet` run or checkpoint to calibrate from"
      )
    _calibrate(exp, run_dir, source=Path(exp.train.init_from))
  return calibrate.load(run_dir)


def _calibrate(exp: Experiment, run_dir: Path, source: Path | None = None):
  from mmfree.quant import calibrate

  e = exp.eval
  calibrate.calibrate_run(
    run_dir, exp.quant, data_config(exp), e.calib_batches, e.calib_batch_size, exp.train.seq_len,
    source,
  )  # fmt: skip


def stage_calibrate(exp: Experiment, run_dir: Path):
  """Frozen `hw` scales in `quant/`, unless they are there from this QuantConfig (or QAT)."""
  from mmfree.quant import calibrate

  if not calibrate.is_current(run_dir, exp.quant):
    _calibrate(exp, run_dir)


def stage_eval(exp: Experiment, run_dir: Path):
  """`eval.json`: {precision: loss, perplexity, bits per byte[, saturation]}, one at a time."""
  from mmfree.evaluate import evaluate_model
  from mmfree.files import read_json

  results = read_json(run_dir / EVAL) or {}
  for precision in exp.eval.precisions or (checkpoint.model_config(run_dir).precision,):
    if precision in results:
      continue
    r = evaluate_model(
      run_dir, data_config(exp), exp.train.seq_len, precision, exp.eval.max_windows
    )
    results[precision] = r
    write_json(run_dir / EVAL, results)
    figures = {k: v for k, v in r.items() if isinstance(v, float)}
    print(f"eval {precision}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))


STAGES = {"train": stage_train, "calibrate": stage_calibrate, "eval": stage_eval,
          "lower": measure.stage_lower, "emulate": measure.stage_emulate,
          "measure": measure.stage_measure}  # fmt: skip


def run_experiment(exp: Experiment, run_dir: Path, stages: tuple[str, ...] | None = None):
  """Run `stages` (default: the experiment's) in order; status.json says where it got to."""
  run_dir = Path(run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  with _exclusive(run_dir):
    _check_same_experiment(run_dir, exp)
    if not (run_dir / checkpoint.CONFIG).exists():
      write_json(run_dir / checkpoint.CONFIG, exp.to_dict())
    stage = ""
    try:
      for stage in stages or exp.stages:
        set_status(run_dir, "running", stage)
        STAGES[stage](exp, run_dir)
    except BaseException as e:
      set_status(run_dir, "failed", stage, f"{type(e).__name__}: {e}")
      raise
    set_status(run_dir, "done", stage)


def _terminate(signum, frame):
  raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _exclusive(run_dir: Path):
  """One process per run directory; SIGTERM unwinds like Ctrl-C so status.json says so."""
  busy = ValueError(f"another mmfree process is running in {run_dir}")
  with exclusive(run_dir / ".lock", busy):
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
      yield
    finally:
      if main_thread:
        signal.signal(signal.SIGTERM, previous)
