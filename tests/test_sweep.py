"""The sweep runner, with a stand-in for `mmfree run` that honours its run-directory contract."""

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mmfree import results, sweep
from mmfree.configs import parse_overrides

# Writes config.json (the resolved config), status.json running -> done, metrics.jsonl, eval.json;
# appends to invocations.txt and times.txt so tests can count runs and measure concurrency.
STAND_IN = textwrap.dedent("""
  import ast, json, os, sys, time
  from pathlib import Path

  args = sys.argv[1:]
  assert args[0] == "run", args
  run_dir = Path(args[args.index("--workdir") + 1])
  overrides = {}
  for a in args:
    if a.startswith("--config."):
      key, text = a[len("--config."):].split("=", 1)
      try:
        overrides[key] = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        overrides[key] = text

  def write(name, obj):
    (run_dir / (name + ".tmp")).write_text(json.dumps(obj))
    (run_dir / (name + ".tmp")).replace(run_dir / name)

  def status(s, error=None):
    write("status.json", {"status": s, "stage": "train", "error": error, "updated": "now"})

  run_dir.mkdir(parents=True, exist_ok=True)
  with open(run_dir / "invocations.txt", "a") as f:
    f.write(f"{os.getpid()}\\n")
  if (run_dir / "status.json").exists():
    if json.loads((run_dir / "status.json").read_text())["status"] == "done":
      sys.exit(0)
  from mmfree import configs
  cfg = configs.load_experiment(args[1], overrides).to_dict()
  cfg["data_info"] = {"vocab_size": 258, "corpus_meta": {"sha256": "ab"}}
  write("config.json", cfg)
  status("running")
  t0 = time.time()
  time.sleep(float(os.environ.get("STAND_IN_SLEEP", "0.5")))
  lr = cfg["train"]["lr"]
  if lr == -1:
    sys.exit(3)  # dies without saying why
  if lr == -2:
    status("failed", "lr must be positive")
    sys.exit(1)
  with open(run_dir / "metrics.jsonl", "a") as f:
    for step in (1, 2, 3):
      f.write(json.dumps({"step": step, "loss": 5.0 - lr * step}) + "\\n")
    f.write(json.dumps({"step": 3, "val_loss": 4.0 - lr, "val_ppl": 50.0, "val_bpb": 2.0}) + "\\n")
  evals = {"bitnet": {"loss": 4.0 - lr, "ppl": 50.0, "bpb": 2.0, "tokens": 100, "inputs": {}}}
  write("eval.json", evals)
  with open(run_dir / "times.txt", "a") as f:
    f.write(f"{t0} {time.time()}\\n")
  status("done")
""")

ROOT = Path(__file__).resolve().parents[1]
SPEC = str(ROOT / "experiments/tiny.py")
POINTS = [{"train.lr": lr, "model.hidden_size": h} for lr in (0.1, 0.2) for h in (16, 32)]


def dirs_of(work, points=POINTS, extra=None, spec=SPEC) -> list:
  """The run directories of a sweep's points, in order (named by their resolved configs)."""
  return [r.dir for r in sweep.plan(spec, work, extra, points=points, write=False)]


@pytest.fixture
def stand_in(tmp_path):
  path = tmp_path / "stand_in.py"
  path.write_text(STAND_IN)
  return [sys.executable, str(path)]


def invocations(run_dir) -> int:
  path = run_dir / "invocations.txt"
  return len(path.read_text().split()) if path.exists() else 0


def test_run_names_are_resolved_configs_readable_and_stable(tmp_path):
  base = sweep.plan(SPEC, tmp_path, points=[{}], write=False)[0]
  assert base.name.startswith("base-") and len(base.name.rsplit("-", 1)[1]) == 8
  # the default value of a key is no override at all: one point, one run
  same = sweep.plan(SPEC, tmp_path, points=[{}, {"quant.act_bits": 8}], write=False)
  assert [r.name for r in same] == [base.name]
  names = [r.name for r in sweep.plan(SPEC, tmp_path, points=POINTS, write=False)]
  assert len(set(names)) == 4 and names[0].startswith("hidden_size=16,lr=0.1-")
  plan = f"sweep.plan({SPEC!r}, {str(tmp_path)!r}, points={POINTS!r}, write=False)"
  code = f"from mmfree import sweep; print({plan}[0].name)"
  other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert other.stdout.strip().splitlines()[-1] == names[0]
  odd = sweep.plan(SPEC, tmp_path, points=[{"data.path": "/a b/c*?", "data.source": "text"}],
                   write=False)[0].name  # fmt: skip
  assert "/" not in odd and " " not in odd and len(odd) <= 90


@pytest.mark.parametrize("value", [0.001, -1, "associative", "1", "None", True, None, ("a", "b")])
def test_override_args_read_back_through_the_cli_parser(value):
  back = parse_overrides([sweep.override_arg("train.x", value)])
  assert back == {"train.x": value} and type(back["train.x"]) is type(value)
  assert sweep.override_arg("model.scan", "associative") == "--config.model.scan=associative"
  with pytest.raises(ValueError, match="command line"):
    sweep.override_arg("train.x", object())


def test_dry_run_lists_runs_and_runs_nothing(tmp_path, stand_in, capsys):
  work = tmp_path / "sweep"
  s = sweep.run_sweep(SPEC, work, 2, dry_run=True, command_prefix=stand_in, points=POINTS)
  assert s == {"done": 0, "failed": 0, "skipped": 0, "stale": 0}
  out = capsys.readouterr().out
  assert all(d.name in out for d in dirs_of(work)) and out.count("--config.train.lr=") == 4
  assert not work.exists()


def test_sweep_runs_at_most_n_at_a_time_and_skips_done_runs(tmp_path, stand_in):
  work = tmp_path / "sweep"
  extra = {"train.steps": 3}
  s = sweep.run_sweep(SPEC, work, 2, extra, command_prefix=stand_in, points=POINTS)
  assert s == {"done": 4, "failed": 0, "skipped": 0, "stale": 0}
  dirs = dirs_of(work, extra=extra)
  spans = [tuple(map(float, (d / "times.txt").read_text().split())) for d in dirs]
  assert max(sum(a <= t < b for a, b in spans) for t, _ in spans) == 2
  manifest = json.loads((work / sweep.MANIFEST).read_text())
  assert manifest["spec"] == SPEC and manifest["extra_overrides"] == extra
  assert [r["name"] for r in manifest["runs"]] == [d.name for d in dirs]
  df = results.load(work)
  assert len(df) == 4 and set(df["status"]) == {"done"} and set(df["train.steps"]) == {3}

  s = sweep.run_sweep(SPEC, work, 2, extra, command_prefix=stand_in, points=POINTS)
  assert s == {"done": 0, "failed": 0, "skipped": 4, "stale": 0}
  assert all(invocations(d) == 1 for d in dirs)
  with pytest.raises(ValueError, match="another --workdir"):
    sweep.plan(str(ROOT / "experiments/quant_ablation.py"), work, extra, points=POINTS)
  with pytest.raises(ValueError, match="another --workdir"):
    sweep.plan(SPEC, work, {}, points=POINTS)


EXPERIMENT = """
from mmfree import configs

def get_config(arg=None):
  c = configs.base_config("tiny")
  c.train.lr = LR
  return c

def get_sweep(arg=None):
  return [{"train.lr": lr} for lr in (-1, -2, 0.1, 0.2)]
"""


def test_failed_runs_are_recorded_and_the_sweep_carries_on(tmp_path, stand_in, capsys, monkeypatch):
  experiment, work = tmp_path / "exp.py", tmp_path / "sweep"
  experiment.write_text(EXPERIMENT.replace("LR", "0.01"))
  monkeypatch.setattr(sweep, "default_command", lambda: stand_in)
  p = argparse.ArgumentParser()
  sweep.add_parser(p.add_subparsers())
  argv = ["sweep", str(experiment), "--workdir", str(work), "--workers", "2"]
  args, extra = p.parse_known_args([*argv, "--config.train.steps=3"])
  assert args.fn(args, extra) == 1  # some run failed

  points = [{"train.lr": lr} for lr in (-1, -2, 0.1, 0.2)]
  lrs = [p["train.lr"] for p in points]
  dirs = dict(zip(lrs, dirs_of(work, points, {"train.steps": 3}, str(experiment)), strict=True))
  status = {lr: sweep.read_json(d / "status.json") for lr, d in dirs.items()}
  assert status[-1]["status"] == "failed" and status[-1]["error"] == "exit code 3, see run.log"
  assert status[-2]["status"] == "failed" and status[-2]["error"] == "lr must be positive"
  assert status[0.1]["status"] == status[0.2]["status"] == "done"
  assert "FAILED" in capsys.readouterr().out
  assert (dirs[-1] / "run.log").read_text().startswith("\n=== ")
  assert json.loads((dirs[0.1] / "config.json").read_text())["train"]["steps"] == 3

  assert args.fn(args, extra) == 1  # a rerun retries only the failed runs
  assert [invocations(d) for d in dirs.values()] == [2, 2, 1, 1]
  with pytest.raises(ValueError, match="unrecognized argument"):
    args.fn(args, ["--lr=0.1"])


DRIVER = textwrap.dedent("""
  import json, sys
  from mmfree.sweep import run_sweep
  spec, work, prefix, points = sys.argv[1:]
  run_sweep(spec, work, 2, command_prefix=json.loads(prefix), points=json.loads(points))
""")


def start_driver(tmp_path, work, stand_in, env=None):
  driver = tmp_path / "driver.py"
  driver.write_text(DRIVER)
  cmd = [sys.executable, str(driver), SPEC, str(work), json.dumps(stand_in), json.dumps(POINTS)]
  env = {**os.environ, **(env or {})}
  with (tmp_path / "driver.log").open("w") as log:  # the driver keeps its own copy
    return subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, env=env)


def wait_for(cond, timeout=30.0):
  t0 = time.monotonic()
  while not cond():
    assert time.monotonic() - t0 < timeout, "timed out"
    time.sleep(0.05)


def test_killed_sweep_reruns_only_the_missing_runs(tmp_path, stand_in):
  work = tmp_path / "sweep"
  dirs = dirs_of(work)
  proc = start_driver(tmp_path, work, stand_in)
  wait_for(lambda: any(sweep.run_status(d) == "done" for d in dirs))
  os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its runs, as a machine crash would
  proc.wait()
  time.sleep(0.2)
  finished = [d for d in dirs if sweep.run_status(d) == "done"]
  before = [invocations(d) for d in dirs]
  assert 1 <= len(finished) < 4

  s = sweep.run_sweep(SPEC, work, 2, command_prefix=stand_in, points=POINTS)
  assert s == {"done": 4 - len(finished), "failed": 0, "skipped": len(finished), "stale": 0}
  after = [invocations(d) for d in dirs]
  assert after == [n + (d not in finished) for n, d in zip(before, dirs, strict=True)]
  df = results.load(work)
  assert len(df) == 4 and df["name"].is_unique and set(df["status"]) == {"done"}
  assert sorted(df["name"]) == sorted(d.name for d in dirs)


def test_sigterm_stops_the_runs_too(tmp_path, stand_in):
  work = tmp_path / "sweep"
  proc = start_driver(tmp_path, work, stand_in, {"STAND_IN_SLEEP": "30"})
  dirs = dirs_of(work)
  wait_for(lambda: sum(sweep.run_status(d) == "running" for d in dirs) == 2)
  pids = [
    int(pid) for d in dirs if d.exists() for pid in (d / "invocations.txt").read_text().split()
  ]
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) != 0  # _stop alone may take 10 s; CI machines are loaded
  for pid in pids:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


def test_editing_the_experiment_file_marks_its_done_runs_stale(tmp_path, stand_in, capsys):
  experiment, work = tmp_path / "exp.py", tmp_path / "sweep"
  two = EXPERIMENT.replace("(-1, -2, 0.1, 0.2)", "(0.1, 0.2)")
  experiment.write_text(two.replace("LR", "0.01"))
  s = sweep.run_sweep(str(experiment), work, 2, command_prefix=stand_in)
  assert s == {"done": 2, "failed": 0, "skipped": 0, "stale": 0}
  old = dirs_of(work, None, None, str(experiment))
  assert all(sweep.run_status(d) == "done" for d in old)

  # a done run whose config.json is not what the experiment resolves to now: stale, rerun
  cfg = json.loads((old[0] / "config.json").read_text())
  cfg["train"]["warmup_steps"] = 7
  (old[0] / "config.json").write_text(json.dumps(cfg))
  capsys.readouterr()
  s = sweep.run_sweep(str(experiment), work, 2, dry_run=True, command_prefix=stand_in)
  assert s == {"done": 0, "failed": 0, "skipped": 1, "stale": 1}
  assert "1 stale" in capsys.readouterr().out

  # an edited get_config: every point is another config, the finished runs are listed as stale
  experiment.write_text(
    two.replace("LR", "0.01").replace("return c", "c.train.b2 = 0.9\n  return c")
  )
  s = sweep.run_sweep(str(experiment), work, 2, dry_run=True, command_prefix=stand_in)
  out = capsys.readouterr().out
  assert s == {"done": 0, "failed": 0, "skipped": 0, "stale": 0}
  assert "2 runs here are no point of the sweep now (stale, not counted)" in out
  assert all(d.name in out for d in old)
  assert not set(dirs_of(work, None, None, str(experiment))) & set(old)
