"""The sweep runner, with a stand-in for `mmfree run` that honours its run-directory contract."""

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mmfree import results, sweep
from mmfree.configs import parse_overrides

# Writes config.json (overrides merged), status.json running -> done, metrics.jsonl, eval.json;
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
  cfg = {"model": {"hidden_size": 32, "scan": "associative"}, "train": {"lr": 0.01, "steps": 3}}
  for key, v in overrides.items():
    *path, last = key.split(".")
    node = cfg
    for p in path:
      node = node.setdefault(p, {})
    node[last] = v
  cfg["experiment"] = {"spec": args[1], "overrides": overrides}
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
  write("eval.json", {"bitnet": {"loss": 4.0 - lr, "ppl": 50.0, "bpb": 2.0, "tokens": 100}})
  with open(run_dir / "times.txt", "a") as f:
    f.write(f"{t0} {time.time()}\\n")
  status("done")
""")

SPEC = "experiments/standin.py"
POINTS = [{"train.lr": lr, "model.hidden_size": h} for lr in (0.1, 0.2) for h in (16, 32)]


@pytest.fixture
def stand_in(tmp_path):
  path = tmp_path / "stand_in.py"
  path.write_text(STAND_IN)
  return [sys.executable, str(path)]


def invocations(run_dir) -> int:
  path = run_dir / "invocations.txt"
  return len(path.read_text().split()) if path.exists() else 0


def test_run_name_is_stable_readable_and_distinct():
  o = {"train.lr": 0.001, "model.hidden_size": 64}
  name = sweep.run_name(o)
  assert name.startswith("hidden_size=64,lr=0.001-") and len(name.rsplit("-", 1)[1]) == 8
  assert sweep.run_name(dict(reversed(o.items()))) == name
  code = f"from mmfree.sweep import run_name; print(run_name({o!r}))"
  other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert other.stdout.strip() == name
  assert sweep.run_name({}).startswith("base-")
  names = {sweep.run_name(p) for p in POINTS} | {sweep.run_name({"model.lr": 0.1})}
  assert len(names) == len(POINTS) + 1
  odd = sweep.run_name({"data.path": "/a b/c*?", "x": "y" * 500})
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
  assert s == {"done": 0, "failed": 0, "skipped": 0}
  out = capsys.readouterr().out
  assert all(sweep.run_name(p) in out for p in POINTS) and out.count("--config.train.lr=") == 4
  assert not work.exists()


def test_sweep_runs_at_most_n_at_a_time_and_skips_done_runs(tmp_path, stand_in):
  work = tmp_path / "sweep"
  extra = {"train.steps": 3}
  s = sweep.run_sweep(SPEC, work, 2, extra, command_prefix=stand_in, points=POINTS)
  assert s == {"done": 4, "failed": 0, "skipped": 0}
  spans = [
    tuple(map(float, (work / sweep.run_name(p) / "times.txt").read_text().split())) for p in POINTS
  ]
  assert max(sum(a <= t < b for a, b in spans) for t, _ in spans) == 2
  manifest = json.loads((work / sweep.MANIFEST).read_text())
  assert manifest["spec"] == SPEC and manifest["extra_overrides"] == extra
  assert [r["name"] for r in manifest["runs"]] == [sweep.run_name(p) for p in POINTS]
  df = results.load(work)
  assert len(df) == 4 and set(df["status"]) == {"done"} and set(df["train.steps"]) == {3}

  s = sweep.run_sweep(SPEC, work, 2, extra, command_prefix=stand_in, points=POINTS)
  assert s == {"done": 0, "failed": 0, "skipped": 4}
  assert all(invocations(work / sweep.run_name(p)) == 1 for p in POINTS)
  with pytest.raises(ValueError, match="another --workdir"):
    sweep.plan("experiments/other.py", work, extra, points=POINTS)
  with pytest.raises(ValueError, match="another --workdir"):
    sweep.plan(SPEC, work, {}, points=POINTS)


EXPERIMENT = """
def get_config(arg=None):
  raise AssertionError("the sweep itself never builds a config")

def get_sweep(arg=None):
  return [{"train.lr": lr} for lr in (-1, -2, 0.1, 0.2)]
"""


def test_failed_runs_are_recorded_and_the_sweep_carries_on(tmp_path, stand_in, capsys, monkeypatch):
  experiment, work = tmp_path / "exp.py", tmp_path / "sweep"
  experiment.write_text(EXPERIMENT)
  monkeypatch.setattr(sweep, "default_command", lambda: stand_in)
  p = argparse.ArgumentParser()
  sweep.add_parser(p.add_subparsers())
  argv = ["sweep", str(experiment), "--workdir", str(work), "--workers", "2"]
  args, extra = p.parse_known_args([*argv, "--config.train.steps=3"])
  assert args.fn(args, extra) == 1  # some run failed

  dirs = {lr: work / sweep.run_name({"train.lr": lr}) for lr in (-1, -2, 0.1, 0.2)}
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
  dirs = [work / sweep.run_name(p) for p in POINTS]
  proc = start_driver(tmp_path, work, stand_in)
  wait_for(lambda: any(sweep.run_status(d) == "done" for d in dirs))
  os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its runs, as a machine crash would
  proc.wait()
  time.sleep(0.2)
  finished = [d for d in dirs if sweep.run_status(d) == "done"]
  before = [invocations(d) for d in dirs]
  assert 1 <= len(finished) < 4

  s = sweep.run_sweep(SPEC, work, 2, command_prefix=stand_in, points=POINTS)
  assert s == {"done": 4 - len(finished), "failed": 0, "skipped": len(finished)}
  after = [invocations(d) for d in dirs]
  assert after == [n + (d not in finished) for n, d in zip(before, dirs, strict=True)]
  df = results.load(work)
  assert len(df) == 4 and df["name"].is_unique and set(df["status"]) == {"done"}
  assert sorted(df["name"]) == sorted(d.name for d in dirs)


def test_sigterm_stops_the_runs_too(tmp_path, stand_in):
  work = tmp_path / "sweep"
  proc = start_driver(tmp_path, work, stand_in, {"STAND_IN_SLEEP": "30"})
  dirs = [work / sweep.run_name(p) for p in POINTS]
  wait_for(lambda: sum(sweep.run_status(d) == "running" for d in dirs) == 2)
  pids = [
    int(pid) for d in dirs if d.exists() for pid in (d / "invocations.txt").read_text().split()
  ]
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) != 0  # _stop alone may take 10 s; CI machines are loaded
  for pid in pids:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)
