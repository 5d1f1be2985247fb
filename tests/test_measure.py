"""Sweeps end in measurement: the lower, emulate and measure stages of `mmfree run`, `mmfree
measure` and its fit on real runs, and the 370M paper experiment's pipeline on a small model."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmfree import configs, results
from mmfree.cli import main
from mmfree.loihi import bundle_io, hardware, opcount
from mmfree.run import run_experiment

ROOT = Path(__file__).parent.parent
SPEC = str(ROOT / "experiments/quant_ablation.py:smoke")
STAGE_FILES = ("program/program.json", "emulate.json", "measure.json")


def _base(sweep_dir: Path, tmp_path: Path) -> Path:
  """A copy of the sweep's default point, to change without disturbing other tests."""
  base = next(d for d in sweep_dir.iterdir() if d.name.startswith("base-"))
  return Path(shutil.copytree(base, tmp_path / "base"))


@pytest.mark.slow
def test_sweep_points_have_accuracy_and_energy(measured_sweep):
  df = results.load(measured_sweep)
  assert list(df["status"]) == ["done", "done"]
  for col in ("eval.hw.loss", "eval.bitnet.loss", "measure.generation.mj_per_token",
              "measure.generation.tokens_per_s", "measure.prefill.tokens_per_s",
              "measure.neurobench.activation_sparsity", "emulate.bit_exact"):  # fmt: skip
    assert df[col].notna().all(), col
  assert not [c for c in df if c.startswith(("measure.workload", "measure.per_step"))]
  assert "measure.generation.mj_per_token" in results.to_markdown(df)


@pytest.mark.slow
def test_energy_differences_come_from_counted_activity(measured_sweep):
  """Both points use the same constants; each energy kind is its counted activity times its
  constant, so the points differ in energy only through what the emulator counted."""
  runs = sorted(d for d in measured_sweep.iterdir() if (d / "measure.json").is_file())
  m = [json.loads((d / "measure.json").read_text()) for d in runs]
  assert m[0]["constants"] == m[1]["constants"]
  for r in m:
    e = {k: c["value"] for k, c in r["constants"].items()}
    # the counted synops plus the zero weights dense groups process
    processed = r["neurobench"]["processed_synops_per_token"]
    effective = r["neurobench"]["synops_per_token"]
    assert (
      effective == pytest.approx(r["per_token"]["synops"], rel=1e-12) and processed >= effective
    )
    # each population's counted updates, priced at its instructions over a LIF update's
    lif = sum(sum(r["per_step"][q["population"]]["updates"]) / r["tokens"] * q["instructions"]
              for q in r["by_population"]) / opcount.LIF_INSTRUCTIONS  # fmt: skip
    assert lif > r["per_token"]["updates"]  # every fused kind runs more than a LIF's program
    want = {"synops": processed * e["energy.synop"], "updates": lif * e["energy.update"]}
    for kind, j in want.items():
      assert r["energy_mj_per_token"][kind] == pytest.approx(1e3 * j, rel=1e-9), kind
  assert m[0]["per_token"]["synops"] != m[1]["per_token"]["synops"]
  assert m[0]["energy_mj_per_token"]["dynamic"] != m[1]["energy_mj_per_token"]["dynamic"]


@pytest.mark.slow
def test_finished_stages_are_not_redone(measured_sweep, tmp_path):
  d = _base(measured_sweep, tmp_path)
  before = {f: (d / f).stat().st_mtime_ns for f in STAGE_FILES}
  run_experiment(configs.load_experiment(SPEC), d)
  assert {f: (d / f).stat().st_mtime_ns for f in STAGE_FILES} == before
  # another constants file is another measurement: only the measure stage runs again
  hw = tmp_path / "hw.json"
  hw.write_text(json.dumps({"energy": {"static": 1.0}}))
  run_experiment(configs.load_experiment(SPEC, {"loihi.constants": str(hw)}), d)
  after = {f: (d / f).stat().st_mtime_ns for f in STAGE_FILES}
  assert after["emulate.json"] == before["emulate.json"]
  assert after["measure.json"] > before["measure.json"]
  assert json.loads((d / "measure.json").read_text())["constants"]["energy.static"]["value"] == 1


@pytest.mark.slow
def test_emulate_stage_refuses_a_program_that_differs_from_the_model(measured_sweep, tmp_path):
  d = _base(measured_sweep, tmp_path)
  (d / "emulate.json").unlink()
  arrays = d / "program" / "arrays"
  prog = bundle_io.load(d / "program")
  path = next(
    arrays / f"{s.weights}.npy"
    for s in prog.synapses
    if (arrays / f"{s.weights}.npy").is_file() and s.source != "host"
  )  # stored dense
  np.save(path, -np.load(path))  # the group's signs flipped: a program that is not the model
  with pytest.raises(ValueError, match="differ from the `hw` model's"):
    run_experiment(configs.load_experiment(SPEC), d, only=("emulate",))


@pytest.mark.slow
def test_measure_cli_and_fit(measured_sweep, tmp_path, capsys):
  d = _base(measured_sweep, tmp_path)
  (d / "measure.json").unlink()
  main(["measure", str(d), "--prompt", "The program", "--max-new-tokens", "2"])
  out = capsys.readouterr().out
  assert "| generation |" in out and f"wrote {d / 'measure.json'}" in out
  r = json.loads((d / "measure.json").read_text())
  assert r["tokens"] == len(r["prompt"]) + 1 and r["workload"]["tokens"] == r["tokens"]
  # The published figures, 2 for the 2 free constants: a calibration, not a validation (the fit
  # itself is tested on synthetic rows in test_fit.py); a third, held out, is only predicted.
  rows = tmp_path / "rows.csv"
  rows.write_text(f"run,tokens_per_s,mj_per_token,role\n{d},59.4,70.8,\n{d},50,,holdout\n")
  fitted = tmp_path / "fitted.json"
  main(["measure", "--fit", str(rows), "--out", str(fitted)])
  out = capsys.readouterr().out
  assert out.startswith("calibrated, not validated: 2 fitted figures for 2 free constants")
  assert "| fit | tokens_per_s | 59.4 |" in out and "| holdout | tokens_per_s | 50 |" in out
  assert "after/measured" in out and f"wrote {fitted}" in out
  record = json.loads(fitted.read_text())[hardware.FIT]
  assert record["status"] == "calibrated, not validated" and record["dof"] == 0
  assert [r["role"] for r in record["rows"]] == ["fit", "holdout"]
  assert record["rms_log_residual"]["holdout"] > 0
  main(["measure", str(d), "--max-new-tokens", "2", "--constants", str(fitted),
        "--out", str(tmp_path / "m.json")])  # fmt: skip
  m = json.loads((tmp_path / "m.json").read_text())
  assert "calibrated, not validated" in m["constants"]["time.synop"]["source"]


@pytest.mark.slow
def test_paper_experiment_pipeline_on_a_small_model(tmp_path, capsys):
  d = tmp_path / "paper"
  main(["run", str(ROOT / "experiments/paper_loihi2_370m.py:smoke"), "--workdir", str(d)])
  out = capsys.readouterr().out
  assert "emulate: logits and" in out and "bit-exact with the `hw` model" in out
  assert "| generation tokens/s |" in out and "| 59.4 |" in out and "Jetson" in out
  assert "| 2048 |" in out  # the prompt-length scaling
  assert json.loads((d / "config.json").read_text())["model"]["vocab_size"] == 512  # padded
