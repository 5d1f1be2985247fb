"""Task accuracy through a run of the README's default (small) model: the `tasks` stage at
`bitnet`, `hw` and `program` (the lowered bundle in the emulator) answers alike at `hw` and
`program` on every example, is cached by content and rescored when an input changes, and joins
`mmfree.results.load`."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from mmfree import configs, results
from mmfree.core import files
from mmfree.run import run_experiment
from mmfree.tasks import suite

sys.path.insert(0, str(Path(__file__).parent))  # the lava-nc wheel owns the name `tests`
import shared_data  # noqa: E402

ROOT = Path(__file__).parent.parent
SHARED = shared_data.EVAL
TASKS = ("arc_easy", "piqa", "winogrande", "lambada")
LAMBADA = [  # last-word cloze examples (the text's last word is the target)
  "The cat sat on the mat and looked out of the window at the rain",
  "She opened the door, walked into the room and turned on the light",
  "After the long winter the river was full of water again",
  "He wrote his name at the top of the page and began to read the first question",
]


def _experiment(tasks_dir: Path, **overrides):
  return configs.load_experiment(str(ROOT / "experiments/tiny.py"), {
    "stages": ("train", "calibrate", "lower", "tasks"), "train.steps": 4,
    "train.batch_size": 4, "train.seq_len": 64, "train.log_every": 2, "train.eval_every": 4,
    "train.ckpt_every": 4, "train.eval_windows": 2, "eval.calib_batches": 2,
    "eval.calib_batch_size": 2, "eval.tasks": TASKS, "eval.tasks_dir": str(tasks_dir),
    "eval.tasks_limit": 4, "eval.tasks_precisions": ("bitnet", "hw", "program"),
    "eval.tasks_batch": 8, **overrides})  # fmt: skip


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
  """(run, tasks_dir): the small preset trained a few steps, calibrated, lowered, scored."""
  d = tmp_path_factory.mktemp("tasks_run")
  tasks_dir = d / "tasks"
  tasks_dir.mkdir()
  for name in TASKS[:3]:
    shutil.copy(SHARED / f"{name}.jsonl", tasks_dir)
  (tasks_dir / "lambada.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in LAMBADA))
  run_experiment(_experiment(tasks_dir), d / "run")
  return d / "run", tasks_dir


@pytest.mark.slow
def test_hw_and_program_answer_alike(small_run):
  out = json.loads((small_run[0] / files.TASKS).read_text())
  by = out["precisions"]
  assert set(by) == {"bitnet", "hw", "program"}
  for name in TASKS:
    hw, prog = by["hw"]["examples"][name], by["program"]["examples"][name]
    assert len(hw["acc"]) == 4
    # the same integers through the same scoring function: the same floats, not only answers
    assert hw == prog, name
    assert by["hw"]["metrics"][name] == by["program"]["metrics"][name]
  assert set(by["program"]["metrics"]["lambada"]) >= {"acc", "perplexity", "perplexity_stderr"}


@pytest.mark.slow
def test_the_stage_is_cached_by_content(small_run, tmp_path, capsys):
  run, tasks_dir = small_run
  run = shutil.copytree(run, tmp_path / "run")
  before = (run / files.TASKS).read_text()
  run_experiment(_experiment(tasks_dir), run)  # nothing changed: nothing rescored
  assert (run / files.TASKS).read_text() == before
  assert "rescored" not in capsys.readouterr().out
  moved = shutil.copytree(tasks_dir, tmp_path / "moved")  # the same content elsewhere: current
  run_experiment(_experiment(moved), run)
  assert "rescored" not in capsys.readouterr().out
  with open(moved / "piqa.jsonl", "a") as f:  # another file content: rescored
    f.write((tasks_dir / "piqa.jsonl").read_text().splitlines()[0] + "\n")
  run_experiment(_experiment(moved, **{"eval.tasks_precisions": ("bitnet",)}), run)
  assert "tasks bitnet: rescored, task data changed\n" in capsys.readouterr().out
  out = json.loads((run / files.TASKS).read_text())
  assert set(out["precisions"]) == {"bitnet"}  # precisions no longer asked for are dropped


@pytest.mark.slow
def test_results_columns_and_staleness(small_run, tmp_path):
  run = shutil.copytree(small_run[0], tmp_path / "run")
  row = results.load(run).iloc[0]
  out = json.loads((run / files.TASKS).read_text())
  for p in ("bitnet", "hw", "program"):
    accs = [out["precisions"][p]["metrics"][n]["acc"] for n in TASKS]
    assert row[f"tasks.{p}.avg_acc"] == pytest.approx(sum(accs) / len(accs))
    assert row[f"tasks.{p}.arc_easy.acc_norm"] == out["precisions"][p]["metrics"]["arc_easy"][
      "acc_norm"]  # fmt: skip
  (run / files.QUANT / "scales.json").write_text(
    (run / files.QUANT / "scales.json").read_text().replace("1", "2", 1))  # fmt: skip
  row = results.load(run).iloc[0]  # another calibration: hw and program no longer describe it
  assert "tasks.hw" in row["stale"] and "tasks.program" in row["stale"]
  assert "tasks.bitnet" not in row["stale"] and row["tasks.bitnet.avg_acc"] >= 0
  with pytest.raises(ValueError, match="rerun `mmfree lower"):
    suite.program_dir(run)
  shutil.rmtree(run / files.PROGRAM)
  with pytest.raises(FileNotFoundError, match="mmfree lower"):
    suite.program_dir(run)
