"""lm-evaluation-harness's metrics from per-request log-likelihoods.

`acc`: the choice of largest log-likelihood is gold; `acc_norm`: of largest log-likelihood per
character of the choice string (lm-eval's `completion_len`, the string without the delimiter);
a schema task reports `acc` only, as lm-eval's WinoGrande; a cloze task reports `acc` (the target
is the greedy continuation) and `perplexity` = exp(−mean log-likelihood). stderr of a mean is
lm-eval's `mean_stderr` (sample standard deviation over √n); perplexity's by the delta method
(lm-eval bootstraps it, so the two differ in the last digits).
"""

import math
from collections.abc import Sequence

import numpy as np

from mmfree.tasks.docs import CLOZE, SCHEMA, Doc


def mean_stderr(x) -> float | None:
  x = np.asarray(x, np.float64)
  return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None


def per_doc(kind: str, docs: Sequence[Doc], ll_N, greedy_N) -> dict[str, np.ndarray]:
  """Per example: `pred` (and `pred_norm`) and the 0/1 scores `acc` (and `acc_norm`); for a
  cloze task `acc` and the target's log-likelihood `ll`. `ll_N` / `greedy_N` are per pair."""
  out = {"pred": [], "acc": []} if kind != CLOZE else {"acc": [], "ll": []}
  if kind not in (CLOZE, SCHEMA):
    out |= {"pred_norm": [], "acc_norm": []}
  i = 0
  for d in docs:
    lls, greedy = np.asarray(ll_N[i : i + len(d.pairs)]), greedy_N[i : i + len(d.pairs)]
    i += len(d.pairs)
    if kind == CLOZE:
      out["acc"].append(int(greedy[0]))
      out["ll"].append(float(lls[0]))
      continue
    pred = int(np.argmax(lls))
    out["pred"].append(pred)
    out["acc"].append(int(pred == d.gold))
    if "pred_norm" in out:
      pred_norm = int(np.argmax(lls / np.array([float(len(c)) for c in d.choices])))
      out["pred_norm"].append(pred_norm)
      out["acc_norm"].append(int(pred_norm == d.gold))
  return {k: np.asarray(v) for k, v in out.items()}


def aggregate(scores: dict[str, np.ndarray]) -> dict:
  """{metric, metric_stderr, n} over the examples of one task at one precision."""
  out = {"n": len(scores["acc"])}
  for m in ("acc", "acc_norm"):
    if m in scores:
      out[m], out[f"{m}_stderr"] = float(scores[m].mean()), mean_stderr(scores[m])
  if "ll" in scores:
    ppl = math.exp(-float(scores["ll"].mean()))
    se = mean_stderr(scores["ll"])
    out["perplexity"], out["perplexity_stderr"] = ppl, None if se is None else ppl * se
  return out


def paired_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float | None]:
  """(mean(a − b), its stderr) of two precisions' 0/1 scores on the same examples."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  return float(d.mean()), mean_stderr(d)


def avg_acc(metrics_by_task: dict) -> float:
  """The mean over tasks of `acc`: the accuracy axis of accuracy against energy."""
  return float(np.mean([m["acc"] for m in metrics_by_task.values()]))
