"""The 370M MatMul-free LM on Loihi 2: the cost model's prediction beside the published figures.

  uv run mmfree run experiments/paper_loihi2_370m.py --workdir runs/paper_370m       # ~8 min
  uv run mmfree run experiments/paper_loihi2_370m.py --workdir runs/paper_370m \\
      --config.loihi.constants=experiments/loihi2_370m_fitted.json   # re-measures only
  huggingface-cli download ridger/MMfreeLM-370M --local-dir ckpt/MMfreeLM-370M   # with internet
  uv run mmfree run experiments/paper_loihi2_370m.py --workdir runs/paper_370m_ckpt \\
      --config.train.init_from=ckpt/MMfreeLM-370M   # the published weights: the zero-shot table
  # (tasks from the Hugging Face datasets; offline: --config.eval.tasks_dir=DIR of JSONL files;
  #  on a CPU, --config.eval.tasks_limit=200 scores the first 200 examples of each task)
  uv run mmfree run experiments/paper_loihi2_370m.py:smoke --workdir /tmp/paper    # seconds

Reproduces the hardware comparison of Zhu et al. (arXiv:2406.02528 v6/v7) and Abreu et al.
(arXiv:2503.18002), and the accuracy side: the zero-shot tasks of the MatMul-free LM paper's
Table 1 (ARC-E/C, HellaSwag, OpenBookQA, PIQA, WinoGrande, plus LAMBADA) at `bitnet` and `hw`,
beside the published figures when `train.init_from` is the published checkpoint. The `370m`
preset (hidden 1024, 24 blocks, vocabulary 32000) with its random initialization (ternary
absmean of normal weights: about 30% zeros; `train.init_from` takes a trained or imported
checkpoint instead), calibrated on held-out text of the embedded corpus,
lowered (fused neurons, lm_head on chip), checked bit-exact against the `hw` model, mapped, and
run through the emulator on 32 held-out tokens plus 8 generated; the activity goes through the
cost model with the sourced, unfitted constants of `mmfree.loihi.hardware` (or
`--config.loihi.constants=FILE`, e.g. one fitted by `mmfree measure --fit`).

Measured (2-core CPU, ~10 min, random weights; `mmfree measure RUN --weights 8bit`, 39 tokens):
339 populations, 464,128 neurons; 8-bit weights (the published deployment's) fill 2,942 cores on
23 chips (cores bound by memory; chips by their 128 cores); 307M synaptic operations per token
(zero weights of dense groups included); 267 timesteps per token. Neuron updates are priced by
the instructions traced from each kind's kernel (MLGRU 290 a neuron, 19x a LIF update; GLU 163;
product 16): 464k updates a token weigh 2.4M LIF updates. Unfitted, with the sourced constants:
generation 54.3 tokens/s (0.91x the published 59.4) at 91.5 mJ/token (1.29x the published 70.8).
Static power (the measured 0.213 W a Loihi 2 board) is 99% of the energy (dynamic 0.76 mJ:
synops 0.60, inter-chip 0.14, updates 0.016; idle neurons 0.53 mJ); messages set 60% of the
generation time (synops 21%, idle neurons 7%, chip links 7%, barriers 4%, updates 2%). Stored at
their own 2 bits, the weights fit 8 chips: 48.2 tokens/s at 36.5 mJ/token; "block" placement (a
chip group per block) 56.7 tokens/s at 98.9 mJ/token (8-bit). `experiments/loihi2_370m_fitted.json`
(`mmfree measure --fit` on the two published figures: time.synop 0.217 ns, energy.static 0.180 W
a chip) is calibrated, not validated (2 figures, 2 free constants); it predicts TTFT at a
500-token prompt of 421 ms, beside the published 6.6x advantage over a Jetson Orin Nano (whose
TTFT is not published). Prefill is message-bound at lm_head.in: one core of 1,024 neurons sends
each value to every lm_head core (663 us a timestep); spreading such a source over more cores is
a placement the mapper does not make yet.
"""

from pathlib import Path

from mmfree import configs
from mmfree.core import reference
from mmfree.core.files import CHECKPOINTS, TASKS, read_json
from mmfree.loihi import measure as measuring
from mmfree.loihi.cost import PROMPTS
from mmfree.tasks import docs, suite


def get_config(arg: str = "default"):
  c = configs.base_config("370m")
  c.stages = ("train", "calibrate", "lower", "emulate", "measure", "tasks")
  c.model.precision = "bitnet"
  c.train.steps = 0  # the initialization (or init_from's weights), saved as step 0
  c.train.vocab_size = 32000  # the published checkpoints' vocabulary
  c.train.seq_len = 64
  c.eval.calib_batches = 2
  c.eval.calib_batch_size = 2
  c.loihi.check_tokens = 16
  c.loihi.measure_tokens = 32
  c.loihi.new_tokens = 8
  # The published deployment stored 8-bit weights (Abreu et al., arXiv:2503.18002: "8-bit
  # weights"; W8 in arXiv:2406.02528 v7's summaries); the chip placement is not published.
  c.loihi.weights = "8bit"
  c.eval.tasks = docs.ALL  # the Hugging Face datasets; offline: --config.eval.tasks_dir=DIR
  c.eval.tasks_precisions = ("bitnet", "hw")
  if arg == "smoke":  # the same stages on a test-sized model
    c.model.hidden_size = 32
    c.model.num_hidden_layers = 2
    c.model.intermediate_size = 64
    c.data.tokenizer = "byte"
    c.train.vocab_size = 512
    c.train.seq_len = 32
    c.eval.tasks = ()  # no hub here: add --config.eval.tasks=... --config.eval.tasks_dir=DIR
  elif arg != "default":
    raise ValueError(f"experiments/paper_loihi2_370m.py: unknown variant {arg!r} (default, smoke)")
  return c


def _fmt(v) -> str:
  return "–".join(f"{x:,.4g}" for x in v) if isinstance(v, tuple) else f"{v:,.4g}"


def _ratio(ours: float, theirs) -> str:
  if isinstance(theirs, tuple):
    return "–".join(f"{ours / t:.3g}x" for t in theirs)
  return f"{ours / theirs:.3g}x"


def published_weights(run_dir: Path) -> bool:
  """Whether the run's weights are a Hugging Face checkpoint's (train.init_from, not trained)."""
  cfg = read_json(Path(run_dir) / "config.json") or {}
  src, steps = cfg.get("train", {}).get("init_from"), cfg.get("train", {}).get("steps")
  return bool(src) and not (Path(src) / CHECKPOINTS).is_dir() and steps == 0


def tasks_report(run_dir: Path) -> str:
  """The zero-shot table per precision; the published 370M figures beside it when the weights
  are a published checkpoint's."""
  out = read_json(Path(run_dir) / TASKS)
  if not out:
    return "no tasks.json yet: the tasks stage has not run"
  lines = ["Zero-shot accuracy (lm-evaluation-harness's definitions; ± stderr; (difference to "
           "bitnet ± its paired stderr)):", "", suite.table(out)]  # fmt: skip
  if not published_weights(run_dir):
    return "\n".join(lines + ["", "Weights: not a published checkpoint (train.init_from unset "
                              "or trained further): no published figures to compare."])  # fmt: skip
  key = "mmfree_370m_zero_shot"
  fig = dict(reference.FIGURES[key].value)
  by = out["precisions"]
  lines += ["", "| task | published % | " + " | ".join(f"{p} acc / acc_norm %" for p in by) + " |",
            "|---|---:|" + "---:|" * len(by)]  # fmt: skip
  for n in out["tasks"]:
    cells = [" / ".join(f"{100 * r['metrics'][n][m]:.1f}" for m in ("acc", "acc_norm")
                        if m in r["metrics"][n]) for r in by.values()]  # fmt: skip
    pub = f"{fig[n]:.1f}" if n in fig else "–"
    lines.append(f"| {n} | {pub} | " + " | ".join(cells) + " |")
  lines.append(f"\nPublished: {reference.cite(key)}: {reference.FIGURES[key].what}.")
  return "\n".join(lines)


def report(run_dir: Path) -> str:
  """The prediction beside the published figures, per-token cost against prompt length, and the
  zero-shot table."""
  m = read_json(Path(run_dir) / "measure.json")
  if not m:
    return "no measure.json yet: the measure stage has not run"
  f = reference.FIGURES
  g = m["generation"]
  rows = [
    ("generation tokens/s", g["tokens_per_s"], "loihi2_370m_tokens_per_s"),
    ("energy mJ/token", g["mj_per_token"], "loihi2_370m_mj_per_token"),
    ("vs edge GPU: tokens/s (Jetson, published)", g["tokens_per_s"],
     "jetson_qwen2_500m_tokens_per_s"),
    ("vs edge GPU: mJ/token (Jetson, published)", g["mj_per_token"],
     "jetson_qwen2_500m_mj_per_token"),
  ]  # fmt: skip
  lines = ["| figure | this prediction | published | prediction / published | source |",
           "|---|---:|---:|---:|---|"]  # fmt: skip
  for what, ours, key in rows:
    fig = f[key]
    lines.append(f"| {what} | {ours:,.4g} | {_fmt(fig.value)} | {_ratio(ours, fig.value)} | "
                 f"{reference.cite(key)}: {fig.what} |")  # fmt: skip
  for key in ("throughput_ratio", "energy_ratio", "ttft_ratio_500"):
    fig = f[key]
    lines.append(f"| published ratio | | {fig.value}x | | {reference.cite(key)}: {fig.what} |")
  e = m["energy_mj_per_token"]
  parts = g["ms_by_part"]
  top = sorted(parts.items(), key=lambda kv: -kv[1])[:3]
  lines += [
    "",
    "Generation time per token by what sets each timestep: "
    + ", ".join(f"{k} {v:.3g} ms ({v / g['ms_per_token']:.0%})" for k, v in top)
    + f"; energy: static {e['static_generation'] / g['mj_per_token']:.0%}.",
    "",
    "The prediction under each stored weight width and chip placement (the same activity):",
    "",
    measuring.placement_table(m),
    "",
    f"Energy per generated token: static {e['static_generation']:.3g} mJ "
    f"({m['resources']['chips']} chips), dynamic {e['dynamic']:.3g} mJ (synops {e['synops']:.3g}, "
    f"messages {e['messages']:.3g}, inter-chip {e['interchip']:.3g}, updates {e['updates']:.3g}), "
    f"idle updates {e['idle_generation']:.3g} mJ; host {m['host']['ms_per_token']:.3g} ms a "
    "token, outside the power boundary.",
    f"Constants: {m['constants_file'] or 'mmfree.loihi.hardware.DEFAULT (sourced, unfitted)'}.",
    "",
    "Sequence scaling: Loihi 2's cost per generated token does not depend on the context (the "
    "MLGRU keeps O(1) state); a transformer's attention grows with it. Published Jetson figures "
    "for Qwen2-500M span "
    f"{_fmt(f['jetson_qwen2_500m_tokens_per_s'].value)} tokens/s and "
    f"{_fmt(f['jetson_qwen2_500m_mj_per_token'].value)} mJ/token over generation lengths "
    f"({reference.cite('jetson_qwen2_500m_tokens_per_s')}; per-length values not given).",
    "",
    "| prompt tokens | TTFT (ms) | generation ms/token | mJ/token |",
    "|---:|---:|---:|---:|",
  ]
  for n in PROMPTS:
    lines.append(f"| {n} | {m['ttft_ms'][str(n)]:,.4g} | {g['ms_per_token']:.4g} | "
                 f"{g['mj_per_token']:.4g} |")  # fmt: skip
  return "\n".join(lines) + "\n\n" + tasks_report(run_dir)
