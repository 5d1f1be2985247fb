"""`mmfree search`: a real smoke search, killed and resumed, its report and files; the checks of
`get_search`; the choice of the front and the best design on synthetic studies."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the lava-nc wheel owns the name `tests`
import test_notebooks  # noqa: E402

from mmfree import configs, pareto, results, search, sweep  # noqa: E402
from mmfree.cli import main  # noqa: E402

ROOT = Path(__file__).parent.parent
SPEC = str(ROOT / "experiments/quant_ablation.py:smoke")
TINY = str(ROOT / "experiments/tiny.py:smoke")
TRIAL_LINE = re.compile(r"^trial \d+ .* mJ/token", re.M)


def _command(work: Path, model: Path) -> list[str]:
  """3 trials of the smoke space, 2 at a time, on a trained model's weights (no training)."""
  return [sys.executable, "-m", "mmfree.cli", "search", SPEC, "--workdir", str(work),
          "--trials", "3", "--workers", "2", f"--config.train.init_from={model}",
          "--config.train.steps=0", "--config.eval.precisions=('hw',)"]  # fmt: skip


def _trials(work: Path, state: str) -> dict:
  """{trial number: trial} of the search in `work` in `state` (COMPLETE, RUNNING, ...)."""
  study = pareto.open_study(work, sweep.read_json(work / pareto.MANIFEST)["study"])
  return {t.number: t for t in study.get_trials(states=(optuna.trial.TrialState[state],))}


def _runs(work: Path) -> dict:
  """{trial number: run name} of the completed trials."""
  return {n: t.user_attrs["run"] for n, t in _trials(work, "COMPLETE").items()}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
  """The smoke experiment's own 1-layer model, trained once: the trials take its weights."""
  d = tmp_path_factory.mktemp("model")
  main(["train", "--config", SPEC, "--workdir", str(d)])
  return d


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, model):
  """A search killed (SIGKILL, with its runs) once its first trial completed, then rerun to the
  end; (workdir, {run name: measure.json mtime} of the runs finished before the kill, the
  trials left running, the rerun's output)."""
  work = tmp_path_factory.mktemp("search") / "s"
  cmd = _command(work, model)
  log = work.parent / "first.log"
  with log.open("w") as out:
    first = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while not TRIAL_LINE.search(log.read_text()):
      assert first.poll() is None, f"the search ended before a trial completed:\n{log.read_text()}"
      assert time.monotonic() < deadline, log.read_text()
      time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the search and its runs, as a lost machine would
    first.wait()
  before = {name: (work / name / "measure.json").stat().st_mtime_ns
            for name in _runs(work).values()}  # fmt: skip
  running = set(_trials(work, "RUNNING"))
  rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  return work, before, running, rerun.stdout


@pytest.mark.slow
@pytest.mark.xdist_group("search")
def test_a_killed_search_resumes_without_repeating_finished_trials(resumed, model):
  work, before, running, _ = resumed
  assert before and len(_runs(work)) == 3
  # the trials running at the kill: failed, and their designs completed by the rerun
  assert set(_trials(work, "FAIL")) == running
  resumes = {t.user_attrs.get("resumes") for t in _trials(work, "COMPLETE").values()}
  assert running <= resumes
  for name, mtime in before.items():  # finished before the kill: not run again
    assert (work / name / "measure.json").stat().st_mtime_ns == mtime
    assert (work / name / sweep.LOG).read_text().count("\n=== ") == 1
  again = subprocess.run(_command(work, model), capture_output=True, text=True,
                         timeout=300, check=True)  # fmt: skip
  assert not TRIAL_LINE.search(again.stdout) and len(_runs(work)) == 3  # N reached: nothing runs


@pytest.mark.slow
@pytest.mark.xdist_group("search")
def test_search_trials_are_runs_and_the_report_writes_the_best_design(resumed, capsys):
  work, _, _, out = resumed
  runs = _runs(work)
  assert all(sweep.run_status(work / name) == "done" for name in runs.values())
  df = results.load(work)
  assert set(runs.values()) <= set(df[df["status"] == "done"]["name"])
  assert df["eval.hw.loss"].notna().all() and "measure.resources.chips" in df
  assert "Pareto front" in out  # the search ends with its report
  done = _trials(work, "COMPLETE").values()
  base = next(t for t in done if t.user_attrs.get("base"))
  for t in done:  # the sampler's constraint: how far beyond the 1% budget against the base
    assert t.user_attrs["over_budget"] == pytest.approx(t.values[0] / base.values[0] - 1.01)
    assert t.constraints == {"over_budget": t.user_attrs["over_budget"]}
  main(["search", "--report", str(work)])
  shown = capsys.readouterr().out
  assert "| trial | run | loss |" in shown and "(best)" in shown
  best = sweep.read_json(work / pareto.BEST)
  assert best["run"] in runs.values() and best["ratio_vs_base"] <= 1
  assert best["loss"] <= 1.01 * best["base"]["loss"]
  exp = configs.load_experiment(str(work / pareto.BEST_PY))
  assert sweep.identity(exp.to_dict())[:8] == best["run"].rsplit("-", 1)[1]
  with pytest.raises(ValueError, match="holds the search"):
    search.run_search(str(ROOT / "experiments/codesign_small.py:smoke"), work, 3)


@pytest.mark.slow
@pytest.mark.xdist_group("search")
def test_the_notebook_draws_the_searched_front(resumed, tmp_path, monkeypatch):
  work = resumed[0]
  main(["search", "--report", str(work)])  # best.json
  monkeypatch.setenv("MMFREE_SEARCH", str(work))
  text, figures = test_notebooks.execute("accuracy_vs_energy.ipynb", work, tmp_path, monkeypatch)
  assert f"{work}: 3 measured trials" in text, text
  test_notebooks.assert_figures(figures, ["accuracy_vs_energy.png", "searched_front.png"])


def _experiment(tmp_path: Path, space: str) -> str:
  path = tmp_path / "x.py"
  path.write_text(
    f"from mmfree import configs\n\ndef get_config():\n  return configs.load_config({TINY!r})\n"
    f"\ndef get_search():\n  return {space}\n"
  )
  return str(path)


@pytest.mark.parametrize(
  ("space", "error"),
  [
    (None, "defines no get_search"),
    ("{}", "non-empty dict"),
    ("{'quant.act_bits': []}", "has no choices"),
    ("{'quant.act_bits': [object()]}", "does not survive a command line"),
    ("{'quant.act_bits': [8, 8]}", "twice"),
    ("{'quant.act_bitz': [8]}", "quant.act_bitz=8 is no valid choice: unknown config key"),
    ("{'quant.act_bits': [99]}", "must lie in"),
  ],
)
def test_load_search_names_what_is_wrong(tmp_path, space, error):
  spec = TINY if space is None else _experiment(tmp_path, space)
  with pytest.raises(ValueError, match=error):
    configs.load_search(spec)


def test_base_design_joins_the_space_and_overrides_pin_levers(tmp_path):
  spec = _experiment(tmp_path, "{'quant.act_bits': [4, 6], 'quant.bits': [(), ('h=12',)]}")
  space, base = pareto.space_of(spec, {})
  assert space == {"quant.act_bits": ["8", "4", "6"], "quant.bits": ["()", "('h=12',)"]}
  assert base == {"quant.act_bits": "8", "quant.bits": "()"}
  assert pareto.overrides({"quant.bits": "('h=12',)"}) == {"quant.bits": ("h=12",)}
  assert pareto.space_of(spec, {"quant.act_bits": 6})[0] == {"quant.bits": ["()", "('h=12',)"]}


@pytest.mark.parametrize(
  "spec", ["quant_ablation.py:smoke", "quant_ablation.py:ptq", "codesign_small.py:smoke",
           "codesign_small.py"],
)  # fmt: skip
def test_the_experiments_search_spaces_resolve(spec):
  space, base = pareto.space_of(str(ROOT / "experiments" / spec), {})
  assert len(space) >= 2 and set(base) == set(space)
  assert all(base[k] in texts for k, texts in space.items())


def _study(points: dict, again: tuple = ()) -> optuna.Study:
  """An in-memory study of completed trials {act_bits text: (loss, mJ/token)}, then the designs
  `again` asked a second time."""
  study = optuna.create_study(directions=list(pareto.DIRECTIONS))
  dist = {"quant.act_bits": optuna.distributions.CategoricalDistribution(list(points))}
  for bits, values in [*points.items(), *((b, points[b]) for b in again)]:
    params, attrs = {"quant.act_bits": bits}, {"run": f"r{bits}"}
    trial = optuna.trial.create_trial(params=params, distributions=dist, values=values,
                                      user_attrs=attrs)  # fmt: skip
    study.add_trial(trial)
  return study


def test_the_best_design_is_the_least_energy_within_the_budget():
  base = {"quant.act_bits": "8"}
  points = {"8": (5.0, 1.0), "6": (5.04, 0.5), "4": (5.2, 0.2), "5": (5.01, 0.7)}
  study = _study({**points, "7": (5.1, 0.9)}, again=("6",))  # 7: dominated by 6
  pick = lambda budget: pareto.select(study, base, budget)
  chosen = pick(0.01)
  assert [t.params["quant.act_bits"] for t in chosen["front"]] == ["8", "5", "6", "4"]
  assert chosen["base"].params == base and chosen["best"].params["quant.act_bits"] == "6"
  assert pick(0.05)["best"].params["quant.act_bits"] == "4"
  assert pick(0.0)["best"].params == base  # the base design is always within its own budget
  rows = pareto.table(chosen, base).splitlines()
  assert any("(best)" in r and "+0.80%" in r and "0.5x" in r for r in rows)
  assert pareto.select(study, {"quant.act_bits": "3"}, 0.01)["best"] is None  # no base yet


def test_an_unknown_sampler_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r"--sampler 'grid': expected one of \('tpe', 'nsga2'\)"):
    search.run_search(SPEC, tmp_path / "s", 1, sampler="grid")
  assert {type(search._sampler(n, 0, 4)).__name__ for n in search.SAMPLERS} == {
    "TPESampler", "NSGAIISampler"}  # fmt: skip
