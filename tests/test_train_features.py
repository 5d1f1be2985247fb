"""Training options: gradient accumulation, init_from, wandb offline, eval, tokenizer training."""

import json
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import mmfree
from mmfree import configs
from mmfree.algorithms import train as loop
from mmfree.cli import main
from mmfree.models import MMfreeLM, preset
from mmfree.run import run_experiment

SMOKE = str(Path(__file__).parent.parent / "experiments/tiny.py:smoke")


def test_gradient_accumulation_matches_the_full_batch():
  graphdef, params = nnx.split(MMfreeLM(preset("tiny"), nnx.Rngs(0)), nnx.Param)
  tx = optax.sgd(1.0)  # the update is the gradient itself
  batch = jax.random.randint(jax.random.key(0), (8, 17), 0, 258)
  outs = [loop.make_steps(graphdef, tx, k)[0](params, tx.init(params), batch) for k in (1, 2, 4)]
  for p, _, loss, gnorm in outs[1:]:
    np.testing.assert_allclose(loss, outs[0][2], rtol=1e-5)
    np.testing.assert_allclose(gnorm, outs[0][3], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-4), p, outs[0][0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  d = tmp_path_factory.mktemp("base")
  run_experiment(configs.load_experiment(SMOKE, {"tracking.wandb": "offline"}), d)
  return d


def test_wandb_offline_logs_into_the_run_directory(trained):
  assert list((trained / "wandb").glob("offline-run-*")), "no offline wandb run written"
  assert (trained / "metrics.jsonl").read_text()  # the JSONL record is kept regardless


def test_fine_tune_from_a_run_directory_starts_from_its_weights(trained, tmp_path):
  # The architecture comes from init_from, whatever the experiment's model section says.
  overrides = {"train.init_from": str(trained), "train.lr": 0.0, "train.steps": 2,
               "stages": ("train",), "model.hidden_size": 48}  # fmt: skip
  exp = configs.load_experiment(SMOKE, overrides)
  run_experiment(exp, tmp_path)
  run_experiment(exp, tmp_path)  # a rerun finds the same experiment and has nothing to do
  a, b = mmfree.load(trained), mmfree.load(tmp_path)
  tokens = np.arange(1, 20)[None] % a.config.vocab_size
  np.testing.assert_array_equal(a.logits(tokens), b.logits(tokens))  # lr 0: unchanged weights
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["train"]["init_from"] == str(trained)
  assert saved["model"]["hidden_size"] == a.config.hidden_size == 32


def test_eval_cli_reports_each_precision(trained, capsys):
  main(["eval", str(trained), "--precision", "float,bitnet", "--seq-len", "32",
        "--data.tokenizer=byte"])  # fmt: skip
  lines = capsys.readouterr().out.strip().splitlines()
  assert [ln.split()[0] for ln in lines] == ["float", "bitnet"]
  assert all("bpb" in ln for ln in lines)
  ev = json.loads((trained / "eval.json").read_text())
  assert np.isfinite(ev["bitnet"]["bpb"]) and ev["bitnet"]["precision"] == "bitnet"


def test_tokenizer_train_cli_on_a_text_directory(tmp_path):
  docs = tmp_path / "docs"
  docs.mkdir()
  for i in range(20):
    (docs / f"{i}.txt").write_text(f"Document {i} is about rivers, hills and the sea. " * 20)
  main(["tokenizer", "train", "--vocab-size", "300", "--out", str(tmp_path / "tok"),
        "--data.source=text", f"--data.path={docs}"])  # fmt: skip
  tok = mmfree.data.tokenizers.load_tokenizer(tmp_path / "tok")
  assert tok.vocab_size == 300 and tok.decode(tok.encode("rivers and hills")) == "rivers and hills"
