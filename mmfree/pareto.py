"""A search's study: its space of designs, its optuna journal, the objectives read from a
trial's run directory, and its report (the Pareto front, the least-energy design within a loss
budget as best.json and an experiment file, and that design's verified rerun). `mmfree.search`
runs the trials."""

import os
import shlex
import textwrap
from pathlib import Path

from mmfree import configs, results, sweep
from mmfree.core import digest, files
from mmfree.core.dicts import flatten
from mmfree.core.experiment import parse_value

JOURNAL, MANIFEST = "study.journal", "search.json"
BEST, BEST_PY, VERIFIED = "best.json", "best_overrides.py", "verified"
JAX_CACHE = ".jax_cache"
DIRECTIONS = ("minimize", "minimize")  # loss, mJ per token


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


def words(params: dict, base: dict) -> str:
  """The choices of a design that differ from the base design's: `act_bits=4,lut_size=16`."""
  diff = [f"{k.rsplit('.', 1)[-1]}={t}" for k, t in params.items() if base.get(k) != t]
  return ",".join(diff) or "base"


def trial_env(workdir: Path) -> dict:
  """The trials' JAX compilation cache, shared: designs of one model compile many of the same
  programs (the smoke design on a busy 2-core machine: 80-120 s cold, 30-35 s warm; another
  design after it: about 60 s). A user's own JAX_COMPILATION_CACHE_DIR wins."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return {}
  return {"JAX_COMPILATION_CACHE_DIR": str((workdir / JAX_CACHE).absolute())}


def completed(study) -> list:
  from optuna.trial import TrialState

  return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def select(study, base: dict, budget: float) -> dict:
  """{"base": the base design's trial, "front": the Pareto front by loss, one trial per run,
  "best": the trial of least mJ/token whose loss is at most (1 + budget) × the base's}; base and
  best None until the base design has completed."""
  done = completed(study)
  ref = next((t for t in done if t.params == base), None)
  front = {}  # a design asked twice (its run reused) is one row
  # Not `study.best_trials`: with constraints set it keeps the feasible trials only.
  undominated = [t for t in done if not any(_dominates(o.values, t.values) for o in done)]
  for t in sorted(undominated, key=lambda t: (*t.values, t.number)):
    front.setdefault(t.user_attrs.get("run", t.number), t)
  best = None
  if ref is not None:
    within = [t for t in done if t.values[0] <= (1 + budget) * ref.values[0]]
    best = min(within, key=lambda t: (t.values[1], t.values[0], t.number))
  return {"base": ref, "front": list(front.values()), "best": best}


def _dominates(a, b) -> bool:
  """Whether objectives `a` beat `b`: no worse in each, better in one (both minimized)."""
  return all(x <= y for x, y in zip(a, b, strict=True)) and tuple(a) != tuple(b)


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
             speed, str(a.get("chips", "")), words(t.params, base)]  # fmt: skip
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


def sentence(best: dict) -> str:
  return (
    f"trial {best['trial']} {best['run']}: loss {best['loss']:.4g} "
    f"({best['loss_vs_base_pct']:+.2f}% against the base design), "
    f"{best['mj_per_token']:.4g} mJ/token ({best['ratio_vs_base']:.3g}x the base's)"
  )


def experiment_file(best: dict, workdir: Path) -> str:
  """best_overrides.py: the best design as an experiment file built on the search's spec."""
  about = textwrap.fill(
    f"The design of least predicted energy within a {100 * best['budget']:g}% loss budget of the "
    f"search in {workdir} (written by `mmfree search --report`), {sentence(best)}.",
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
  print(f"\nbest within {100 * budget:g}% of the base loss: {sentence(best)}")
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
    sweep.run_all([run], 1, {"done": 0, "failed": 0}, trial_env(workdir))
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
