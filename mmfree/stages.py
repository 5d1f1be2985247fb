"""The stages of `mmfree run`: train, calibrate, eval, lower, emulate, measure, tasks.

Each stage's output records the content hashes of exactly its inputs (`inputs`): the checkpoint
(step and parameter hash), the calibration (`quant/`'s content), the program's content, the data
stream, the settings that change the figures, the constants file. A stage is current if and only
if the recorded hashes equal the ones computed now; a stale one reruns and says why.
"""

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from mmfree.algorithms import calibrate as calibration
from mmfree.algorithms import distributed, evaluate, train
from mmfree.algorithms import lower as lowering
from mmfree.algorithms.load import load
from mmfree.core import digest, files
from mmfree.core.experiment import RUNTIME_MODEL_FIELDS, Experiment
from mmfree.core.files import read_json, write_json
from mmfree.data import sources
from mmfree.loihi import backend, bundle_io, mapping, program
from mmfree.loihi import measure as measuring
from mmfree.quant import calibrate
from mmfree.store import checkpoint
from mmfree.store.tracking import Tracker
from mmfree.tasks import suite


def _current(stage: str, recorded: dict | None, wanted: dict) -> bool:
  """Whether an output is current; a stale one that exists says why it reruns."""
  changed = digest.changed(recorded, wanted)
  if changed and recorded is not None:
    print(f"{stage}: rerun, {digest.why(changed)}")
  return not changed


def data_config(exp: Experiment):
  """The experiment's data, tokenized with init_from's own tokenizer when it has one."""
  if exp.train.init_from:
    return evaluate.with_model_tokenizer(exp.data, Path(exp.train.init_from))
  return exp.data


def model_config(exp: Experiment, vocab_size: int, tokenizer):
  """The model to train: the experiment's, or init_from's architecture, sized to the data."""
  if exp.train.init_from:
    src = checkpoint.read_config_of(Path(exp.train.init_from))
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


def _check_same_stream(run_dir: Path, step: int, identity: dict):
  """A resumed run continues on the token stream it started on, or not at all."""
  saved = ((read_json(run_dir / files.CONFIG) or {}).get("data_info") or {}).get("identity")
  parts = digest.changed(saved, identity) if saved is not None else []
  if not parts:
    return
  raise ValueError(
    f"{run_dir} was trained to step {step} on another token stream (its {', '.join(parts)} "
    "differ: edited files, another embedded corpus from another Python, or another tokenizer); "
    "resuming would continue on different text. Use a new --workdir, or fine-tune this run's "
    f"weights on the new data there with --config.train.init_from={run_dir}"
  )


def stage_train(exp: Experiment, run_dir: Path):
  latest = files.latest_step(run_dir)
  if latest is not None and latest >= exp.train.steps:
    return
  data_cfg = data_config(exp)
  identity = sources.identity(data_cfg)
  if latest is not None:
    _check_same_stream(run_dir, latest, identity)
  data = sources.load_data(data_cfg)
  model_cfg = model_config(exp, data.vocab_size, data.tokenizer)
  info = {**data.info, "identity": identity}
  resolved = {**exp.to_dict(), "model": model_cfg.to_dict(), "data_info": info}
  main = distributed.is_main()  # the other processes of a multi-process run write nothing
  if main:
    write_json(run_dir / files.CONFIG, resolved)
    if data.tokenizer is not None:
      data.tokenizer.save(run_dir)
  hw = qat_scales(exp, run_dir) if model_cfg.precision == "hw" else None
  tracker = Tracker(run_dir, exp.tracking, resolved) if main else None
  try:
    train.train(run_dir, model_cfg, exp.train, data, tracker, hw, exp.mesh)
  finally:
    if tracker is not None:
      tracker.close()


def _calibrate_if_stale(exp: Experiment, run_dir: Path, source: Path):
  """The run's calibration from `source`'s weights, unless `quant/` holds it already."""
  e = exp.eval
  args = (run_dir, exp.quant, data_config(exp), e.calib_batches, e.calib_batch_size,
          exp.train.seq_len, source)  # fmt: skip
  if not _current("calibrate", calibrate.recorded_inputs(run_dir), calibration.inputs(*args)):
    calibration.calibrate_run(*args)


def qat_scales(exp: Experiment, run_dir: Path):
  """(QuantConfig, frozen scales) for training at `hw` (QAT): the run's own calibration, made
  from `train.init_from`'s weights."""
  if not exp.train.init_from:
    raise ValueError(
      "model.precision='hw' trains with frozen calibrated scales (QAT): set train.init_from "
      "to a trained `bitnet` run or checkpoint to calibrate from"
    )
  _calibrate_if_stale(exp, run_dir, Path(exp.train.init_from))
  return calibrate.load(run_dir)


def stage_calibrate(exp: Experiment, run_dir: Path):
  """Frozen `hw` scales in `quant/` from the run's weights (a QAT run's: from init_from's)."""
  qat = checkpoint.model_config(run_dir).precision == "hw"
  _calibrate_if_stale(exp, run_dir, Path(exp.train.init_from) if qat else run_dir)


def stage_eval(exp: Experiment, run_dir: Path):
  """`eval.json`: {precision: loss, perplexity, bits per byte[, saturation], inputs}."""
  old = read_json(run_dir / files.EVAL) or {}
  results = {}
  ckpt, quant = checkpoint.checkpoint_id(run_dir), files.quant_id(run_dir)
  data = evaluate.data_id(data_config(exp), run_dir)
  for precision in exp.eval.precisions or (checkpoint.model_config(run_dir).precision,):
    settings = {"precision": precision, "seq_len": exp.train.seq_len,
                "max_windows": exp.eval.max_windows}  # fmt: skip
    wanted = {"checkpoint": ckpt, "quant": quant if precision == "hw" else None,
              "eval": settings, "data": data}  # fmt: skip
    entry = old.get(precision)
    if _current(f"eval {precision}", entry and entry.get("inputs"), wanted):
      results[precision] = entry
      continue
    r = evaluate.evaluate_model(
      run_dir, data_config(exp), exp.train.seq_len, precision, exp.eval.max_windows
    )
    results[precision] = {**r, "inputs": wanted}
    write_json(run_dir / files.EVAL, results)
    figures = {k: v for k, v in r.items() if isinstance(v, float)}
    print(f"eval {precision}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))
  if results != old:  # precisions no longer asked for are dropped
    write_json(run_dir / files.EVAL, results)


def stage_lower(exp: Experiment, run_dir: Path):
  """`RUN/program/` from the run's checkpoint and calibration, the lm_head where asked."""
  bundle = run_dir / files.PROGRAM
  recorded = (read_json(bundle / program.MANIFEST) or {}).get("provenance", {}).get("inputs")
  if _current("lower", recorded, lowering.inputs(run_dir, exp.loihi.lm_head)):
    return
  lowering.lower_run(run_dir, bundle, exp.loihi.lm_head)
  s = bundle_io.summary(bundle_io.load(bundle))
  print(f"lower: {s['populations']} populations, {s['neurons']:,} neurons -> {bundle}")


def held_out(exp: Experiment, run_dir: Path, n: int) -> list[int]:
  """The first `n` held-out tokens, tokenized as the run's model reads them."""
  vocab = checkpoint.model_config(run_dir).vocab_size
  val = np.asarray(evaluate.load_model_data(data_config(exp), run_dir, vocab).val_N)
  if len(val) < n:
    raise ValueError(f"the held-out text has {len(val)} tokens; loihi.*_tokens asks for {n}")
  return val[:n].tolist()


def emulate_inputs(exp: Experiment, run_dir: Path) -> dict:
  return {
    "program": bundle_io.content_sha256(run_dir / files.PROGRAM),
    "checkpoint": checkpoint.checkpoint_id(run_dir),  # the `hw` model it is checked against
    "quant": files.quant_id(run_dir),
    "emulate": {"check_tokens": exp.loihi.check_tokens},
    "data": evaluate.data_id(data_config(exp), run_dir),
  }


def stage_emulate(exp: Experiment, run_dir: Path):
  """`emulate.json`: the emulator's logits on held-out text equal the `hw` model's, bit for bit."""
  wanted = emulate_inputs(exp, run_dir)
  if _current("emulate", (read_json(run_dir / files.EMULATE) or {}).get("inputs"), wanted):
    return
  tokens = held_out(exp, run_dir, exp.loihi.check_tokens)
  result, seconds = backend.run_emulator(run_dir / files.PROGRAM, tokens, 0)
  got = result.logits
  lm = load(run_dir, "hw")
  want = np.asarray(lm.logits(np.asarray([tokens])))
  if not np.array_equal(got, want):
    bad = np.argwhere(got != want)
    raise ValueError(
      f"emulator logits differ from the `hw` model's at {len(bad)} of {got.size} values (first "
      f"at token {bad[0][1]}): the program and the model disagree; rerun `mmfree lower`"
    )
  r = measuring.emulate_report(result, seconds, tokens)
  # The gains were clipped once, at lowering: the program holds no clip of them.
  hw_clips = {k: int(a) for k, (a, _) in lm.saturation(np.asarray([tokens])).items()
              if a and not k.endswith(".rms_gain")}  # fmt: skip
  emu_clips = {k: n for k, n in r["clips"]["by_point"].items() if n}
  if emu_clips != hw_clips:
    diff = sorted(k for k in hw_clips.keys() | emu_clips.keys()
                  if hw_clips.get(k) != emu_clips.get(k))  # fmt: skip
    raise ValueError(
      f"the emulator's clips differ from the `hw` model's at {len(diff)} points (first: "
      f"{diff[0]}: {emu_clips.get(diff[0], 0)} against {hw_clips.get(diff[0], 0)}): rerun "
      "`mmfree lower`"
    )
  write_json(run_dir / files.EMULATE, {"inputs": wanted, "bit_exact": True, **r})
  n = r["clips"]["per_token"]
  print(f"emulate: logits and {n:.1f} clips per token bit-exact with the `hw` model on "
        f"{len(tokens)} held-out tokens ({r['tokens_per_s']:.0f} tokens/s)")  # fmt: skip


def measure_inputs(exp: Experiment, run_dir: Path) -> dict:
  c = exp.loihi
  # the constants file's content, not its name: an edited file is another measurement
  constants = hashlib.sha256(Path(c.constants).read_bytes()).hexdigest() if c.constants else None
  return {
    "program": bundle_io.content_sha256(run_dir / files.PROGRAM),
    "measure": {
      "backend": c.backend,
      "measure_tokens": c.measure_tokens,
      "new_tokens": c.new_tokens,
      "weights": c.weights,
      "placement": c.placement,
    },  # fmt: skip
    "constants": constants,
    "data": evaluate.data_id(data_config(exp), run_dir),
  }


def stage_measure(exp: Experiment, run_dir: Path):
  """`measure.json` from held-out tokens through the program on `loihi.backend`."""
  c, wanted = exp.loihi, measure_inputs(exp, run_dir)
  if _current("measure", (read_json(run_dir / files.MEASURE) or {}).get("inputs"), wanted):
    return
  tokens = held_out(exp, run_dir, c.measure_tokens)
  r = measuring.measure(run_dir / files.PROGRAM, tokens, c.new_tokens, c.constants or None,
                        mapping.Placement(c.weights, c.placement), backend=c.backend)  # fmt: skip
  write_json(run_dir / files.MEASURE, {"inputs": wanted, "loihi": dataclasses.asdict(c), **r})
  print(measuring.table(r))


def stage_tasks(exp: Experiment, run_dir: Path):
  """`tasks.json`: zero-shot task accuracy per precision (`eval.tasks`), each precision rescored
  only when its weights, scales, program, task data or settings changed."""
  e = exp.eval
  if not e.tasks:
    return
  own = checkpoint.model_config(run_dir).precision
  precisions = e.tasks_precisions or e.precisions or (own,)
  path = run_dir / files.TASKS
  old = read_json(path)
  out = suite.evaluate(run_dir, e.tasks, precisions, e.tasks_dir or None, e.tasks_limit or None,
                       e.tasks_batch, old=old, save=lambda o: write_json(path, o))  # fmt: skip
  write_json(path, out)
  if out != old:
    print(suite.table(out))


STAGES = {"train": stage_train, "calibrate": stage_calibrate, "eval": stage_eval,
          "lower": stage_lower, "emulate": stage_emulate, "measure": stage_measure,
          "tasks": stage_tasks}  # fmt: skip
