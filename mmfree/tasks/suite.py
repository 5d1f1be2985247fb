"""Tasks × precisions on one model: `mmfree eval --tasks`, the `tasks` stage and the adapter.

Precisions are the model's (`float`, `bitnet`, `hw`, through `mmfree.load`) and `program`: the
run's lowered bundle in the emulator, whose integer logits are the chip's. `hw` and `program`
score the same integers through the same `continuation_scores`, so their answers must agree
example by example; a disagreement is a bug and is refused.
"""

import time
from collections.abc import Sequence
from pathlib import Path

import threadpoolctl

from mmfree.algorithms import lower
from mmfree.algorithms.load import SCORE_CHUNK, chunk_scores, load
from mmfree.core import digest, files
from mmfree.core.files import PROGRAM, read_json
from mmfree.data.tokenizers import load_tokenizer
from mmfree.loihi import bundle_io, emulate, program
from mmfree.store import checkpoint
from mmfree.tasks import docs as taskdocs
from mmfree.tasks import metrics, requests
from mmfree.tasks.score import MAX_LEN, Scorer, loglikelihoods

PRECISIONS = ("float", "bitnet", "hw", "program")


def program_dir(model_dir: Path) -> Path:
  """The run's bundle, refused unless it was lowered from the run's checkpoint and scales now."""
  bundle = Path(model_dir) / PROGRAM
  manifest = read_json(bundle / program.MANIFEST)
  if manifest is None:
    raise FileNotFoundError(
      f"{bundle}: no program bundle; precision 'program' scores the lowered program: run "
      f"`mmfree quantize calibrate {model_dir}` and `mmfree lower {model_dir}` first"
    )
  recorded = manifest.get("provenance", {}).get("inputs") or {}
  now = lower.inputs(model_dir, recorded.get("lm_head", "chip"))
  if recorded != now:
    raise ValueError(
      f"{bundle} was lowered from another checkpoint or calibration than {model_dir}'s current "
      f"one: rerun `mmfree lower {model_dir}`"
    )
  return bundle


def program_scorer(emu: emulate.Emulator) -> Scorer:
  """Scores the emulator's logits of its program, token by token as the chip runs."""

  def score(tokens_BxT, targets_BxT, mask_BxT):
    # a batch's matmuls are small (rows × one population): BLAS threads only contend (13× slower
    # at 16 rows measured on 2 cores beside JAX's threads)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
      logits_BxTxV = emu.run(tokens_BxT).logits
    chunks = (
      logits_BxTxV[:, s : s + SCORE_CHUNK] for s in range(0, len(logits_BxTxV[0]), SCORE_CHUNK)
    )
    return chunk_scores(chunks, targets_BxT, mask_BxT)

  return score


def scorer(model_dir: Path, precision: str) -> Scorer:
  if precision == "program":
    return program_scorer(emulate.Emulator(bundle_io.load(program_dir(model_dir))))
  return load(model_dir, precision).loglikelihood


def inputs(model_dir: Path, precision: str, sources: dict, settings: dict) -> dict:
  """What one precision's task scores depend on: the weights, the scales (`hw`), the program's
  content (`program`), each task's data (its content, wherever the file is), the settings."""
  return {
    "checkpoint": checkpoint.checkpoint_id(model_dir),
    "quant": files.quant_id(model_dir) if precision in ("hw", "program") else None,
    "program": bundle_io.content_sha256(program_dir(model_dir)) if precision == "program" else None,
    "tasks": {n: {k: v for k, v in s.items() if k != "file"} for n, s in sources.items()},
    "settings": settings,
  }


def score_precision(model_dir: Path, precision: str, loaded: dict, encoded: dict, batch: int,
                    max_len: int | None, progress: bool,
                    score: Scorer | None = None) -> dict:  # fmt: skip
  """{"metrics": {task: ...}, "examples": {task: per-example scores}, "throughput"} of one
  precision: every task's requests scored in one length-sorted pass (by `score`, already
  loaded and compiled, or loaded here)."""
  t0 = time.perf_counter()
  score = score or scorer(model_dir, precision)
  pairs = [p for n in loaded for doc_pairs in encoded[n] for p in doc_pairs]
  ll, greedy, stats = loglikelihoods(score, pairs, batch, max_len, progress, f"tasks {precision}")
  out, i = {"metrics": {}, "examples": {}}, 0
  for n, (docs, _) in loaded.items():
    k = sum(len(d.pairs) for d in docs)
    scores = metrics.per_doc(taskdocs.TASKS[n].kind, docs, ll[i : i + k], greedy[i : i + k])
    i += k
    out["metrics"][n] = metrics.aggregate(scores)
    out["examples"][n] = {m: v.tolist() for m, v in scores.items()}
  examples, s = sum(len(d) for d, _ in loaded.values()), stats["seconds"]
  out["throughput"] = {**stats, "examples": examples, "examples_per_s": examples / s,
                       "tokens_per_s": stats["tokens"] / s,
                       "total_seconds": time.perf_counter() - t0}  # fmt: skip
  return out


def evaluate(model_dir, names: Sequence[str], precisions: Sequence[str], tasks_dir=None,
             limit: int | None = None, batch: int = 16, max_len: int | None = MAX_LEN,
             old: dict | None = None, progress: bool = True, log=print,
             save=None) -> dict:  # fmt: skip
  """`tasks.json`'s content: {"tasks", "settings", "precisions": {precision: {"inputs",
  "metrics", "examples", "throughput"}}}. A precision of `old` whose recorded inputs are the
  ones now is kept, not rescored; `save(out)` after each precision scored, so an interrupted
  evaluation resumes from there."""
  model_dir = Path(model_dir)
  bad = [p for p in precisions if p not in PRECISIONS]
  if bad:
    raise ValueError(f"task precisions: unknown {bad}; choose from {', '.join(PRECISIONS)}")
  names = taskdocs.parse(names)
  loaded = {n: taskdocs.load(n, tasks_dir, limit) for n in names}
  sources = {n: s for n, (_, s) in loaded.items()}
  settings = {"tasks": list(names), "limit": limit, "max_len": max_len}
  encoded = None
  out = {"tasks": list(names), "settings": settings, "sources": sources, "precisions": {}}
  for precision in precisions:
    wanted = inputs(model_dir, precision, sources, settings)
    entry = ((old or {}).get("precisions") or {}).get(precision)
    changed = digest.changed(entry and entry.get("inputs"), wanted)
    if not changed:
      out["precisions"][precision] = entry
      continue
    if entry is not None:
      log(f"tasks {precision}: rescored, {digest.why(changed)}")
    if encoded is None:
      tok = load_tokenizer(model_dir)
      encoded = {n: requests.encode_docs(tok, d) for n, (d, _) in loaded.items()}
    r = score_precision(model_dir, precision, loaded, encoded, batch, max_len, progress)
    out["precisions"][precision] = {"inputs": wanted, **r}
    if save is not None:
      save({**(old or {}), **out, "precisions": {**((old or {}).get("precisions") or {}),
                                                 **out["precisions"]}})  # fmt: skip
  check_program(out)
  return out


def check_program(out: dict):
  """`hw` and `program` answers are the same example by example, or a bug is reported."""
  by = out["precisions"]
  if "hw" not in by or "program" not in by:
    return
  for n, hw_scores in by["hw"]["examples"].items():
    for m, hw in hw_scores.items():
      if m == "ll":  # the answers, not float sums
        continue
      got = by["program"]["examples"][n][m]
      diff = [i for i, (a, b) in enumerate(zip(hw, got, strict=True)) if a != b]
      if diff:
        raise ValueError(
          f"task {n}: the program's {m} differs from the `hw` model's on {len(diff)} examples "
          f"(first: {diff[0]}); they run the same integers, so the program is stale or wrong: "
          "rerun `mmfree lower` and the emulate stage's check"
        )


def _cell(r: dict, m: str, diff: tuple | None) -> str:
  se = r.get(f"{m}_stderr")
  s = f"{r[m]:.4f}" + (f"±{se:.4f}" if se is not None else "")
  if diff is not None:
    s += f" ({diff[0]:+.4f}" + (f"±{diff[1]:.4f})" if diff[1] is not None else ")")
  return s


def table(out: dict, baseline: str = "bitnet") -> str:
  """Task × precision: each metric ± stderr, and (difference to `baseline` ± its paired stderr)."""
  by = out["precisions"]
  header = ["task", "metric", "n", *by]
  rows = []
  for n in out["tasks"]:
    first = next(iter(by.values()))["metrics"][n]
    for m in ("acc", "acc_norm", "perplexity"):
      if m not in first:
        continue
      cells = []
      for p, r in by.items():
        diff = None
        if m != "perplexity" and p != baseline and baseline in by:
          diff = metrics.paired_diff(r["examples"][n][m], by[baseline]["examples"][n][m])
        cells.append(_cell(r["metrics"][n], m, diff))
      rows.append([n, m, str(first["n"]), *cells])
  rows.append(["average", "acc", "", *[f"{a:.4f}" for a in average(out).values()]])
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def average(out: dict) -> dict[str, float]:
  """{precision: `avg_acc`} of a tasks.json."""
  return {p: metrics.avg_acc(r["metrics"]) for p, r in out["precisions"].items()}
