"""Searches: a multi-objective co-design search over an experiment's levers, with optuna.

`mmfree search experiments/x.py[:arg] --workdir DIR --trials N [--workers K] [--seed S] [--launcher
slurm --slurm.partition P ...] [--config.KEY=VALUE ...]` samples designs from the experiment's
`get_search` space (dotted key -> choices) with optuna's multi-objective TPE (`--sampler nsga2`:
NSGA-II), steered to designs within `--budget` (a constraint), and minimizes two objectives: the
`hw` model's validation loss (`eval.hw.loss`) and the predicted Loihi 2 energy per generated token
(`measure.generation.mj_per_token`). A trial is an ordinary run directory `DIR/<name>/`, named and
run as a sweep's points are (`mmfree.sweep`), K at a time (with `--launcher slurm`, K at a time as
one SLURM job array, which this process waits for: run it where it may stay); a design that
resolves to a finished run reuses it. The first trial is the base design, the experiment as
configured (with the `--config.*` overrides, which also pin the levers they set): the budget's
reference, its values added to the choices where the space lacks them. The study lives in
`DIR/study.journal`, `DIR/search.json` lists the space and the trials, and `mmfree report DIR`
tables the runs. Rerunning the command resumes: trials that a killed search left running are failed
and asked again (their run directories resume), finished ones are kept; N counts completed trials
in all, so the same N again runs nothing.

`mmfree search --report DIR [--budget B] [--verify]` prints the Pareto front and the design of
least energy whose loss is at most (1 + B) times the base design's, and writes it to
`DIR/best.json` and `DIR/best_overrides.py`, an experiment file (`mmfree run
DIR/best_overrides.py --workdir X` reruns the design). `--verify` reruns it so into
`DIR/verified/`, through the emulate stage (the program bit-exact against the `hw` model), and
says whether its loss and energy equal the trial's.
"""

import argparse
import os
import sys
import time
from pathlib import Path

from mmfree import configs, pareto, slurm, sweep
from mmfree.core import digest, files

POLL_S = 5  # between looks at a batch's SLURM jobs
SAMPLERS = ("tpe", "nsga2")
TPE_STARTUP = 8  # random designs before TPE models the trials


def _manifest(workdir: Path, spec: str, extra: dict, space: dict, base: dict) -> dict:
  """search.json as it will be, refusing a workdir that holds a sweep or another search."""
  if (workdir / sweep.MANIFEST).exists():
    raise ValueError(f"{workdir} holds a sweep ({sweep.MANIFEST}): use another --workdir")
  old = files.read_json(workdir / pareto.MANIFEST) or {}
  ours = digest.json_sha256([spec, extra])
  if old and digest.json_sha256([old["spec"], old["extra_overrides"]]) != ours:
    raise ValueError(
      f"{workdir} holds the search {old['spec']} {old['extra_overrides']}, not {spec} {extra}: "
      "use another --workdir"
    )
  if old and digest.json_sha256(old["space"]) != digest.json_sha256(space):
    changed = sorted(k for k in old["space"].keys() | space.keys()
                     if old["space"].get(k) != space.get(k))  # fmt: skip
    raise ValueError(
      f"{spec}: the search space changed since {workdir}'s study began ({', '.join(changed)}); "
      "optuna keeps one set of choices per lever: use another --workdir"
    )
  name = pareto.study_name(spec, extra)
  return {"spec": spec, "extra_overrides": extra, "study": name, "space": space, "base": base,
          "trials": old.get("trials", [])}  # fmt: skip


def _check_objectives(spec: str, extra: dict):
  exp = configs.load_experiment(spec, extra)
  missing = [s for s in ("eval", "measure") if s not in exp.stages]
  if missing or "hw" not in (exp.eval.precisions or (exp.model.precision,)):
    raise ValueError(
      f"{spec}: a search reads eval.hw.loss and measure's mJ/token, but the experiment's stages "
      f"are {exp.stages} and eval.precisions {exp.eval.precisions}: add the stages eval, lower "
      "and measure and the precision hw"
    )


def _run_jobs(spec: str, workdir: Path, todo: list, cfg: "slurm.SlurmConfig"):
  """`todo` as one SLURM job array, waited for; a trial whose job a killed search left queued
  or running is waited for, not submitted again. The jobs inherit this environment (SLURM's
  default), the shared compilation cache included."""
  waiting = slurm.queued([r.dir for r in todo])
  new = [r for r in todo if r.dir not in waiting]
  saved = dict(os.environ)
  os.environ.update(pareto.trial_env(workdir))
  try:
    ids = slurm.submit(new, workdir, cfg, Path(spec).stem) if new else []
  finally:
    os.environ.clear()
    os.environ.update(saved)
  jobs = ids + [slurm.recorded_job(d) for d in waiting]
  print(f"search {workdir}: jobs {', '.join(jobs)} ({len(waiting)} left by an earlier search)")
  while any(v in slurm.ACTIVE for v in slurm.job_states(jobs).values()):
    time.sleep(POLL_S)


def _resume(study):
  """Trials a killed search left running: failed, and their designs asked again."""
  from optuna.trial import TrialState

  for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
    study.tell(t.number, state=TrialState.FAIL)
    study.enqueue_trial(t.params, user_attrs={"resumes": t.number})
    print(f"trial {t.number} was left running by a stopped search: asked again")


def _ask(study, space: dict, base: dict):
  trial = study.ask()
  for key, texts in space.items():
    trial.suggest_categorical(key, texts)
  if trial.params == base:
    trial.set_user_attr("base", True)
  return trial


def _plan(spec, workdir: Path, extra: dict, trial, prefix) -> "sweep.Run | str":
  """The trial's run, or why its design is no valid config."""
  try:
    [run] = sweep.plan(spec, workdir, extra, points=[pareto.overrides(trial.params)],
                       command_prefix=prefix, write=False)  # fmt: skip
  except ValueError as e:  # choices valid alone, not together
    return str(e)
  trial.set_user_attr("run", run.name)
  return run


def _sampler(name: str, seed: int, population: int):
  """The sampler; both honour the trials' constraint (`over_budget` ≤ 0 is feasible: `_tell`)."""
  import warnings

  import optuna

  if name == "nsga2":
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
  with warnings.catch_warnings():  # multivariate TPE is marked experimental
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP, multivariate=True)


def _tell(study, trial, run: "sweep.Run | str", base: dict, reused: bool, budget: float) -> bool:
  """Records the trial's outcome from its run directory, with how far its loss lies beyond the
  budget against the base design's (`over_budget`, relative; 0 while the base is unknown);
  prints its line. False if it failed."""
  from optuna.trial import TrialState

  words, error = pareto.words(trial.params, base), run if isinstance(run, str) else None
  if error is None and sweep.state(run) != "done":
    status = files.read_json(run.dir / files.STATUS) or {}
    error = f"{status.get('error') or sweep.state(run)} (see {run.dir / sweep.LOG})"
  if error is None:
    try:
      figures = pareto.objectives(run.dir)
    except ValueError as e:
      error = str(e)
  if error is not None:
    trial.set_user_attr("error", error)
    study.tell(trial, state=TrialState.FAIL)
    print(f"trial {trial.number} FAILED {words}: {error}")
    return False
  for k, v in figures.items():
    trial.set_user_attr(k, v)
  ref = figures["loss"] if trial.params == base else next(
    (t.values[0] for t in pareto.completed(study) if t.params == base), None)  # fmt: skip
  if ref is not None:
    trial.set_user_attr("over_budget", figures["loss"] / ref - 1 - budget)
    trial.set_constraint("over_budget", figures["loss"] / ref - 1 - budget)
  study.tell(trial, [figures["loss"], figures["mj_per_token"]])
  again = f" (reused {run.name})" if reused else ""
  print(f"trial {trial.number} {words}: loss {figures['loss']:.4g}, "
        f"{figures['mj_per_token']:.4g} mJ/token{again}")  # fmt: skip
  return True


def _write_trials(workdir: Path, manifest: dict, study):
  manifest["trials"] = [{"number": t.number, "state": t.state.name, "params": t.params,
                         "values": t.values, **t.user_attrs} for t in study.trials]  # fmt: skip
  files.write_json(workdir / pareto.MANIFEST, manifest)


def run_search(
  spec: str,
  workdir: Path,
  trials: int,
  budget: float = 0.01,
  workers: int = 1,
  extra_overrides: dict | None = None,
  seed: int = 0,
  command_prefix: list[str] | None = None,
  slurm_cfg: "slurm.SlurmConfig | None" = None,
  sampler: str = "tpe",
  population: int = 0,
) -> dict:
  """Runs trials until `trials` have completed, `workers` at a time (or, with `slurm_cfg`,
  each batch of `workers` as a SLURM job array, waited for), then prints the report; returns
  {"completed", "failed"} (failed: in this call). `sampler`: multi-objective TPE or NSGA-II
  (`population` designs a generation, default 2 × workers), both constrained to the budget."""
  if sampler not in SAMPLERS:
    raise ValueError(f"--sampler {sampler!r}: expected one of {SAMPLERS}")
  if trials < 1 or workers < 1:
    raise ValueError(f"--trials and --workers must be at least 1, got {trials} and {workers}")
  workdir, extra = Path(workdir), dict(extra_overrides or {})
  _check_objectives(spec, extra)
  space, base = pareto.space_of(spec, extra)
  manifest = _manifest(workdir, spec, extra, space, base)
  workdir.mkdir(parents=True, exist_ok=True)
  busy = RuntimeError(f"another search or sweep is running in {workdir}")
  with files.exclusive(workdir / ".sweep.lock", busy):
    files.write_json(workdir / pareto.MANIFEST, manifest)
    study = pareto.open_study(workdir, manifest["study"])
    _resume(study)
    if not study.trials:
      study.enqueue_trial(base)
    # another seed per session: a resumed search would otherwise draw its first designs again
    study.sampler = _sampler(sampler, seed + len(study.trials), population or max(2 * workers, 4))
    failed = 0
    while (done := len(pareto.completed(study))) < trials:
      if failed >= trials:  # every design failing is a broken setup, not the space
        print(f"search {workdir}: {failed} trials failed in this run: stopping")
        break
      batch = [_ask(study, space, base) for _ in range(min(workers, trials - done))]
      runs = [_plan(spec, workdir, extra, t, command_prefix) for t in batch]
      todo = {r.name: r for r in runs if not isinstance(r, str) and sweep.state(r) != "done"}
      if todo and slurm_cfg is not None:
        _run_jobs(spec, workdir, list(todo.values()), slurm_cfg)
      elif todo:
        sweep.run_all(
          list(todo.values()), workers, {"done": 0, "failed": 0}, pareto.trial_env(workdir)
        )
      for t, r in zip(batch, runs, strict=True):
        reused = not isinstance(r, str) and r.name not in todo
        failed += not _tell(study, t, r, base, reused, budget)
      _write_trials(workdir, manifest, study)
    _write_trials(workdir, manifest, study)
  done = len(pareto.completed(study))
  print(f"search {workdir}: {done} trials completed, {failed} failed in this run")
  pareto.report(workdir, budget)
  return {"completed": done, "failed": failed}


def add_parser(subparsers) -> argparse.ArgumentParser:
  """`search SPEC --workdir DIR --trials N [...] [--config.KEY=VALUE ...]` and `search --report
  DIR [--budget B] [--verify]`; the `--config.*` args reach `cmd_search` as `extra`."""
  p = subparsers.add_parser(
    "search",
    help="multi-objective co-design search over get_search's levers (resumable)",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("spec", nargs="?", help="experiments/x.py or experiments/x.py:arg")
  p.add_argument("--workdir", help="search directory: the study and one run directory per design")
  p.add_argument("--trials", type=int, help="completed trials to reach, in all")
  p.add_argument("--budget", type=float, default=0.01,
                 help="loss budget against the base design (default 0.01: 1%%)")  # fmt: skip
  p.add_argument("--workers", type=int, default=1, help="runs at a time (default 1)")
  p.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
  p.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                 help="multi-objective TPE (default) or NSGA-II, kept to --budget")  # fmt: skip
  p.add_argument("--population", type=int, default=0,
                 help="NSGA-II: designs a generation (default 2 x workers, >= 4)")  # fmt: skip
  p.add_argument("--report", metavar="DIR", help="the front and best design of a search")
  p.add_argument("--verify", action="store_true", help="with --report: rerun the best design")
  slurm.add_arguments(p)  # --launcher slurm: each batch of --workers trials as a job array
  p.set_defaults(fn=cmd_search)
  return p


def cmd_search(args, extra: list[str]) -> int:
  """Exit code: 0 when done, 1 when trials failed (or a report found no best design), 2 when
  another search holds the workdir, 130 when interrupted."""
  if args.report:
    if args.spec or args.workdir or args.trials or extra:
      raise ValueError("mmfree search --report DIR takes only --budget and --verify")
    return pareto.report(Path(args.report), args.budget, args.verify)
  if not (args.spec and args.workdir and args.trials) or args.verify:
    raise ValueError("usage: mmfree search SPEC --workdir DIR --trials N, or --report DIR")
  try:
    cluster = slurm.from_args(args) if args.launcher == "slurm" else None
    s = run_search(args.spec, Path(args.workdir), args.trials, args.budget, args.workers,
                   configs.parse_overrides(extra), args.seed, slurm_cfg=cluster,
                   sampler=args.sampler, population=args.population)  # fmt: skip
  except KeyboardInterrupt:
    print(f"search interrupted: rerun the same command to resume {args.workdir}", file=sys.stderr)
    return 130
  except RuntimeError as e:  # another search or sweep holds the workdir
    print(f"mmfree search: error: {e}", file=sys.stderr)
    return 2
  return 1 if s["failed"] else 0
