"""The lm-evaluation-harness adapter: `lm_eval --model mmfree` through `mmfree lm-eval`.

`MMfreeLM` is an `lm_eval.api.model.TemplateLM` (lm-eval does the context/continuation
tokenization) registered as "mmfree" with `register_model`, as lm-eval documents for external
models. lm-eval 0.4 discovers no models outside its own package, so `mmfree lm-eval ARGS` imports
this module and then runs lm-eval's own command line on ARGS: every lm-eval flag works.

  mmfree lm-eval --model_args pretrained=DIR,precision=hw --tasks arc_easy,piqa [--limit N]

Model args: `pretrained` (a run or Hugging Face checkpoint directory), `precision` (float,
bitnet, hw, program; default: the model's own), `max_length` (default 2048, as lm-eval's `hf`),
and lm-eval's `batch_size` (sequences per scoring batch).
"""

import os
import sys
from pathlib import Path

import numpy as np
import yaml
from lm_eval.__main__ import cli_evaluate
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from mmfree.algorithms.load import load
from mmfree.data.tokenizers import load_tokenizer
from mmfree.loihi import bundle_io, emulate
from mmfree.store import checkpoint
from mmfree.tasks import docs, requests, suite
from mmfree.tasks.score import MAX_LEN, loglikelihoods


@register_model("mmfree")
class MMfreeLM(TemplateLM):
  """A run or checkpoint directory at one precision, scored as `mmfree eval --tasks` scores it."""

  def __init__(self, pretrained: str, precision: str | None = None, max_length: int = MAX_LEN,
               batch_size: int | str = 16, **_):  # fmt: skip
    super().__init__()  # lm-eval's other args (device, max_batch_size) have no meaning here
    self.path = Path(pretrained)
    self.precision = precision or checkpoint.read_config_of(self.path).precision
    if self.precision not in suite.PRECISIONS:
      raise ValueError(f"precision={self.precision!r}: choose from {suite.PRECISIONS}")
    self.tok = load_tokenizer(self.path)
    if self.tok is None:
      raise ValueError(f"{self.path}: no tokenizer files; lm-eval's tasks are text")
    self.max_length = int(max_length)
    self.batch = int(batch_size) if str(batch_size).isdigit() else 16  # "auto": the default
    if self.precision == "program":  # the chip's logits and its own greedy generation
      self._emu = emulate.Emulator(bundle_io.load(suite.program_dir(self.path)))
      self._score = suite.program_scorer(self._emu)
    else:
      self._lm = load(self.path, self.precision)
      self._score = self._lm.loglikelihood

  @property
  def eot_token_id(self) -> int:
    return requests.prefix_id(self.tok)

  @property
  def tokenizer_name(self) -> str:
    return str(self.path)

  def tok_encode(self, string: str, add_special_tokens=None, **_) -> list[int]:
    return list(self.tok.encode(string))  # no bos, as lm-eval's `hf` for causal models

  def tok_decode(self, ids) -> str:
    return self.tok.decode(list(ids))

  def _loglikelihood_tokens(self, reqs, disable_tqdm: bool = False, **_):
    pairs = [(tuple(c), tuple(x)) for _, c, x in reqs]
    ll, greedy, _ = loglikelihoods(self._score, pairs, self.batch, self.max_length,
                                   not disable_tqdm, f"lm-eval {self.precision}")  # fmt: skip
    out = [(float(a), bool(g)) for a, g in zip(ll, greedy, strict=True)]
    for (key, _, _), r in zip(reqs, out, strict=True):
      self.cache_hook.add_partial("loglikelihood", key, r)
    return out

  def loglikelihood_rolling(self, reqs, disable_tqdm: bool = False) -> list[float]:
    """The whole text's log-likelihood, in lm-eval's disjoint windows of `max_length`."""
    windows = []
    for i, (text,) in enumerate(r.args for r in reqs):
      rolling = get_rolling_token_windows(self.tok_encode(text), self.eot_token_id,
                                          self.max_length, 1)  # fmt: skip
      windows += [(i, tuple(c), tuple(x)) for c, x in map(make_disjoint_window, rolling)]
    ll, _, _ = loglikelihoods(self._score, [(c, x) for _, c, x in windows], self.batch,
                              self.max_length, not disable_tqdm, "lm-eval rolling")  # fmt: skip
    totals = np.zeros(len(reqs))
    np.add.at(totals, [i for i, _, _ in windows], ll)
    for r, t in zip(reqs, totals, strict=True):
      self.cache_hook.add_partial("loglikelihood_rolling", (r.args[0],), float(t))
    return totals.tolist()

  def generate_until(self, reqs, disable_tqdm: bool = False) -> list[str]:
    """Greedy (or sampled, with `temperature` > 0) continuations, cut at the first `until`."""
    out = []
    for r in tqdm(reqs, desc="lm-eval generate", disable=disable_tqdm):
      context, kw = r.args
      until = kw.get("until") or [self.tok_decode([self.eot_token_id])]
      until = [until] if isinstance(until, str) else list(until)
      temperature = float(kw.get("temperature", 0.0)) if kw.get("do_sample") else 0.0
      new = self._generate(self.tok_encode(context), int(kw.get("max_gen_toks", 256)), temperature)
      text = self.tok_decode(new)
      for stop in until:
        text = text.split(stop)[0] if stop else text
      self.cache_hook.add_partial("generate_until", (context, kw), text)
      out.append(text)
    return out

  def _generate(self, prompt: list[int], n: int, temperature: float) -> list[int]:
    prompt = prompt[-self.max_length :] or [self.eot_token_id]
    if self.precision == "program":
      if temperature > 0:
        raise ValueError("precision=program generates greedily: drop do_sample")
      return self._emu.run([prompt], n).new[0].tolist()
    return self._lm.generate(np.asarray(prompt), n, temperature=temperature).tolist()


def local_task_yaml(name: str, jsonl: Path, out_dir: Path) -> str:
  """An lm-eval task definition over a JSONL file in the query/choices/gold (multiple choice) or
  context_options/continuation/gold (schema) layout; returns its lm-eval task name."""
  kind = docs.TASKS[name].kind
  fields = {docs.CHOICE: ("query", "choices", "gold"),
            docs.SCHEMA: ("gold", "context_options", "continuation")}  # fmt: skip
  if kind not in fields:
    raise ValueError(f"{name}: only multiple-choice and schema tasks have a local layout")
  text, choice, target = fields[kind]  # a schema task's doc_to_text is the gold index (an int)
  task = f"mmfree_local_{name}"
  spec = {
    "task": task,
    "dataset_path": "json",
    "dataset_kwargs": {"data_files": {"test": str(Path(jsonl).absolute())}},
    "test_split": "test",
    "output_type": "multiple_choice",
    "doc_to_text": text,
    "doc_to_choice": choice,
    "doc_to_target": target,
    "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                    for m in (("acc",) if kind == docs.SCHEMA else ("acc", "acc_norm"))],
    "metadata": {"version": 1.0},
  }  # fmt: skip
  Path(out_dir).mkdir(parents=True, exist_ok=True)
  (Path(out_dir) / f"{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
  return task


def main(argv: list[str]):
  """lm-eval's command line with the mmfree model registered (`--model mmfree` by default)."""
  os.environ.setdefault("DISABLE_MULTIPROC", "1")  # lm-eval's bootstrap forks: JAX is threaded
  if "--model" not in argv and not any(a.startswith("--model=") for a in argv):
    argv = ["--model", "mmfree", *argv]
  sys.argv = ["lm-eval", *argv]
  cli_evaluate()
