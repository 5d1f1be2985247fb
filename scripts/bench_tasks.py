"""Zero-shot task scoring throughput against the eval forward pass, in one process.

  uv run python scripts/bench_tasks.py RUN --tasks-dir DIR [--tasks arc_easy,piqa,winogrande]
      [--limit 200] [--precisions bitnet,hw] [--batch 16]

For each precision: the forward pass of `mmfree eval` (next-token loss on [batch, 128] windows,
compiled first), then `mmfree eval --tasks`'s scoring of the same tasks twice with one
scorer, cold (its compilation included) and warm. Prints examples/s, tokens/s of the requests
(padding left out), the padded share, and warm task tokens/s over forward-pass tokens/s.
"""

import argparse
import time

import numpy as np

from mmfree.algorithms.load import load
from mmfree.data.tokenizers import load_tokenizer
from mmfree.tasks import docs, requests, suite


def forward_tokens_per_s(lm, batch: int, seq: int, reps: int = 4) -> float:
  windows = np.random.default_rng(0).integers(0, lm.config.vocab_size, (batch, seq + 1))
  lm.token_nll(windows)  # compile
  t0 = time.perf_counter()
  for _ in range(reps):
    lm.token_nll(windows)
  return reps * batch * seq / (time.perf_counter() - t0)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("run")
  p.add_argument("--tasks-dir", required=True)
  p.add_argument("--tasks", default="arc_easy,piqa,winogrande")
  p.add_argument("--limit", type=int, default=200)
  p.add_argument("--precisions", default="bitnet,hw")
  p.add_argument("--batch", type=int, default=16)
  a = p.parse_args()
  names = docs.parse(a.tasks)
  loaded = {n: docs.load(n, a.tasks_dir, a.limit) for n in names}
  tok = load_tokenizer(a.run)
  encoded = {n: requests.encode_docs(tok, d) for n, (d, _) in loaded.items()}
  print(f"{a.run}: {', '.join(names)}, {a.limit} examples each, batch {a.batch}")
  print("| precision | forward tokens/s | cold s | warm s | examples/s | task tokens/s | "
        "padded | task / forward |")  # fmt: skip
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for precision in a.precisions.split(","):
    fwd = forward_tokens_per_s(load(a.run, precision), a.batch, 128)
    score = suite.scorer(a.run, precision)
    cold = suite.score_precision(a.run, precision, loaded, encoded, a.batch, 2048, False, score)
    warm = suite.score_precision(a.run, precision, loaded, encoded, a.batch, 2048, False, score)
    t = warm["throughput"]
    padded = 1 - t["tokens"] / t["padded_tokens"]
    print(f"| {precision} | {fwd:,.0f} | {cold['throughput']['seconds']:.1f} | "
          f"{t['seconds']:.1f} | {t['examples_per_s']:.1f} | {t['tokens_per_s']:,.0f} | "
          f"{padded:.0%} | {t['tokens_per_s'] / fwd:.2f} |")  # fmt: skip


if __name__ == "__main__":
  main()
