"""Searches: a multi-objective co-design search over an experiment's levers, with optuna.

`mmfree search experiments/x.py[:arg] --workdir DIR --trials N [--workers K] [--seed S] [--launcher
slurm --slurm.partition P ...] [--config.KEY=VALUE ...]` samples designs from the experiment's
`get_search` space (dotted key -> choices) with NSGA-II and minimizes two objectives: the `hw`
model's validation loss (`eval.hw.loss`) and the predicted Loihi 2 energy per generated token
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
import shlex
import sys
import textwrap
import time
from pathlib import Path

from mmfree import configs, results, slurm, sweep
from mmfree.core import digest, files
from mmfree.core.dicts import flatten
from mmfree.core.experiment import parse_value

JOURNAL, MANIFEST = "study.journal", "search.json"
BEST, BEST_PY, VERIFIED = "best.json", "best_overrides.py", "verified"
JAX_CACHE = ".jax_cache"
DIRECTIONS = ("minimize", "minimize")  # loss, mJ per token
POLL_S = 5  # between looks at a batch's SLURM jobs


def space_of(spec: str, extra: dict) -> tuple[dict, dict]:
  """({key: [choices]}, {key: the base design's choice}), choices as their command-line texts
  (optuna's categorical choices are scalars; a text reads back as its value). A lever that
  `extra` sets is pinned, not searched."""
  flat = flatten(configs.load_experiment(spec, extra).to_dict())
  space, base = {}, {}
  for key, choices in configs.load_search(spec).items():
    if key in extra:
      print(f"{spec}: {key} is set by --config.{key}: not searched")
      continue
    texts, want = [configs.override_text(key, v) for v in choices], digest.json_sha256(flat[key])
    base[key] = next((t for t, v in zip(texts, choices, strict=True)
                      if digest.json_sha256(v) == want), None)  # fmt: skip
    if base[key] is None:  # the reference must be a design of the space
      base[key] = configs.override_text(key, flat[key])
      texts.insert(0, base[key])
      print(f"{spec}: the base value {key}={base[key]} joins the choices (the budget's reference)")
    space[key] = texts
  if not space:
    raise ValueError(f"{spec}: every lever of get_search is set by a --config override: none left")
  return space, base


def overrides(params: dict) -> dict:
  """A trial's params (choice texts) as the dotted overrides they stand for."""
  return {k: parse_value(t) for k, t in params.items()}


def study_name(spec: str, extra: dict) -> str:
  return shlex.join([spec, *(configs.override_arg(k, v) for k, v in extra.items())])


def open_study(workdir: Path, name: str):
  """The study `name` of `workdir/study.journal`, created if missing."""
  import optuna  # on use: every `mmfree` command builds this module's parser

  optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial gets its own line here
  backend = optuna.storages.journal.JournalFileBackend(str(Path(workdir) / JOURNAL))
  storage = optuna.storages.JournalStorage(backend)
  return optuna.create_study(
    study_name=name, storage=storage, directions=list(DIRECTIONS), load_if_exists=True
  )


def _manifest(workdir: Path, spec: str, extra: dict, space: dict, base: dict) -> dict:
  """search.json as it will be, refusing a workdir that holds a sweep or another search."""
  if (workdir / sweep.MANIFEST).exists():
    raise ValueError(f"{workdir} holds a sweep ({sweep.MANIFEST}): use another --workdir")
  old = files.read_json(workdir / MANIFEST) or {}
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
  name = study_name(spec, extra)
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


def objectives(run_dir: Path) -> dict:
  """A finished run's loss (eval.hw.loss), mJ/token, tokens/s, chips and whether its program was
  checked bit-exact (None: no emulate stage), from its current outputs as `mmfree report`
  reads them."""
  out, _ = results.current_outputs(Path(run_dir))
  hw, m = out["eval"].get("hw"), out.get("measure")
  if hw is None or m is None:
    raise ValueError(f"{run_dir} has no current {'measure' if hw else 'eval.hw'} output")
  g = m["generation"]
  return {"loss": hw["loss"], "mj_per_token": g["mj_per_token"], "tokens_per_s": g["tokens_per_s"],
          "chips": m["resources"]["chips"],
          "bit_exact": (out.get("emulate") or {}).get("bit_exact")}  # fmt: skip


def _words(params: dict, base: dict) -> str:
  """The choices of a design that differ from the base design's: `act_bits=4,lut_size=16`."""
  diff = [f"{k.rsplit('.', 1)[-1]}={t}" for k, t in params.items() if base.get(k) != t]
  return ",".join(diff) or "base"


def _env(workdir: Path) -> dict:
  """The trials' JAX compilation cache, shared: designs of one model compile many of the same
  programs (the smoke design on a busy 2-core machine: 80-120 s cold, 30-35 s warm; another
  design after it: about 60 s). A user's own JAX_COMPILATION_CACHE_DIR wins."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return {}
  return {"JAX_COMPILATION_CACHE_DIR": str((workdir / JAX_CACHE).absolute())}


def _run_jobs(spec: str, workdir: Path, todo: list, cfg: "slurm.SlurmConfig"):
  """`todo` as one SLURM job array, waited for; a trial whose job a killed search left queued
  or running is waited for, not submitted again. The jobs inherit this environment (SLURM's
  default), the shared compilation cache included."""
  waiting = slurm.queued([r.dir for r in todo])
  new = [r for r in todo if r.dir not in waiting]
  saved = dict(os.environ)
  os.environ.update(_env(workdir))
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
    [run] = sweep.plan(spec, workdir, extra, points=[overrides(trial.params)],
                       command_prefix=prefix, write=False)  # fmt: skip
  except ValueError as e:  # choices valid alone, not together
    return str(e)
  trial.set_user_attr("run", run.name)
  return run


def _tell(study, trial, run: "sweep.Run | str", base: dict, reused: bool) -> bool:
  """Records the trial's outcome from its run directory; prints its line. False if it failed."""
  from optuna.trial import TrialState

  words, error = _words(trial.params, base), run if isinstance(run, str) else None
  if error is None and sweep.state(run) != "done":
    status = files.read_json(run.dir / files.STATUS) or {}
    error = f"{status.get('error') or sweep.state(run)} (see {run.dir / sweep.LOG})"
  if error is None:
    try:
      figures = objectives(run.dir)
    except ValueError as e:
      error = str(e)
  if error is not None:
    trial.set_user_attr("error", error)
    study.tell(trial, state=TrialState.FAIL)
    print(f"trial {trial.number} FAILED {words}: {error}")
    return False
  for k, v in figures.items():
    trial.set_user_attr(k, v)
  study.tell(trial, [figures["loss"], figures["mj_per_token"]])
  again = f" (reused {run.name})" if reused else ""
  print(f"trial {trial.number} {words}: loss {figures['loss']:.4g}, "
        f"{figures['mj_per_token']:.4g} mJ/token{again}")  # fmt: skip
  return True


def _completed(study) -> list:
  from optuna.trial import TrialState

  return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _write_trials(workdir: Path, manifest: dict, study):
  manifest["trials"] = [{"number": t.number, "state": t.state.name, "params": t.params,
                         "values": t.values, **t.user_attrs} for t in study.trials]  # fmt: skip
  files.write_json(workdir / MANIFEST, manifest)


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
) -> dict:
  """Runs trials until `trials` have completed, `workers` at a time (or, with `slurm_cfg`,
  each batch of `workers` as a SLURM job array, waited for), then prints the report; returns
  {"completed", "failed"} (failed: in this call)."""
  import optuna

  if trials < 1 or workers < 1:
    raise ValueError(f"--trials and --workers must be at least 1, got {trials} and {workers}")
  workdir, extra = Path(workdir), dict(extra_overrides or {})
  _check_objectives(spec, extra)
  space, base = space_of(spec, extra)
  manifest = _manifest(workdir, spec, extra, space, base)
  workdir.mkdir(parents=True, exist_ok=True)
  busy = RuntimeError(f"another search or sweep is running in {workdir}")
  with files.exclusive(workdir / ".sweep.lock", busy):
    files.write_json(workdir / MANIFEST, manifest)
    study = open_study(workdir, manifest["study"])
    _resume(study)
    if not study.trials:
      study.enqueue_trial(base)
    # another seed per session: a resumed search would otherwise draw its first designs again
    study.sampler = optuna.samplers.NSGAIISampler(seed=seed + len(study.trials))
    failed = 0
    while (done := len(_completed(study))) < trials:
      if failed >= trials:  # every design failing is a broken setup, not the space
        print(f"search {workdir}: {failed} trials failed in this run: stopping")
        break
      batch = [_ask(study, space, base) for _ in range(min(workers, trials - done))]
      runs = [_plan(spec, workdir, extra, t, command_prefix) for t in batch]
      todo = {r.name: r for r in runs if not isinstance(r, str) and sweep.state(r) != "done"}
      if todo and slurm_cfg is not None:
        _run_jobs(spec, workdir, list(todo.values()), slurm_cfg)
      elif todo:
        sweep._run_all(list(todo.values()), workers, {"done": 0, "failed": 0}, _env(workdir))
      for t, r in zip(batch, runs, strict=True):
        failed += not _tell(study, t, r, base, reused=not isinstance(r, str) and r.name not in todo)
      _write_trials(workdir, manifest, study)
    _write_trials(workdir, manifest, study)
  print(f"search {workdir}: {len(_completed(study))} trials completed, {failed} failed in this run")
  report(workdir, budget)
  return {"completed": len(_completed(study)), "failed": failed}


def select(study, base: dict, budget: float) -> dict:
  """{"base": the base design's trial, "front": the Pareto front by loss, one trial per run,
  "best": the trial of least mJ/token whose loss is at most (1 + budget) × the base's}; base and
  best None until the base design has completed."""
  done = _completed(study)
  ref = next((t for t in done if t.params == base), None)
  front = {}  # a design asked twice (its run reused) is one row
  for t in sorted(study.best_trials, key=lambda t: (*t.values, t.number)):
    front.setdefault(t.user_attrs.get("run", t.number), t)
  best = None
  if ref is not None:
    within = [t for t in done if t.values[0] <= (1 + budget) * ref.values[0]]
    best = min(within, key=lambda t: (t.values[1], t.values[0], t.number))
  return {"base": ref, "front": list(front.values()), "best": best}


def table(chosen: dict, base: dict) -> str:
  """The Pareto front as markdown, by loss; the best design's row marked."""
  ref, best = chosen["base"], chosen["best"]
  lines = ["| trial | run | loss | Δ loss | mJ/token | × base | tokens/s | chips | design |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
  for t in chosen["front"]:
    loss, mj = t.values
    delta = f"{100 * (loss / ref.values[0] - 1):+.2f}%" if ref else ""
    ratio = f"{mj / ref.values[1]:.3g}x" if ref else ""
    mark = " (best)" if best and t.number == best.number else ""  # optuna copies trials
    a = t.user_attrs
    speed = f"{a['tokens_per_s']:,.0f}" if "tokens_per_s" in a else ""
    cells = [f"{t.number}{mark}", a.get("run", ""), f"{loss:.4g}", delta, f"{mj:.4g}", ratio,
             speed, str(a.get("chips", "")), _words(t.params, base)]  # fmt: skip
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def best_record(manifest: dict, chosen: dict, budget: float, workdir: Path) -> dict:
  """best.json: the best design as overrides of the search's spec, its figures and the base's."""
  best, ref = chosen["best"], chosen["base"]
  a = best.user_attrs
  return {
    "spec": manifest["spec"],
    "overrides": {**overrides(best.params), **manifest["extra_overrides"]},
    "trial": best.number,
    "run": a["run"],
    "run_dir": str(workdir / a["run"]),
    "loss": best.values[0],
    "mj_per_token": best.values[1],
    "tokens_per_s": a.get("tokens_per_s"),
    "chips": a.get("chips"),
    "budget": budget,
    "loss_vs_base_pct": 100 * (best.values[0] / ref.values[0] - 1),
    "ratio_vs_base": best.values[1] / ref.values[1],
    "base": {
      "trial": ref.number,
      "run": ref.user_attrs["run"],
      "loss": ref.values[0],
      "mj_per_token": ref.values[1],
    },  # fmt: skip
  }


def _sentence(best: dict) -> str:
  return (
    f"trial {best['trial']} {best['run']}: loss {best['loss']:.4g} "
    f"({best['loss_vs_base_pct']:+.2f}% against the base design), "
    f"{best['mj_per_token']:.4g} mJ/token ({best['ratio_vs_base']:.3g}x the base's)"
  )


def experiment_file(best: dict, workdir: Path) -> str:
  """best_overrides.py: the best design as an experiment file built on the search's spec."""
  about = textwrap.fill(
    f"The design of least predicted energy within a {100 * best['budget']:g}% loss budget of the "
    f"search in {workdir} (written by `mmfree search --report`), {_sentence(best)}.",
    width=98,
  )
  items = "".join(f"  {k!r}: {v!r},\n" for k, v in best["overrides"].items())
  return f'''"""{about}

  uv run mmfree run {workdir / BEST_PY} --workdir DIR   # reruns the design

Paths are relative to the directory the search ran in, as in {best["spec"]} itself.
"""

from mmfree import configs

SPEC = {best["spec"]!r}
OVERRIDES = {{
{items}}}


def get_config(arg=None):
  if arg is not None:
    raise ValueError(f"{{__file__}} has no variants, got {{arg!r}}")
  return configs.load_config(SPEC, OVERRIDES)
'''


def report(workdir: Path, budget: float = 0.01, verify: bool = False) -> int:
  """Prints the front and the best design within `budget`, writes best.json and
  best_overrides.py; with `verify`, reruns that design (`verify_best`). Exit code: 0 when a best
  design is known (and verified)."""
  workdir = Path(workdir)
  manifest = files.read_json(workdir / MANIFEST)
  if manifest is None or not (workdir / JOURNAL).is_file():
    raise FileNotFoundError(f"{workdir} holds no search ({MANIFEST} and {JOURNAL}): see --help")
  chosen = select(open_study(workdir, manifest["study"]), manifest["base"], budget)
  print(f"Pareto front of {manifest['study']} ({workdir}):\n")
  print(table(chosen, manifest["base"]))
  if chosen["best"] is None:
    print("\nthe base design has not completed: no budget reference yet; rerun the search")
    return 1
  best = best_record(manifest, chosen, budget, workdir)
  files.write_json(workdir / BEST, best)
  (workdir / BEST_PY).write_text(experiment_file(best, workdir))
  print(f"\nbest within {100 * budget:g}% of the base loss: {_sentence(best)}")
  print(f"-> {workdir / BEST}, {workdir / BEST_PY}")
  return 0 if not verify or verify_best(workdir, best) else 1


def verify_best(workdir: Path, best: dict) -> bool:
  """Reruns best_overrides.py as a plain `mmfree run` into DIR/verified/ (emulate added to its
  stages when missing); True if its program is bit-exact and its loss and energy are the
  trial's."""
  spec, run_dir = str(workdir / BEST_PY), workdir / VERIFIED
  stages = configs.load_experiment(spec).stages
  if "emulate" not in stages:  # the bit-exact check: right after lowering
    i = stages.index("lower") + 1
    stages = (*stages[:i], "emulate", *stages[i:])
  point = {"stages": stages}
  config = configs.load_experiment(spec, point).to_dict()
  cmd = [*sweep.default_command(), "run", spec, "--workdir", str(run_dir),
         configs.override_arg("stages", stages)]  # fmt: skip
  run = sweep.Run(VERIFIED, run_dir, point, cmd, config)
  if sweep.state(run) != "done":
    sweep._run_all([run], 1, {"done": 0, "failed": 0}, _env(workdir))
  if sweep.state(run) != "done":
    error = (files.read_json(run_dir / files.STATUS) or {}).get("error")
    print(f"verify: the rerun in {run_dir} failed: {error} (see {run_dir / sweep.LOG})")
    return False
  got = objectives(run_dir)
  same = {k: got[k] == best[k] for k in ("loss", "mj_per_token")}
  says = lambda k: "equal to" if same[k] else f"not {best[k]:.6g},"
  exact = "bit-exact with" if got["bit_exact"] else "NOT checked against"
  print(f"verify {run_dir}: the program is {exact} the `hw` model; loss {got['loss']:.6g} "
        f"{says('loss')} the trial's; {got['mj_per_token']:.6g} mJ/token "
        f"{says('mj_per_token')} the trial's")  # fmt: skip
  return bool(got["bit_exact"]) and all(same.values())


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
    return report(Path(args.report), args.budget, args.verify)
  if not (args.spec and args.workdir and args.trials) or args.verify:
    raise ValueError("usage: mmfree search SPEC --workdir DIR --trials N, or --report DIR")
  try:
    cluster = slurm.from_args(args) if args.launcher == "slurm" else None
    s = run_search(args.spec, Path(args.workdir), args.trials, args.budget, args.workers,
                   configs.parse_overrides(extra), args.seed, slurm_cfg=cluster)  # fmt: skip
  except KeyboardInterrupt:
    print(f"search interrupted: rerun the same command to resume {args.workdir}", file=sys.stderr)
    return 130
  except RuntimeError as e:  # another search or sweep holds the workdir
    print(f"mmfree search: error: {e}", file=sys.stderr)
    return 2
  return 1 if s["failed"] else 0
