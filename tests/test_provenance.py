"""Provenance by content, on real smoke runs: a stage reruns exactly when the hashes of its inputs
changed, says why, and a results row never mixes outputs of different inputs."""

import json
import shutil
from pathlib import Path

import pytest

from mmfree import configs, results
from mmfree.algorithms import lower
from mmfree.cli import main
from mmfree.core import files
from mmfree.loihi import bundle_io
from mmfree.run import run_experiment

ROOT = Path(__file__).parent.parent
SMOKE = str(ROOT / "experiments/tiny.py:smoke")
OUTPUTS = ("eval.json", "quant/scales.json", "program/program.json", "emulate.json",
           "measure.json", files.DIGESTS)  # fmt: skip


def _copy(src: Path, tmp_path: Path) -> Path:
  shutil.copytree(src, tmp_path / "run")
  return tmp_path / "run"


def _mtimes(d: Path) -> dict:
  return {f: (d / f).stat().st_mtime_ns for f in OUTPUTS}


def _rerun(d: Path, capsys, **overrides) -> list[str]:
  """`mmfree run` again with the run's own overrides (conftest's full_run), changed by these."""
  own = json.loads((d / files.CONFIG).read_text())["experiment"]["overrides"]
  capsys.readouterr()
  run_experiment(configs.load_experiment(SMOKE, {**own, **overrides}), d)
  return [line for line in capsys.readouterr().out.splitlines() if ": rerun, " in line]


def test_a_current_run_reruns_nothing(full_run, tmp_path, capsys):
  d = _copy(full_run, tmp_path)
  before = _mtimes(d)
  assert _rerun(d, capsys) == []
  assert _mtimes(d) == before
  row = results.load(d).iloc[0]
  assert row["stale"] == () and row["eval.hw.loss"] > 0 and row["measure.generation.mj_per_token"]


def test_recalibrating_with_other_batches_reruns_its_dependants_only(full_run, tmp_path, capsys):
  d = _copy(full_run, tmp_path)
  before, evals = _mtimes(d), json.loads((d / "eval.json").read_text())
  prog = bundle_io.content_sha256(d / "program")
  why = _rerun(d, capsys, **{"eval.calib_batches": 1, "eval.calib_batch_size": 1})
  assert why[0] == "calibrate: rerun, calibration settings changed"
  assert "eval hw: rerun, quant/ changed" in why and "lower: rerun, quant/ changed" in why
  assert any(w.startswith("emulate: rerun, ") for w in why)
  assert bundle_io.content_sha256(d / "program") != prog  # one batch chose other scales
  assert "measure: rerun, program/ changed" in why
  assert not [w for w in why if w.startswith(("train", "eval bitnet"))]
  after = _mtimes(d)
  assert after[files.DIGESTS] == before[files.DIGESTS]  # the checkpoint was not touched
  assert all(after[f] > before[f] for f in OUTPUTS if f != files.DIGESTS)
  new = json.loads((d / "eval.json").read_text())
  assert new["bitnet"] == evals["bitnet"] and new["hw"]["inputs"]["quant"] == files.quant_id(d)


def test_changing_eval_max_windows_reruns_eval_only(full_run, tmp_path, capsys):
  d = _copy(full_run, tmp_path)
  before = _mtimes(d)
  why = _rerun(d, capsys, **{"eval.max_windows": 2})
  assert why == [f"eval {p}: rerun, eval settings changed" for p in ("bitnet", "hw")]
  after = _mtimes(d)
  assert [f for f in OUTPUTS if after[f] != before[f]] == ["eval.json"]
  assert json.loads((d / "eval.json").read_text())["bitnet"]["tokens"] == 2 * 32


def test_two_lowerings_of_other_scales_within_a_second_are_two_programs(full_run, tmp_path):
  d = _copy(full_run, tmp_path)
  a = lower.lower_run(d, tmp_path / "a")
  scales_path = d / files.QUANT / "scales.json"
  scales = json.loads(scales_path.read_text())
  key = next(k for k in scales if k.endswith(".attn_out"))
  scales[key]["scale"] *= 2  # another power of two: another program
  scales_path.write_text(json.dumps(scales))
  b = lower.lower_run(d, tmp_path / "b")
  created = [json.loads((p / "program.json").read_text())["provenance"]["created"] for p in (a, b)]
  assert bundle_io.content_sha256(a) != bundle_io.content_sha256(b), created
  inputs = [json.loads((p / "program.json").read_text())["provenance"]["inputs"] for p in (a, b)]
  assert inputs[0]["quant"] != inputs[1]["quant"] == files.quant_id(d)


def test_a_results_row_never_mixes_outputs_of_different_inputs(full_run, tmp_path, capsys):
  d = _copy(full_run, tmp_path)
  # a standalone recalibration: the hw accuracy, the program and its measurement are now stale
  main(["quantize", "calibrate", str(d), "--batches", "1", "--batch-size", "1", "--seq-len", "32"])
  row = results.load(d).iloc[0]
  assert set(row["stale"]) == {"eval.hw", "emulate", "measure"}
  assert row["eval.bitnet.loss"] > 0
  assert not [c for c in row.index if c.startswith(("eval.hw.", "measure.", "emulate."))]
  assert "stale" in results.summary(d)
  # lowered again by hand: a program of the new scales, its old measurement still stale
  main(["lower", str(d)])
  row = results.load(d).iloc[0]
  assert {"eval.hw", "measure"} <= set(row["stale"])
  assert not [c for c in row.index if c.startswith(("eval.hw.", "measure."))]
  # `mmfree run` reruns what is stale; the row is whole again, every hash the run's own
  _rerun(d, capsys)
  row = results.load(d).iloc[0]
  assert row["stale"] == () and row["eval.hw.loss"] > 0 and row["measure.generation.mj_per_token"]
  assert row["quant_sha256"] == files.quant_id(d)
  assert row["program_sha256"] == bundle_io.content_sha256(d / "program")


def test_resuming_on_a_changed_corpus_is_refused(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(40):
    (corpus / f"doc{i:02d}.txt").write_text(f"Document {i} says something about modules. " * 40)
  overrides = {"data.source": "text", "data.path": str(corpus), "train.steps": 4,
               "train.ckpt_every": 2, "stages": ("train",)}  # fmt: skip
  d = tmp_path / "run"
  run_experiment(configs.load_experiment(SMOKE, overrides), d)
  shutil.rmtree(d / files.CHECKPOINTS / "4")  # as if killed after step 2's checkpoint
  (corpus / "doc03.txt").write_text("Edited since: another text. " * 40)
  with pytest.raises(ValueError, match=r"trained to step 2 on another token stream \(its inputs"):
    run_experiment(configs.load_experiment(SMOKE, overrides), d)
  assert files.latest_step(d) == 2  # nothing was trained on the new text
