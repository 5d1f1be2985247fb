"""Results tables from run directories, including half-written ones."""

import json
import math

import pandas as pd
import pytest

from mmfree import results, sweep
from mmfree.cli import main


def make_run(d, lr, status="done", metrics=True, stages=True):
  d.mkdir(parents=True)
  cfg = {
    "experiment": {"spec": "experiments/x.py", "overrides": {"train.lr": lr}},
    "model": {"hidden_size": 64, "scan": "associative"},
    "train": {"lr": lr, "steps": 20},
    "data": {"tokenizer": "byte"},
    "stages": ["train", "eval"],
    "data_info": {"vocab_size": 258, "corpus_meta": {"sha256": "ab" * 32, "files": [1, 2]}},
  }
  (d / "config.json").write_text(json.dumps(cfg))
  (d / "status.json").write_text(json.dumps({"status": status, "stage": "eval", "error": None}))
  if metrics:
    rows = [{"step": 10, "loss": 3.0, "tokens_per_s": 1e4}, {"step": 20, "loss": 2.5 + lr}]
    rows += [{"step": 20, "val_loss": 2.6 + lr, "val_ppl": math.exp(2.6 + lr), "val_bpb": 1.1}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (d / "metrics.jsonl").write_text(text + '{"step": 30, "lo')  # killed mid-line
  if stages:
    (d / "eval.json").write_text(
      json.dumps({"bitnet": {"loss": 2.7 + lr, "ppl": 15.0, "bpb": 1.2, "inputs": {}}})
    )  # inputs: what each output was computed from (empty: nothing to check here)
    (d / "measure.json").write_text(json.dumps({"energy": {"mj_per_token": 0.5}, "inputs": {}}))


@pytest.fixture
def sweep_dir(tmp_path):
  make_run(tmp_path / "lr=0.2-b", 0.2)
  make_run(tmp_path / "lr=0.1-a", 0.1)
  make_run(tmp_path / "lr=0.3-c", 0.3, status="running", metrics=False, stages=False)
  (tmp_path / "lr=0.4-d").mkdir()
  (tmp_path / "lr=0.4-d" / "status.json").write_text('{"status": "fail')  # half written
  (tmp_path / "notes").mkdir()
  runs = [
    {"name": n, "overrides": {"train.lr": lr}} for n, lr in [("lr=0.1-a", 0.1), ("lr=0.5-e", 0.5)]
  ]
  manifest = {"spec": "experiments/x.py", "extra_overrides": [], "runs": runs}
  (tmp_path / sweep.MANIFEST).write_text(json.dumps(manifest))
  return tmp_path


def test_load_a_sweep_directory(sweep_dir):
  df = results.load(sweep_dir)
  assert list(df["name"]) == ["lr=0.1-a", "lr=0.2-b", "lr=0.3-c", "lr=0.4-d", "lr=0.5-e"]
  assert list(df["status"]) == ["done", "done", "running", "missing", "missing"]
  assert list(df["train.lr"].iloc[[0, 1, 2, 4]]) == [0.1, 0.2, 0.3, 0.5]
  a = df.iloc[0]
  assert a["model.hidden_size"] == 64 and a["stages"] == ("train", "eval")
  assert a["experiment.spec"] == "experiments/x.py" and a["data_info.vocab_size"] == 258
  assert a["steps"] == 20 and a["loss"] == pytest.approx(2.6) and a["val_bpb"] == 1.1
  assert a["tokens_per_s"] == 1e4 and a["eval.bitnet.loss"] == pytest.approx(2.8)
  assert a["measure.energy.mj_per_token"] == 0.5 and a["path"] == str(sweep_dir / "lr=0.1-a")
  assert not [c for c in df.columns if c.startswith(("experiment.overrides", "data_info.corpus"))]
  assert df["val_loss"].isna().tolist() == [False, False, True, True, True]


def test_load_a_run_directory_and_an_empty_one(tmp_path):
  make_run(tmp_path / "run", 0.1)
  df = results.load(tmp_path / "run")
  assert len(df) == 1 and df["name"][0] == "run" and df["status"][0] == "done"
  (tmp_path / "empty").mkdir()
  assert results.load(tmp_path / "empty").empty
  with pytest.raises(FileNotFoundError, match="not a directory"):
    results.load(tmp_path / "nowhere")


def test_markdown_shows_what_varies_and_the_key_metrics(sweep_dir):
  df = results.load(sweep_dir)
  table = results.to_markdown(df)
  header = table.splitlines()[0]
  for col in ("name", "status", "train.lr", "steps", "loss", "val_loss", "eval.bitnet.loss"):
    assert f" {col} " in header
  assert "model.hidden_size" not in header and "tokens_per_s" not in header
  assert len(table.splitlines()) == 2 + len(df)
  assert "| name" in results.to_markdown(df, ["name", "train.lr"])
  with pytest.raises(ValueError, match="no columns"):
    results.to_markdown(df, ["nope"])


def test_report_prints_a_table_and_writes_csv(sweep_dir, tmp_path, capsys):
  main(["report", str(sweep_dir)])
  out = capsys.readouterr().out
  assert "| lr=0.1-a" in out and "failed" not in out
  csv = pd.read_csv(sweep_dir / "results.csv")
  assert len(csv) == 5 and "measure.energy.mj_per_token" in csv.columns

  out = tmp_path / "out.csv"
  main(["report", str(sweep_dir), "--csv", str(out), "--columns", "name,val_bpb"])
  assert capsys.readouterr().out.splitlines()[0].split() == ["|", "name", "|", "val_bpb", "|"]
  assert out.exists()
  with pytest.raises(SystemExit, match="unrecognized"):
    main(["report", str(sweep_dir), "--config.train.lr=1"])
