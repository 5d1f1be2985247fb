"""The first training run, end to end on the embedded corpus, and the CLI around it."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

import mmfree
from mmfree.cli import main
from mmfree.store.metrics import read_jsonl

SMOKE = str(Path(__file__).parent.parent / "experiments/tiny.py:smoke")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("run")
  overrides = {
    "model.hidden_size": 64, "model.num_hidden_layers": 2, "model.intermediate_size": 128,
    "train.steps": 40, "train.batch_size": 8, "train.lr": 0.01, "train.warmup_steps": 5,
    "train.log_every": 5, "train.eval_every": 20, "train.eval_windows": 16,
  }  # fmt: skip
  main(["train", "--workdir", str(d), "--config", SMOKE,
        *[f"--config.{k}={v}" for k, v in overrides.items()]])  # fmt: skip
  return d


def test_training_writes_a_run_directory_and_learns(run_dir):
  cfg = json.loads((run_dir / "config.json").read_text())
  assert cfg["model"]["vocab_size"] == 258 and cfg["train"]["steps"] == 40
  meta = cfg["data_info"]["corpus_meta"]
  assert meta["python_version"] and len(meta["sha256"]) == 64
  rows = read_jsonl(run_dir / "metrics.jsonl")
  losses = [r["loss"] for r in rows if "loss" in r]
  vals = [r["val_loss"] for r in rows if "val_loss" in r]
  assert len(losses) == 8 and len(vals) == 2
  assert all(r["tokens_per_s"] > 0 for r in rows if "loss" in r)
  # From ln(258) ≈ 5.55 at init to below the byte unigram entropy in 40 small steps.
  assert losses[0] > 4.5 and vals[-1] < cfg["data_info"]["unigram_entropy_nats"]
  assert vals[-1] < vals[0]
  row = [r for r in rows if "val_loss" in r][-1]
  assert row["val_ppl"] == pytest.approx(math.exp(row["val_loss"]), rel=1e-6)


def test_trained_run_loads_and_generates(run_dir, capsys):
  lm = mmfree.load(run_dir)
  assert lm.tokenizer is not None and lm.config.vocab_size == 258
  ids = lm.tokenizer.encode("The ")
  new = lm.generate(ids, 10, temperature=0, stop_at_eos=False)
  assert new.shape == (10,) and np.all((new >= 0) & (new < 258))
  main(["generate", str(run_dir), "--prompt", "The ", "--max-new-tokens", "8", "--seed", "1"])
  out, err = capsys.readouterr()
  assert out.startswith("The ") and "tokens/s" in err
  with pytest.raises(SystemExit, match="unrecognized arguments"):
    main(["generate", str(run_dir), "--promt", "typo"])


def test_generate_without_tokenizer_says_what_is_missing(run_dir, tmp_path):
  import shutil

  bare = tmp_path / "bare"
  shutil.copytree(run_dir, bare)
  (bare / "tokenizer_byte.json").unlink()
  with pytest.raises(SystemExit, match="tokenizer"):
    main(["generate", str(bare), "--prompt", "x"])
