"""Agreement with lm-evaluation-harness itself: lm-eval running the mmfree adapter on local task
definitions (its YAML over the JSONL files, through `include_path`) and `mmfree eval --tasks`
choose the same answer on every example and report the same `acc` / `acc_norm`; the adapter's
rolling log-likelihood and generation against the model's own `token_nll` and `generate`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from mmfree.algorithms.load import load
from mmfree.cli import main
from mmfree.tasks import harness

sys.path.insert(0, str(Path(__file__).parent))  # the lava-nc wheel owns the name `tests`
import shared_data  # noqa: E402

SHARED = shared_data.EVAL
N = 200  # examples of each task
TASKS = ("arc_easy", "piqa", "winogrande")


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory):
  """(JSONL directory, lm-eval include_path) of the first N examples of each task."""
  d = tmp_path_factory.mktemp("tasks")
  for name in TASKS:
    lines = (SHARED / f"{name}.jsonl").read_text().splitlines()[:N]
    (d / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    harness.local_task_yaml(name, d / f"{name}.jsonl", d / "yaml")
  return d, d / "yaml"


@pytest.mark.slow
def test_lm_eval_and_mmfree_eval_agree(calibrated_run, local_tasks, tmp_path, monkeypatch):
  monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("DISABLE_MULTIPROC", "1")
  tasks_dir, yaml_dir = local_tasks
  run = shutil.copytree(calibrated_run, tmp_path / "run")
  main(["eval", str(run), "--tasks", ",".join(TASKS), "--tasks-dir", str(tasks_dir),
        "--precision", "bitnet"])  # fmt: skip
  ours = json.loads((run / "tasks.json").read_text())["precisions"]["bitnet"]
  lm = harness.MMfreeLM(pretrained=str(run), precision="bitnet", batch_size=16)
  manager = TaskManager(include_path=str(yaml_dir))
  theirs = simple_evaluate(model=lm, tasks=[f"mmfree_local_{t}" for t in TASKS],
                           task_manager=manager, log_samples=True)  # fmt: skip
  for name in TASKS:
    task = f"mmfree_local_{name}"
    samples = sorted(theirs["samples"][task], key=lambda s: s["doc_id"])
    assert len(samples) == N
    pred = [int(np.argmax([float(ll) for ll, _ in s["filtered_resps"]])) for s in samples]
    assert pred == ours["examples"][name]["pred"], name
    got = theirs["results"][task]
    for m in ("acc", "acc_norm") if name != "winogrande" else ("acc",):
      assert got[f"{m},none"] == pytest.approx(ours["metrics"][name][m], abs=1e-12), (name, m)
      assert got[f"{m}_stderr,none"] == pytest.approx(ours["metrics"][name][f"{m}_stderr"]), m


def _instances(kind: str, args: list[tuple]) -> list[Instance]:
  return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_rolling_loglikelihood_is_the_texts_token_nll(calibrated_run):
  L = 24  # max_length: the 39-byte text takes two of lm-eval's windows, the 6-byte one one
  lm = harness.MMfreeLM(pretrained=str(calibrated_run), precision="bitnet", max_length=L)
  texts = ["The quick brown fox jumps over the dog.", "Short."]
  got = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(t,) for t in texts]))
  model = load(calibrated_run, "bitnet")
  for text, ll in zip(texts, got, strict=True):
    ids = model.tokenizer.encode(text)
    n = len(ids)
    # window 1: the first L tokens after the prefix token; window 2: the rest, each conditioned
    # on the L tokens before the text's end (a recurrent model restarts from zero state)
    want = -model.token_nll(np.asarray([[lm.eot_token_id, *ids[:L]]]))[0].sum()
    if n > L:
      want -= model.token_nll(np.asarray([ids[n - L - 1 :]]))[0][-(n - L) :].sum()
    assert ll == pytest.approx(float(want), rel=1e-4)


def test_generate_until_is_greedy_generation_cut_at_until(calibrated_run):
  lm = harness.MMfreeLM(pretrained=str(calibrated_run), precision="bitnet")
  model = load(calibrated_run, "bitnet")
  prompt = "Once upon a time"
  ids = model.tokenizer.encode(prompt)
  full = model.tokenizer.decode(model.generate(np.asarray(ids), 12, temperature=0.0).tolist())
  stop = full[3:5]  # a string the greedy continuation contains
  got = lm.generate_until(_instances("generate_until", [
    (prompt, {"until": [stop], "max_gen_toks": 12}), (prompt, {"max_gen_toks": 12})]))  # fmt: skip
  assert got[0] == full.split(stop)[0]
  eos = model.tokenizer.decode([lm.eot_token_id])  # the default `until` ("" for bytes: none)
  assert got[1] == (full.split(eos)[0] if eos else full)


@pytest.mark.slow
def test_mmfree_lm_eval_command(calibrated_run, local_tasks, tmp_path):
  """`mmfree lm-eval` is lm-eval's own command line with the mmfree model registered."""
  _, yaml_dir = local_tasks
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "mmfree.cli", "lm-eval", "--model_args",
         f"pretrained={calibrated_run},precision=bitnet", "--tasks", "mmfree_local_piqa",
         "--include_path", str(yaml_dir), "--limit", "4", "--batch_size", "4",
         "--output_path", str(out)]  # fmt: skip
  env = {"HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
         "PATH": "/usr/bin:/bin"}  # fmt: skip
  p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  results = json.loads(next(out.rglob("results_*.json")).read_text())
  assert results["results"]["mmfree_local_piqa"]["acc,none"] in (0, 0.25, 0.5, 0.75, 1)
  assert "mmfree" in results["config"]["model"]
