"""`mmfree run`: an experiment's stages in order, each rerun exactly when its inputs changed.

The run directory is the unit of work: `config.json` (the resolved config), `status.json`,
`metrics.jsonl`, `checkpoints/`, `quant/`, `eval.json`, `program/`, `emulate.json`,
`measure.json`. Rerunning the same command resumes; `stages` says how a stage knows it is current.
"""

import datetime
import json
from pathlib import Path

from mmfree import stages
from mmfree.algorithms import distributed
from mmfree.core import experiment
from mmfree.core.experiment import Experiment
from mmfree.core.files import CONFIG, STATUS, exclusive, sigterm_as_interrupt, write_json


def set_status(run_dir: Path, status: str, stage: str = "", error: str | None = None):
  now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  write_json(run_dir / STATUS, {"status": status, "stage": stage, "error": error, "updated": now})


def _check_same_experiment(run_dir: Path, exp: Experiment):
  path = run_dir / CONFIG
  if not path.exists():
    return
  changed = experiment.config_changes(json.loads(path.read_text()), exp.to_dict())
  # not what was trained: the mesh and the block layout change how it runs, not what it computes
  ignored = ("experiment.", "tracking.", "stages", "eval.", "loihi.", "mesh.", "train.prefetch",
             "model.scan_layers", "model.remat")  # fmt: skip
  changed = [k for k in changed if not k.startswith(ignored)]
  if changed:
    raise ValueError(
      f"{run_dir} holds a run with a different config ({', '.join(changed)}); "
      "use a new --workdir, or delete the directory to start over"
    )


def run_experiment(exp: Experiment, run_dir: Path, only: tuple[str, ...] | None = None):
  """Run the experiment's stages (or `only` these) in order; status.json says where it got to.
  In a multi-process run, process 0 holds the lock and writes every file and runs the stages
  after training alone; the other processes take part in the train stage only."""
  run_dir = Path(run_dir)
  if not distributed.is_main():
    if "train" in (only or exp.stages):
      stages.STAGES["train"](exp, run_dir)
    return
  run_dir.mkdir(parents=True, exist_ok=True)
  busy = ValueError(f"another mmfree process is running in {run_dir}")
  with exclusive(run_dir / ".lock", busy), sigterm_as_interrupt():
    _check_same_experiment(run_dir, exp)
    if not (run_dir / CONFIG).exists():
      write_json(run_dir / CONFIG, exp.to_dict())
    stage = ""
    try:
      for stage in only or exp.stages:
        set_status(run_dir, "running", stage)
        stages.STAGES[stage](exp, run_dir)
    except BaseException as e:
      set_status(run_dir, "failed", stage, f"{type(e).__name__}: {e}")
      raise
    set_status(run_dir, "done", stage)
