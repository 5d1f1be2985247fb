"""The `mmfree` command line. Experiment overrides are `--config.<section>.<key>=<value>`."""

import argparse
import sys
import time
from pathlib import Path


def _experiment(spec: str | None, extra: list[str]):
  from mmfree import configs
  from mmfree.core.experiment import to_experiment

  overrides = configs.parse_overrides(extra)
  if spec is None:  # the built-in default: the small model on the embedded corpus
    cfg = configs.apply_overrides(configs.base_config(), overrides)
    return to_experiment(cfg.to_dict(), "", overrides)
  return configs.load_experiment(spec, overrides)


def cmd_run(args, extra):
  from mmfree import configs, results

  if _submitted(args, ["run", args.spec], extra):
    return
  from mmfree.algorithms import distributed
  from mmfree.run import run_experiment

  _join(args)
  run_experiment(_experiment(args.spec, extra), Path(args.workdir))
  if not distributed.is_main():
    return
  print(results.summary(Path(args.workdir)))
  report = configs.report_hook(args.spec)
  if report is not None:  # the experiment's own comparison (published figures, say)
    print(report(Path(args.workdir)))


def cmd_train(args, extra):
  from mmfree.run import run_experiment

  if _submitted(args, ["train", *(["--config", args.config] if args.config else [])], extra):
    return
  _join(args)
  run_experiment(_experiment(args.config, extra), Path(args.workdir), only=("train",))


def _submitted(args, command: list[str], extra: list[str]) -> bool:
  """With `--launcher slurm`: the same command as one SLURM job (nodes × tasks_per_node
  processes of a multi-host run), submitted; False to run it here."""
  if args.launcher != "slurm":
    return False
  from mmfree import slurm

  _experiment(getattr(args, "spec", None) or args.config, extra)  # bad overrides fail here
  workdir = Path(args.workdir).absolute()
  cmd = [*slurm.this_command(), *command, "--workdir", str(workdir), *extra]
  job = slurm.submit_training(cmd, workdir, slurm.from_args(args))
  print(f"submitted job {job}: {workdir}/run.log, {workdir / slurm.FOLDER}/{job}/")
  return True


def _join(args):
  """Join a multi-process run (`--coordinator`, the MMFREE_* variables, or SLURM's srun)."""
  from mmfree.algorithms import distributed

  distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def _processes(p: argparse.ArgumentParser):
  g = p.add_argument_group("multi-process training (jax.distributed; auto-detected under srun)")
  g.add_argument("--coordinator", help="HOST:PORT of process 0 (or MMFREE_COORDINATOR)")
  g.add_argument("--num-processes", type=int, help="processes in the run (or MMFREE_NUM_PROCESSES)")
  g.add_argument("--process-id", type=int, help="this process, 0 to N-1 (or MMFREE_PROCESS_ID)")


def cmd_eval(args, extra):
  from mmfree.algorithms.evaluate import evaluate_model
  from mmfree.core.files import read_json

  path = Path(args.path)
  if args.tasks:
    _only(extra)
    return _eval_tasks(path, args)
  _only(extra, "--data.")
  saved = read_json(path / "config.json") or {}
  data_cfg = _run_data_config(path, extra)  # a run's own data unless told otherwise
  seq_len = args.seq_len or saved.get("train", {}).get("seq_len", 256)
  for precision in args.precision.split(","):
    r = evaluate_model(path, data_cfg, seq_len, precision or None, args.max_windows)
    bpb = f"{r['bpb']:.4f}" if r["bpb"] is not None else "n/a"
    sat = f"  saturated {r['saturation_pct']:.4f}%" if "saturation_pct" in r else ""
    print(f"{r['precision']:8s} loss {r['loss']:.4f}  ppl {r['ppl']:.2f}  bpb {bpb}  "
          f"({r['tokens']} tokens){sat}")  # fmt: skip


def _eval_tasks(path: Path, args):
  from mmfree.core import files
  from mmfree.store import checkpoint
  from mmfree.tasks import suite

  own = checkpoint.read_config_of(path).precision
  precisions = [p or own for p in args.precision.split(",")]
  out_path = path / files.TASKS
  out = suite.evaluate(path, args.tasks, precisions, args.tasks_dir, args.limit, args.batch,
                       args.max_len, old=files.read_json(out_path),
                       save=lambda o: files.write_json(out_path, o))  # fmt: skip
  files.write_json(out_path, out)
  print(suite.table(out))
  for p, r in out["precisions"].items():
    t = r["throughput"]
    print(f"{p}: {t['examples']} examples, {t['requests']} requests in {t['seconds']:.1f} s: "
          f"{t['examples_per_s']:.1f} examples/s, {t['tokens_per_s']:.0f} tokens/s")  # fmt: skip
  print(f"-> {out_path}")


def cmd_lm_eval(args, extra):
  try:
    from mmfree.tasks import harness
  except ImportError as e:  # lm-eval is the optional `eval` extra
    raise RuntimeError(f"mmfree lm-eval needs lm-eval: uv sync --extra eval ({e})") from e
  harness.main(extra)


def _only(extra: list[str], *prefixes: str):
  """Refuse arguments the command does not know (parse_known_args lets them through)."""
  unknown = [a for a in extra if not (prefixes and a.startswith(prefixes))]
  if unknown:
    allowed = f"; it takes {', '.join(p + 'KEY=VALUE' for p in prefixes)}" if prefixes else ""
    raise ValueError(f"unrecognized arguments {unknown}{allowed}")


def cmd_generate(args, extra):
  import mmfree

  _only(extra)
  lm = mmfree.load(args.path)
  if lm.tokenizer is None:
    sys.exit(
      f"{args.path} has no tokenizer files (tokenizer.model or tokenizer.json): text generation "
      "needs one; use mmfree.load(...).generate(token_ids, ...) instead"
    )
  tok = lm.tokenizer
  prompt = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(args.prompt)
  print(args.prompt, end="", flush=True)
  new, shown = [], ""

  def on_token(next_B):
    nonlocal shown
    new.append(int(next_B[0]))
    text = tok.decode(new)
    # Print only stable text: the last token may end mid-way through a character.
    if not text.endswith("\ufffd"):
      print(text[len(shown) :], end="", flush=True)
      shown = text

  t0 = time.perf_counter()
  lm.generate(
    prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
    on_token=on_token,
  )  # fmt: skip
  dt = time.perf_counter() - t0
  rate = f"{len(new) / dt:.1f} tokens/s incl. prompt and compile"
  print(f"\n[{len(new)} tokens in {dt:.2f}s: {rate}]", file=sys.stderr)


def cmd_import_hf(args, extra):
  from mmfree.core.files import CHECKPOINTS
  from mmfree.data.tokenizers import load_tokenizer
  from mmfree.models import hf
  from mmfree.store import checkpoint

  _only(extra)
  out = Path(args.out)
  if (out / CHECKPOINTS).exists():
    raise ValueError(f"{out} already holds a checkpoint: import into a new --out directory")
  cfg, params = hf.load_hf(Path(args.dir))
  checkpoint.save_params(out, 0, params)
  checkpoint.write_config(out, cfg, source={"hf_dir": str(Path(args.dir).absolute())})
  tok = load_tokenizer(Path(args.dir))
  if tok is not None:
    tok.save(out)
  print(f"imported {args.dir} -> {out} ({'with' if tok else 'without'} tokenizer)")


def cmd_tokenizer_train(args, extra):
  from mmfree import configs
  from mmfree.core.data import DataConfig
  from mmfree.core.experiment import to_dataclass
  from mmfree.data.sources import train_tokenizer

  _only(extra, "--data.")
  data_cfg = to_dataclass(DataConfig, configs.parse_overrides(extra, "--data."), "data")
  tok = train_tokenizer(data_cfg, args.vocab_size, Path(args.out))
  print(f"trained a {tok.vocab_size}-token BPE on {data_cfg.source} -> {args.out}")


def _run_data_config(run_dir: Path, extra: list[str]):
  """The run's own data section (when it has one) with `--data.*` overrides."""
  from mmfree import configs
  from mmfree.core.data import DataConfig
  from mmfree.core.experiment import to_dataclass
  from mmfree.core.files import CONFIG, read_json

  saved = (read_json(run_dir / CONFIG) or {}).get("data", {})
  overrides = configs.parse_overrides([a for a in extra if a.startswith("--data.")], "--data.")
  return to_dataclass(DataConfig, {**saved, **overrides}, "data")


def cmd_quantize_calibrate(args, extra):
  from mmfree import configs
  from mmfree.algorithms.calibrate import calibrate_run
  from mmfree.core.experiment import as_tuples, to_dataclass
  from mmfree.core.files import QUANT
  from mmfree.core.quant import QuantConfig
  from mmfree.quant import calibrate

  run_dir = Path(args.run_dir)
  quant = configs.parse_overrides([a for a in extra if a.startswith("--quant.")], "--quant.")
  qcfg = to_dataclass(QuantConfig, as_tuples(quant), "quant")
  _only(extra, "--quant.", "--data.")
  stats = calibrate_run(
    run_dir, qcfg, _run_data_config(run_dir, extra), args.batches, args.batch_size, args.seq_len
  )
  print("| point | layers | bits | max abs | saturation % | rel. error % |")
  print("|---|---|---|---|---|---|")
  for r in calibrate.summarize(stats):
    print(f"| {r['point']} | {r['n']} | {r['bits']} | {r['absmax']:.4g} | {100 * r['sat']:.3f} "
          f"| {100 * r['rel_err']:.3f} |")  # fmt: skip
  print(
    f"wrote {run_dir / QUANT}/ (config.json, scales.json, stats.json); the stages that "
    "read it (eval at hw, lower, emulate, measure) are stale until `mmfree run` reruns them"
  )


def cmd_lower(args, extra):
  from mmfree.algorithms import lower
  from mmfree.loihi import bundle_io, mapping, program, ranges

  _only(extra)
  out = lower.lower_run(Path(args.run_dir), Path(args.out) if args.out else None, args.lm_head)
  prog = bundle_io.load(out)
  s, zeros = bundle_io.summary(prog), program.zero_share(prog)
  print(f"wrote {out}: {s['populations']} populations, {s['neurons']:,} neurons, "
        f"{s['synapse_groups']} synapse groups; ternary weights {zeros:.1%} zero")  # fmt: skip
  r = ranges.summary(prog.ranges)
  n_sat = len(r["saturating"])
  print(f"static range check: {r['checked']} intermediates bounded, none can overflow; "
        f"{n_sat} may saturate where the design clips:")  # fmt: skip
  print("\n".join(ranges.saturating_lines(prog.ranges)))
  print(mapping.report(mapping.place(prog)))


def _prompt(bundle: Path, text: str) -> tuple:
  """(tokenizer, token ids of `text` with BOS) of a bundle."""
  from mmfree.data.tokenizers import load_tokenizer

  tok = load_tokenizer(bundle)
  if tok is None:
    raise ValueError(f"{bundle} has no tokenizer files: lower it again from its run directory")
  return tok, ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(text)


def cmd_emulate(args, extra):
  from mmfree.core.files import EMULATE, write_json
  from mmfree.loihi import bundle_io, measure

  _only(extra)
  bundle = measure.bundle_of(args.bundle)
  tok, prompt = _prompt(bundle, args.prompt)
  result, seconds = measure.run_bundle(bundle, prompt, args.max_new_tokens)
  r = measure.emulate_report(result, seconds, prompt)
  print(args.prompt + tok.decode(r["new"]))
  print(f"({r['tokens']} tokens through the program in {seconds['run']:.1f} s, "
        f"{r['tokens_per_s']:.1f} tokens/s in the emulator)")  # fmt: skip
  print("per token: " + ", ".join(f"{v:,.0f} {k}" for k, v in r["per_token"].items()))
  out = Path(args.out) if args.out else bundle / EMULATE
  inputs = {"program": bundle_io.content_sha256(bundle)}  # not checked against a model here
  write_json(out, {"inputs": inputs, "bit_exact": None, **r})
  print(f"wrote {out}")


def cmd_measure(args, extra):
  from mmfree.core.files import write_json
  from mmfree.loihi import mapping, measure

  _only(extra)
  if args.fit:
    return _fit(args)
  if not args.bundle:
    raise ValueError("measure needs a bundle or run directory (or --fit ROWS)")
  bundle = measure.bundle_of(args.bundle)
  tok, prompt = _prompt(bundle, args.prompt)
  placement = mapping.Placement(args.weights, args.placement)
  r = measure.measure(bundle, prompt, args.max_new_tokens, args.constants, placement,
                      backend=args.backend,
                      venv=Path(args.venv), timeout=args.timeout, chip=args.hardware,
                      verify=args.verify)  # fmt: skip
  print(args.prompt + tok.decode(r["new"]))
  if r["verified"]:
    print(f"bit-exact with the emulator: every population x {r['tokens']} tokens, logits, "
          "new tokens")  # fmt: skip
  print(measure.table(r))
  print(measure.placement_table(r))
  print(measure.kind_table(r))
  print(measure.layer_table(r))
  out = Path(args.out) if args.out else measure.report_path(bundle)
  write_json(out, r)
  print(f"wrote {out}")


def _fit(args):
  from mmfree.loihi import fit

  out = Path(args.out or "constants.fitted.json")
  free = tuple(args.free.split(",")) if args.free else fit.FREE
  try:
    hold_out = tuple(int(i) for i in args.hold_out.split(",")) if args.hold_out else ()
  except ValueError:
    raise ValueError(
      f"--hold-out {args.hold_out!r}: expected 0-based row indices, e.g. 0,2"
    ) from None
  record = fit.fit_file(Path(args.fit), out, free, args.constants, hold_out)
  print(fit.table(record))
  print(f"wrote {out}: use it with --constants {out} (or loihi.constants in an experiment)")


def cmd_lava_setup(args, extra):
  from mmfree.loihi import backend

  _only(extra)
  backend.setup(Path(args.venv))


PROMPT = (
  "The interpreter reads a program one statement at a time, and each statement may call "
  "functions defined in other modules."
)  # a sentence in the embedded corpus's style


def parser() -> argparse.ArgumentParser:
  from mmfree import results, search, slurm, sweep

  p = argparse.ArgumentParser(prog="mmfree", description=__doc__, allow_abbrev=False)
  sub = p.add_subparsers(dest="cmd", required=True)

  r = sub.add_parser("run", help="run an experiment's stages in order (resumable)")
  r.add_argument("spec", help="experiments/<name>.py[:arg]")
  r.add_argument("--workdir", required=True, help="the run directory")
  _processes(r)
  slurm.add_arguments(r)
  r.set_defaults(fn=cmd_run)

  t = sub.add_parser("train", help="the train stage alone")
  t.add_argument("--config", default=None, help="experiments/<name>.py[:arg] (default: built-in)")
  t.add_argument("--workdir", required=True, help="the run directory")
  _processes(t)
  slurm.add_arguments(t)
  t.set_defaults(fn=cmd_train)

  e = sub.add_parser("eval", help="loss, perplexity and bits per byte (--data.<key>=... as "
                     "in experiment configs), or zero-shot task accuracy (--tasks)")  # fmt: skip
  e.add_argument("path", help="run directory or Hugging Face checkpoint directory")
  e.add_argument("--precision", default="", help="comma-separated, e.g. float,bitnet")
  e.add_argument("--seq-len", type=int, default=None, help="default: the run's, else 256")
  e.add_argument("--max-windows", type=int, default=512)
  e.add_argument("--tasks", default="", help="zero-shot tasks instead, e.g. arc_easy,piqa "
                 "(or all): writes PATH/tasks.json")  # fmt: skip
  e.add_argument("--tasks-dir", default=None, help="local JSONL files (default: the Hugging "
                 "Face datasets)")  # fmt: skip
  e.add_argument("--limit", type=int, default=None, help="the first N examples of each task")
  e.add_argument("--batch", type=int, default=16, help="sequences per scoring batch")
  e.add_argument("--max-len", type=int, default=2048, help="cut requests on the left to N tokens "
                 "(lm-eval's max_length)")  # fmt: skip
  e.set_defaults(fn=cmd_eval)

  le = sub.add_parser(
    "lm-eval",
    add_help=False,
    help="lm-evaluation-harness's command line "
    "with --model mmfree (--model_args pretrained=DIR,precision=hw ...)",
  )
  le.set_defaults(fn=cmd_lm_eval)

  g = sub.add_parser("generate", help="stream a continuation of a prompt")
  g.add_argument("path", help="run directory or Hugging Face checkpoint directory")
  g.add_argument("--prompt", default="The")
  g.add_argument("--max-new-tokens", type=int, default=64)
  g.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
  g.add_argument("--top-k", type=int, default=None)
  g.add_argument("--top-p", type=float, default=0.95)
  g.add_argument("--seed", type=int, default=0)
  g.set_defaults(fn=cmd_generate)

  i = sub.add_parser("import-hf", help="import a published checkpoint (ridger/MMfreeLM-*)")
  i.add_argument("dir", help="directory with config.json and model.safetensors")
  i.add_argument("--out", required=True, help="run directory to write")
  i.set_defaults(fn=cmd_import_hf)

  tk = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="sub", required=True)
  tt = tk.add_parser("train", help="train a BPE on a data source (--data.<key>=...)")
  tt.add_argument("--vocab-size", type=int, default=4096)
  tt.add_argument("--out", required=True, help="directory to write tokenizer.json into")
  tt.set_defaults(fn=cmd_tokenizer_train)

  q = sub.add_parser("quantize", help="hardware-aware quantization").add_subparsers(
    dest="sub", required=True
  )
  qc = q.add_parser(
    "calibrate",
    help="observe every quantization point and freeze its scale "
    "(--quant.KEY=VALUE sets the QuantConfig, --data.KEY=VALUE the data)",
  )
  qc.add_argument("run_dir", help="a run directory (or imported checkpoint run directory)")
  qc.add_argument("--batches", type=int, default=8)
  qc.add_argument("--batch-size", type=int, default=8)
  qc.add_argument("--seq-len", type=int, default=128)
  qc.set_defaults(fn=cmd_quantize_calibrate)

  lw = sub.add_parser("lower", help="a calibrated run -> a Loihi 2 neuron program bundle")
  lw.add_argument("run_dir", help="a run directory with quant/ (mmfree quantize calibrate)")
  lw.add_argument("--out", default=None, help="bundle directory (default RUN_DIR/program)")
  lw.add_argument("--lm-head", choices=("chip", "host"), default="chip")
  lw.set_defaults(fn=cmd_lower)

  em = sub.add_parser("emulate", help="run a program bundle token by token (exact integers)")
  em.add_argument("bundle", help="a program bundle directory (mmfree lower) or its run directory")
  em.add_argument("--prompt", default="The")
  em.add_argument("--max-new-tokens", type=int, default=32)
  em.add_argument("--out", default=None, help="activity JSON (default BUNDLE/emulate.json)")
  em.set_defaults(fn=cmd_emulate)

  ms = sub.add_parser(
    "measure", help="a bundle's activity on a backend through the Loihi 2 cost model; --fit "
    "fits the cost model's constants to measured rows")  # fmt: skip
  ms.add_argument("bundle", nargs="?", help="a program bundle or the run directory holding it")
  ms.add_argument("--backend", choices=("emulator", "lava"), default="emulator")
  ms.add_argument("--prompt", default=PROMPT)
  ms.add_argument("--max-new-tokens", type=int, default=16)
  ms.add_argument("--constants", default=None, help="hardware constants file (JSON or TOML)")
  ms.add_argument("--weights", choices=("min", "8bit"), default="min",
                  help="stored weight width: the values' own (2 bits ternary) or 8 bits "
                  "(the published 370M)")  # fmt: skip
  ms.add_argument("--placement", choices=("pack", "block"), default="pack", help="fill chips in "
                  "order, or give each block chips of its own")  # fmt: skip
  ms.add_argument("--verify", action="store_true", help="check every integer against the emulator")
  ms.add_argument("--hardware", action="store_true", help="Lava on a Loihi 2 (needs lava-loihi)")
  ms.add_argument("--venv", default=".venv-lava", help="the Lava environment (mmfree lava setup)")
  ms.add_argument("--timeout", type=float, default=1800, help="seconds before Lava is killed")
  ms.add_argument("--fit", default=None, help="measured rows (JSON or CSV: run, tokens_per_s, "
                  "mj_per_token[, phase, role]) to fit the constants to")  # fmt: skip
  ms.add_argument("--free", default=None, help="comma-separated constants the fit may change")
  ms.add_argument("--hold-out", default=None, help="with --fit, comma-separated 0-based indices "
                  "of rows to predict, not fit (as a row's role: holdout); a fit is validated "
                  "only with held-out rows and more fitted figures than free ones")  # fmt: skip
  ms.add_argument("--out", default=None, help="report JSON (default RUN/measure.json); with "
                  "--fit, the fitted constants file (default constants.fitted.json)")  # fmt: skip
  ms.set_defaults(fn=cmd_measure)

  lv = sub.add_parser("lava", help="the Lava environment")
  lv_sub = lv.add_subparsers(dest="lava_cmd", required=True)
  ls = lv_sub.add_parser(
    "setup", help="create the Python 3.10 environment with lava-nc (idempotent)"
  )
  ls.add_argument("--venv", default=".venv-lava")
  ls.set_defaults(fn=cmd_lava_setup)

  sweep.add_parser(sub)
  search.add_parser(sub)
  results.add_parser(sub)
  return p


def main(argv=None):
  args, extra = parser().parse_known_args(argv)
  try:
    code = args.fn(args, extra)
  except BaseException as e:
    if "mmfree.algorithms.distributed" in sys.modules and not isinstance(e, SystemExit):
      # the other processes of a multi-process run stop too, with this message
      sys.modules["mmfree.algorithms.distributed"].report_failure(e)
    if isinstance(e, ValueError | FileNotFoundError | FloatingPointError | RuntimeError |
                  TimeoutError):  # fmt: skip
      sys.exit(f"mmfree {args.cmd}: error: {e}")
    raise
  if code:
    sys.exit(code)


if __name__ == "__main__":
  main()
