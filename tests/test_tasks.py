"""Zero-shot tasks: scores computed by hand from `lm.logits`, lm-eval's own tokenization and
preprocessing, the JSONL layouts and their errors, metrics, padding and chunks."""

import hashlib
import importlib.util
import json
import math
import sys
from pathlib import Path

import jax
import lm_eval
import numpy as np
import pytest
import yaml
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from lm_eval.api import metrics as lm_metrics
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM

from mmfree.algorithms.load import SCORE_CHUNK, LanguageModel, padded_length
from mmfree.data.tokenizers import ByteTokenizer, SentencePieceTokenizer, train_bpe
from mmfree.models import MMfreeLM, preset
from mmfree.tasks import docs, metrics, requests, score

sys.path.insert(0, str(Path(__file__).parent))  # the lava-nc wheel owns the name `tests`
from sp_model import train_sentencepiece  # noqa: E402

TEXTS = [
  "The quick brown fox jumps over the lazy dog.",
  "A cat sat on the mat and the dog sat on the log.",
  "Question: What do plants need to grow?\nAnswer: water and light.",
  "The trophy does not fit in the suitcase because it is too big.",
  "Unicode: naïve café, 日本語, emoji 🦊.",
] * 20

# Contexts and continuations lm-eval's tokenization has to get right.
TRICKY = [
  ("Question: What do plants need to grow?\nAnswer:", " water and light."),
  ("Question: What do plants need to grow?\nAnswer: ", "water"),  # trailing space moves
  ("Answer:\n\n", " yes"),  # trailing newlines move
  ("x \t ", " y"),
  ("The quick brown fox jumps over the la", "zy dog."),  # no leading space: merges
  ("The troph", "y does not fit"),
  ("Unicode: naïve caf", "é, 日本語, emoji 🦊."),
  ("日本", "語"),
  ("  ", "abc"),  # all whitespace: the context encodes to nothing
]


@pytest.fixture(scope="module")
def bpe():
  return train_bpe(TEXTS, vocab_size=400)  # every merge: whole words are tokens


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
  return SentencePieceTokenizer.from_file(train_sentencepiece(TEXTS, tmp_path_factory.mktemp("sp")))


@pytest.fixture(scope="module")
def lm(bpe):
  cfg = preset("tiny", vocab_size=bpe.vocab_size, bos_token_id=bpe.bos_id, eos_token_id=bpe.eos_id)
  model = MMfreeLM(cfg, nnx.Rngs(0))
  model.lower_bounds[...] = jax.random.normal(jax.random.key(1), model.lower_bounds.shape)
  return LanguageModel(model, bpe)


# -- scores by hand -------------------------------------------------------------------------------


def lm_eval_pair(encode, context: str, continuation: str):
  """lm-eval's rule, written out: trailing whitespace of the context joins the continuation,
  the continuation's ids are the whole's after the context's own."""
  n = len(context) - len(context.rstrip())
  if n:
    context, continuation = context[:-n], context[-n:] + continuation
  ctx_ids, whole = encode(context), encode(context + continuation)
  return list(ctx_ids), list(whole[len(ctx_ids) :])


def hand_score(lm, ctx_ids, cont_ids, max_len=None):
  """(log-likelihood, greedy) of one pair from one unpadded `lm.logits` call, as lm-eval's `hf`
  model reads it: input (context + continuation)[-(max_len + 1):][:-1]."""
  seq_T = np.asarray(ctx_ids + cont_ids, np.int32)
  if max_len is not None:
    seq_T = seq_T[-(max_len + 1) :]
  logits_TxV = lm.logits(seq_T[None, :-1])[0].astype(np.float64)
  m_T = logits_TxV.max(-1, keepdims=True)
  logp_TxV = logits_TxV - m_T - np.log(np.exp(logits_TxV - m_T).sum(-1, keepdims=True))
  pos_C = np.arange(len(seq_T) - 1 - len(cont_ids), len(seq_T) - 1)
  targets_C = np.asarray(cont_ids)
  ll = float(logp_TxV[pos_C, targets_C].sum())
  return ll, bool(np.all(logits_TxV[pos_C].argmax(-1) == targets_C))


def three_docs():
  """Three examples; their sequences have two lengths (11 and 14 tokens), one chunk."""
  # 1. multiple choice with lm-eval's target_delimiter "": the continuation starts mid-word, so
  #    its first characters merge with the context's last token.
  ctx = "The quick brown fox jumps over the la"
  answers = ("te cat.", "te dog.", "wn.")
  spans = docs.Doc(tuple((ctx, a) for a in answers), answers, 1)
  # 2. lm-eval's ordinary multiple choice (delimiter " ").
  plain = docs.multiple_choice("Question: What do plants need to grow?\nAnswer:",
                               ["water and light", "the lazy dog", "the log."], 0)  # fmt: skip
  # 3. a WinoGrande pair: two contexts, one continuation.
  wino = docs.schema(["The trophy does not fit in the suitcase because the trophy",
                      "The trophy does not fit in the suitcase because the suitcase"],
                     "is too big.", 0)  # fmt: skip
  return spans, plain, wino


def test_scores_equal_hand_computation_from_logits(lm, bpe):
  spans, plain, wino = three = three_docs()
  assert spans.pairs[0] == ("The quick brown fox jumps over the la", "te cat.")
  assert plain.pairs[1] == ("Question: What do plants need to grow?\nAnswer:", " the lazy dog")
  assert wino.pairs == (
    ("The trophy does not fit in the suitcase because the trophy", " is too big."),
    ("The trophy does not fit in the suitcase because the suitcase", " is too big."),
  )
  # The first continuation spans a token boundary: the whole's tokens do not start with the
  # context's, and lm-eval scores the whole's tail after the context's own tokens.
  c, x = spans.pairs[0]
  ctx_ids, whole = bpe.encode(c), bpe.encode(c + x)
  assert whole[: len(ctx_ids)] != ctx_ids
  hand_pairs = [lm_eval_pair(bpe.encode, c, x) for d in three for c, x in d.pairs]
  assert hand_pairs[0][0] + hand_pairs[0][1] != whole  # lm-eval's input is not the text's ids

  pairs = [p for doc_pairs in requests.encode_docs(bpe, three) for p in doc_pairs]
  assert pairs == [(tuple(a), tuple(b)) for a, b in hand_pairs]
  expected = [hand_score(lm, a, b) for a, b in hand_pairs]
  ll_N, greedy_N, stats = score.loglikelihoods(lm.loglikelihood, pairs, batch=2)
  np.testing.assert_allclose(ll_N, [e[0] for e in expected], rtol=1e-4)
  np.testing.assert_array_equal(greedy_N, [e[1] for e in expected])
  assert ll_N.dtype == np.float64 and stats["requests"] == stats["sequences"] == len(pairs) == 8
  assert stats["tokens"] == sum(len(a) + len(b) - 1 for a, b in hand_pairs)

  # acc / acc_norm by hand: argmax of the log-likelihoods, and of them per character of the
  # choice strings (the answers for multiple choice, the contexts for WinoGrande).
  lls = np.array([e[0] for e in expected])
  got_choice = metrics.per_doc(docs.CHOICE, [spans, plain], ll_N[:6], greedy_N[:6])
  got_schema = metrics.per_doc(docs.SCHEMA, [wino], ll_N[6:], greedy_N[6:])
  assert set(got_schema) == {"pred", "acc"}
  for got, j, d, lls_C in [(got_choice, 0, spans, lls[:3]), (got_choice, 1, plain, lls[3:6]),
                           (got_schema, 0, wino, lls[6:])]:  # fmt: skip
    assert np.sort(lls_C)[-1] - np.sort(lls_C)[-2] > 1e-3  # a margin: the argmax is stable
    pred = int(np.argmax(lls_C))
    assert got["pred"][j] == pred and got["acc"][j] == int(pred == d.gold)
    if d is not wino:
      norm_C = lls_C / np.array([len(s) for s in d.choices], np.float64)
      assert np.sort(norm_C)[-1] - np.sort(norm_C)[-2] > 1e-3
      pred_norm = int(np.argmax(norm_C))
      assert got["pred_norm"][j] == pred_norm and got["acc_norm"][j] == int(pred_norm == d.gold)

  # Batch size, and so which rows share a padded batch, changes nothing.
  for b in (1, 3):
    ll_b, greedy_b, _ = score.loglikelihoods(lm.loglikelihood, pairs, batch=b)
    np.testing.assert_allclose(ll_b, ll_N, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(greedy_b, greedy_N)

  # max_len cuts the longer sequences on the left, as lm-eval's `hf` does; a repeated pair is
  # scored once; an empty continuation has log-likelihood 0 and is greedy.
  max_len = min(len(c) + len(x) - 1 for c, x in pairs)
  assert any(len(c) + len(x) - 1 > max_len for c, x in pairs)
  expected = [hand_score(lm, list(c), list(x), max_len) for c, x in pairs]
  empty = (pairs[0][0], ())
  ll, greedy, stats = score.loglikelihoods(lm.loglikelihood, [*pairs, pairs[2], empty], 2, max_len)
  np.testing.assert_allclose(ll[:-2], [e[0] for e in expected], rtol=1e-4)
  np.testing.assert_array_equal(greedy[:-2], [e[1] for e in expected])
  assert ll[-2] == ll[2] and greedy[-2] == greedy[2]
  assert ll[-1] == 0.0 and greedy[-1]
  assert stats["sequences"] == len(pairs) and stats["requests"] == len(pairs) + 2
  with pytest.raises(ValueError, match="does not fit"):
    score.loglikelihoods(lm.loglikelihood, pairs, 2, max_len=len(pairs[3][1]) - 1)


# -- tokenization: lm-eval's own code -------------------------------------------------------------


class LmEvalRequests(TemplateLM):
  """lm-eval's TemplateLM over `encode`: its `loglikelihood` returns the token pairs it made."""

  def __init__(self, encode, prefix: int):
    super().__init__()
    self._encode, self._prefix = encode, prefix

  @property
  def eot_token_id(self) -> int:
    return self._prefix

  def tok_encode(self, string, add_special_tokens=None, **kwargs):
    return list(self._encode(string))

  def _loglikelihood_tokens(self, reqs, **kwargs):
    return [(tuple(c), tuple(x)) for _, c, x in reqs]

  def loglikelihood_rolling(self, requests, disable_tqdm=False):
    raise NotImplementedError

  def generate_until(self, requests, disable_tqdm=False):
    raise NotImplementedError


def lm_eval_tokenize(encode, prefix: int, pairs) -> list:
  reqs = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(pairs)]
  return LmEvalRequests(encode, prefix).loglikelihood(reqs, disable_tqdm=True)


@pytest.mark.parametrize("kind", ["byte", "bpe", "bpe300", "sentencepiece"])
def test_encode_pair_is_lm_evals(kind, bpe, sp):
  tok = {"byte": ByteTokenizer, "bpe": lambda: bpe, "sentencepiece": lambda: sp,
         "bpe300": lambda: train_bpe(TEXTS, vocab_size=300)}[kind]()  # fmt: skip
  p = requests.prefix_id(tok)
  assert p == tok.eos_id is not None  # TemplateLM's prefix: its eot token
  # `_encode_pair` itself, unbound, on an object with only what it reads.
  plain = type("Plain", (), {"backend": "causal", "tok_encode": staticmethod(
    lambda s, **kw: tok.encode(s))})()  # fmt: skip
  for c, x in TRICKY:
    want = TemplateLM._encode_pair(plain, c, x)
    assert requests.encode_pair(tok.encode, c, x, p) == tuple(map(tuple, want)), (c, x)
  # Through `loglikelihood` (empty contexts included), with lm-eval's prefix and with a prefix
  # that is the continuation's first token (the prefix is then taken from the continuation).
  empties = [("", " water and light."), ("", "zy dog."), ("", "日本語")]
  for prefix in (p, tok.encode("zy dog.")[0]):
    want = lm_eval_tokenize(tok.encode, prefix, TRICKY + empties)
    got = [requests.encode_pair(tok.encode, c, x, prefix) for c, x in TRICKY + empties]
    assert got == want
  assert requests.encode_pair(tok.encode, "", "zy dog.", tok.encode("zy dog.")[0]) == (
    tuple(tok.encode("zy dog.")[:1]), tuple(tok.encode("zy dog.")[1:]))  # fmt: skip
  with pytest.raises(ValueError, match="prefix token"):
    requests.encode_pair(tok.encode, "", " x", None)


def test_encode_docs_needs_a_tokenizer():
  with pytest.raises(ValueError, match="no tokenizer"):
    requests.encode_docs(None, three_docs())


# -- lm-eval's own tasks: its YAMLs, HellaSwag's preprocessing, its per-example metrics -----------

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"

HELLASWAG = [
  {"activity_label": "Home and Garden",
   "ctx_a": "[header] How to clean a grill. [title] Heat the grill.  [step] Let it burn off.",
   "ctx_b": "then scrub the grates with a brush",
   "endings": [" [title] Use a wire brush.", "[step] Rinse it  off  with water. ",
               "Wait [substeps] until it cools.", "Eat the grill."],
   "label": "2"},
  {"activity_label": "Removing ice from car",
   "ctx_a": "Then, the man writes over the snow covering the window of a car.",
   "ctx_b": "a woman wearing winter clothes",
   "endings": [", smiles.", " walks away [title] slowly", "  laughs  ", "sits down."],
   "label": "0"},
]  # fmt: skip

ARC = [
  {"id": "a1", "question": "Which is a mammal?", "answerKey": "B",
   "choices": {"text": ["trout", "dog", "frog"], "label": ["A", "B", "C"]}},
  {"id": "a2", "question": "What melts ice?", "answerKey": "4",
   "choices": {"text": ["cold", "dark", "wind", "heat"], "label": ["1", "2", "3", "4"]}},
]  # fmt: skip

# Rows in each dataset's own fields, and the lm-eval YAML that defines the task.
LM_EVAL_ROWS = {
  "arc_easy": ("arc/arc_easy.yaml", ARC),
  "arc_challenge": ("arc/arc_challenge.yaml", ARC),
  "openbookqa": ("openbookqa/openbookqa.yaml", [
    {"id": "o1", "question_stem": "The sun is responsible for", "answerKey": "B",
     "choices": {"text": ["puppies", "plants sprouting"], "label": ["A", "B"]}},
    {"id": "o2", "question_stem": "A magnet attracts", "answerKey": " A",
     "choices": {"text": ["iron nails", "wood"], "label": ["A", "B"]}}]),
  "piqa": ("piqa/piqa.yaml", [
    {"goal": "Dry wet hair", "sol1": "use a towel", "sol2": "use a rock", "label": 0},
    {"goal": "Open a jar", "sol1": "shout at it", "sol2": "twist the lid", "label": 1}]),
  "hellaswag": ("hellaswag/hellaswag.yaml", HELLASWAG),
  "winogrande": ("winogrande/default.yaml", [
    {"sentence": "The trophy does not fit in the suitcase because _ is too big.",
     "option1": "the trophy", "option2": "the suitcase", "answer": "1"},
    {"sentence": "_ gave Bo a gift, so Bo thanked her.", "option1": "Ann", "option2": "Bo",
     "answer": "2"}]),
  "lambada": ("lambada/lambada_openai.yaml", [
    {"text": "the cat sat on the mat"}, {"text": "she said  it was  hers"}]),
}  # fmt: skip


def lm_eval_yaml(path: Path) -> dict:
  """A task YAML as lm-eval reads it: `!function module.name` imported beside it, `include`d
  files under the file's own keys (without importing the `lm_eval.tasks` index)."""

  def function(loader, node):
    module, name = loader.construct_scalar(node).rsplit(".", 1)
    spec = importlib.util.spec_from_file_location(f"lm_eval_{module}", path.parent / f"{module}.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return getattr(m, name)

  loader = type("Loader", (yaml.SafeLoader,), {})
  loader.add_constructor("!function", function)
  cfg = yaml.load(path.read_text(), Loader=loader)
  if "include" in cfg:
    cfg = {**lm_eval_yaml(path.parent / cfg.pop("include")), **cfg}
  return cfg


def test_docs_are_lm_evals_requests(tmp_path):
  """Each task's Docs (read from JSONL in the dataset's fields) are the requests, choices and
  gold of lm-eval's own ConfigurableTask built from its YAML over the same rows, and the
  per-example acc / acc_norm / perplexity items are lm-eval's `process_results`."""
  import datasets
  from lm_eval.api.task import ConfigurableTask

  rng = np.random.default_rng(0)
  for name, (yaml_file, rows) in LM_EVAL_ROWS.items():
    write_jsonl(tmp_path / f"{name}.jsonl", rows)
    got, _ = docs.load(name, tmp_path)
    cfg = lm_eval_yaml(LM_EVAL_TASKS / yaml_file)
    split = cfg.get("test_split") or cfg["validation_split"]  # lm-eval's eval_docs
    assert docs.TASKS[name].hf == (cfg["dataset_path"], cfg.get("dataset_name"), split)
    cfg = {k: v for k, v in cfg.items() if k != "tag"}
    cfg |= {"custom_dataset": lambda rows=rows, **_: {"test": datasets.Dataset.from_list(rows)},
            "test_split": "test", "validation_split": None, "training_split": None,
            "fewshot_split": None}  # fmt: skip
    task = ConfigurableTask(config=cfg)
    kind = {"loglikelihood": docs.CLOZE, "multiple_choice": docs.CHOICE}[task.OUTPUT_TYPE]
    kind = docs.SCHEMA if task.multiple_input else kind
    assert docs.TASKS[name].kind == kind, name
    want_scores = []
    ll_N = rng.normal(-10, 3, sum(len(d.pairs) for d in got))
    greedy_N = rng.random(len(ll_N)) < 0.5
    i = 0
    for doc, d in zip(task.eval_docs, got, strict=True):
      reqs = task.construct_requests(doc, task.fewshot_context(doc, 0), metadata=(name, 0, 1))
      reqs = reqs if isinstance(reqs, list) else [reqs]
      assert d.pairs == tuple(r.arguments for r in reqs), name
      if kind != docs.CLOZE:
        assert d.choices == tuple(task.doc_to_choice(doc)), name
        assert d.gold == (task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc))
      results = list(zip(ll_N[i : i + len(reqs)], greedy_N[i : i + len(reqs)], strict=True))
      want_scores.append(task.process_results(doc, results))
      i += len(reqs)
    scores = metrics.per_doc(kind, got, ll_N, greedy_N)
    for m in ("acc", "acc_norm"):
      if m in want_scores[0]:
        assert scores[m].tolist() == [w[m] for w in want_scores], (name, m)
    assert ("acc_norm" in scores) == ("acc_norm" in want_scores[0]), name
    if kind == docs.CLOZE:
      items = [w["perplexity"] for w in want_scores]
      assert scores["ll"].tolist() == items
      out = metrics.aggregate(scores)
      assert out["perplexity"] == pytest.approx(lm_metrics.perplexity(items), rel=1e-12)


def test_hellaswag_preprocessing_is_lm_evals():
  import datasets

  path = LM_EVAL_TASKS / "hellaswag" / "utils.py"
  spec = importlib.util.spec_from_file_location("lm_eval_hellaswag_utils", path)
  utils = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(utils)
  for text in [*HELLASWAG[0]["endings"], HELLASWAG[0]["ctx_a"], " a  [b] c [title] d  "]:
    assert docs.hellaswag_preprocess(text) == utils.preprocess(text), text
  processed = utils.process_docs(datasets.Dataset.from_list(HELLASWAG))
  for row, want in zip(HELLASWAG, processed, strict=True):
    doc = docs.TASKS["hellaswag"].from_fields(row)
    assert doc == docs.Doc(tuple((want["query"], " " + c) for c in want["choices"]),
                           tuple(want["choices"]), want["gold"])  # fmt: skip
  assert docs.TASKS["hellaswag"].from_fields(HELLASWAG[0]).pairs[0][0] == (
    "Home and Garden: How to clean a grill.. Heat the grill.  Let it burn off. Then scrub the "
    "grates with a brush"
  )


# -- layouts and errors ---------------------------------------------------------------------------


def write_jsonl(path: Path, rows) -> Path:
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return path


def q(text: str) -> str:
  return f"Question: {text}\nAnswer:"


def test_load_lm_eval_layouts(tmp_path):
  arc = {"question": "Which is a mammal?", "answerKey": "B",
         "choices": {"text": ["trout", "dog", "frog"], "label": ["A", "B", "C"]}}  # fmt: skip
  write_jsonl(tmp_path / "arc_easy.jsonl", [arc, "", {**arc, "answerKey": "C"}])
  write_jsonl(tmp_path / "arc_challenge.jsonl", [{**arc, "choices": {
    "text": ["trout", "dog"], "label": ["1", "2"]}, "answerKey": "2"}])  # fmt: skip
  write_jsonl(tmp_path / "piqa.jsonl", [
    {"goal": "Dry wet hair", "sol1": "use a towel", "sol2": "use a rock", "label": 0}])  # fmt: skip
  write_jsonl(tmp_path / "winogrande.jsonl", [
    {"sentence": "The trophy does not fit in the suitcase because _ is too big.",
     "option1": "the trophy", "option2": "the suitcase", "answer": "2"}])  # fmt: skip
  write_jsonl(tmp_path / "openbook_qa.jsonl", [
    {"id": "7-980", "question_stem": "The sun is responsible for",
     "choices": {"text": ["puppies", "plants sprouting"], "label": ["A", "B"]},
     "answerKey": "B"}])  # fmt: skip
  write_jsonl(tmp_path / "lambada.jsonl", [{"text": "the cat sat on the mat"}])

  mc = lambda ctx, answers, gold: docs.Doc(tuple((ctx, " " + a) for a in answers), answers, gold)
  d, src = docs.load("arc_easy", tmp_path)
  assert d == [mc(q("Which is a mammal?"), ("trout", "dog", "frog"), 1),
               mc(q("Which is a mammal?"), ("trout", "dog", "frog"), 2)]  # fmt: skip
  assert src == {
    "file": str(tmp_path / "arc_easy.jsonl"),
    "sha256": hashlib.sha256((tmp_path / "arc_easy.jsonl").read_bytes()).hexdigest(),
  }
  assert docs.load("arc_easy", tmp_path, limit=1)[0] == d[:1]
  assert docs.load("arc_challenge", tmp_path)[0] == [
    mc(q("Which is a mammal?"), ("trout", "dog"), 1)
  ]
  assert docs.load("piqa", tmp_path)[0] == [mc(q("Dry wet hair"), ("use a towel", "use a rock"), 0)]
  assert docs.load("openbookqa", tmp_path)[0] == [
    mc("The sun is responsible for", ("puppies", "plants sprouting"), 1)]  # fmt: skip
  (wino,) = docs.load("winogrande", tmp_path)[0]
  assert wino == docs.Doc(
    (("The trophy does not fit in the suitcase because the trophy", " is too big."),
     ("The trophy does not fit in the suitcase because the suitcase", " is too big.")),
    ("The trophy does not fit in the suitcase because the trophy",
     "The trophy does not fit in the suitcase because the suitcase"), 1)  # fmt: skip
  (lambada,) = docs.load("lambada", tmp_path)[0]
  assert lambada == docs.Doc((("the cat sat on the", " mat"),), (" mat",), 0)
  # lm-eval's names: openbookqa's file may be openbook_qa.jsonl, lambada's lambada_openai.jsonl.
  assert docs.load("openbookqa", tmp_path)[1]["file"] == str(tmp_path / "openbook_qa.jsonl")
  (tmp_path / "lambada.jsonl").rename(tmp_path / "lambada_openai.jsonl")
  assert docs.load("lambada", tmp_path)[0] == [lambada]
  with pytest.raises(FileNotFoundError, match="hellaswag.jsonl"):
    docs.load("hellaswag", tmp_path)


def test_load_shared_layout_and_provenance(tmp_path):
  path = write_jsonl(tmp_path / "arc_easy.jsonl", [
    {"query": "Q: 2+2?\nA:", "choices": ["3", "4"], "gold": 1}])  # fmt: skip
  write_jsonl(tmp_path / "winogrande.jsonl", [
    {"context_options": ["Ann gave Bo a gift because Ann", "Ann gave Bo a gift because Bo"],
     "continuation": "was kind.", "gold": 0}])  # fmt: skip
  d, src = docs.load("arc_easy", tmp_path)
  assert d == [docs.Doc((("Q: 2+2?\nA:", " 3"), ("Q: 2+2?\nA:", " 4")), ("3", "4"), 1)]
  ann, bo = "Ann gave Bo a gift because Ann", "Ann gave Bo a gift because Bo"
  wino = docs.Doc(((ann, " was kind."), (bo, " was kind.")), (ann, bo), 0)
  assert docs.load("winogrande", tmp_path)[0] == [wino]
  write_jsonl(path, [{"query": "Q: 2+2?\nA:", "choices": ["3", "4"], "gold": 0}])
  again = docs.load("arc_easy", tmp_path)[1]
  assert again["sha256"] != src["sha256"]
  assert again["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_load_errors(tmp_path):
  ok = {"query": "q", "choices": ["a", "b"], "gold": 0}
  write_jsonl(tmp_path / "arc_easy.jsonl", [ok, {"prompt": "q", "answer": 1}])
  with pytest.raises(ValueError, match=r"arc_easy\.jsonl:2: not a arc_easy example") as e:
    docs.load("arc_easy", tmp_path)
  assert "fields present: ['answer', 'prompt']" in str(e.value)
  assert len(docs.load("arc_easy", tmp_path, limit=1)[0]) == 1  # the bad row is not read
  write_jsonl(tmp_path / "arc_easy.jsonl", ["{not json"])
  with pytest.raises(ValueError, match=r"arc_easy\.jsonl:1: not JSON"):
    docs.load("arc_easy", tmp_path)
  for gold in (2, -1):  # out of range, in lm-eval's layout
    write_jsonl(tmp_path / "piqa.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b", "label": gold}])
    with pytest.raises(ValueError, match=rf"piqa\.jsonl:1: gold {gold} is not an index"):
      docs.load("piqa", tmp_path)
  bad = {"piqa": {"goal": "g", "sol1": "a", "sol2": "b"},
         "winogrande": {"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"},
         "lambada": {"context": "x"},
         "arc_challenge": {"question": "q", "choices": {"text": ["a"], "label": ["A"]},
                           "answerKey": "Z"}}  # fmt: skip
  for name, row in bad.items():
    write_jsonl(tmp_path / f"{name}.jsonl", [row])
    with pytest.raises(ValueError, match=rf"{name}\.jsonl:1: "):
      docs.load(name, tmp_path)
  # a schema row is not a multiple-choice one, nor the reverse
  write_jsonl(tmp_path / "piqa.jsonl", [{"context_options": ["a", "b"], "continuation": "c",
                                         "gold": 0}])  # fmt: skip
  with pytest.raises(ValueError, match="fields present"):
    docs.load("piqa", tmp_path)


@pytest.mark.parametrize("name, row", [
  ("arc_easy", {"query": "q", "choices": ["a", "b"], "gold": 2}),
  ("arc_easy", {"query": "q", "choices": ["a", "b"], "gold": -1}),
  ("winogrande", {"context_options": ["a", "b"], "continuation": "c", "gold": 5}),
])  # fmt: skip
def test_shared_layout_gold_out_of_range_raises(tmp_path, name, row):
  write_jsonl(tmp_path / f"{name}.jsonl", [row])
  with pytest.raises(ValueError, match=rf"{name}\.jsonl:1: gold -?\d+ is not an index"):
    docs.load(name, tmp_path)


@pytest.mark.parametrize("line", ["3", "null"])
def test_non_object_row_names_its_line(tmp_path, line):
  write_jsonl(tmp_path / "arc_easy.jsonl", [line])
  with pytest.raises(ValueError, match=r"arc_easy\.jsonl:1: "):
    docs.load("arc_easy", tmp_path)


def test_parse_task_names():
  assert docs.parse("arc_easy, piqa,") == ("arc_easy", "piqa")
  assert docs.parse(["all"]) == docs.ALL == tuple(docs.TASKS)
  assert set(docs.ALL) == {"arc_easy", "arc_challenge", "openbookqa", "piqa", "hellaswag",
                           "winogrande", "lambada"}  # fmt: skip
  with pytest.raises(ValueError, match="unknown tasks \\['nope'\\]"):
    docs.parse("arc_easy,nope")
  with pytest.raises(ValueError, match="unknown tasks"):
    docs.parse(["openbook_qa"])  # a file name, not a task name


# -- metrics --------------------------------------------------------------------------------------


@pytest.mark.parametrize("x", [[0, 1], [1, 1, 0, 1, 0], [0.5, -2.0, 3.25, 7.0], list(range(17))])
def test_mean_stderr_is_lm_evals(x):
  assert metrics.mean_stderr(x) == pytest.approx(lm_metrics.mean_stderr(x), rel=1e-12)
  assert metrics.mean_stderr(np.asarray(x)) == pytest.approx(lm_metrics.mean_stderr(x), rel=1e-12)


def test_mean_stderr_of_one_example_is_none():
  assert metrics.mean_stderr([1.0]) is None


def test_cloze_aggregate():
  lambada = [docs.Doc((("a b", " c"),), (" c",), 0) for _ in range(4)]
  ll_N = np.array([-1.0, -2.5, -0.25, -4.0])
  greedy_N = np.array([True, False, True, True])
  scores = metrics.per_doc(docs.CLOZE, lambada, ll_N, greedy_N)
  assert set(scores) == {"acc", "ll"}
  out = metrics.aggregate(scores)
  assert out["n"] == 4 and out["acc"] == 0.75
  assert out["acc_stderr"] == pytest.approx(lm_metrics.mean_stderr([1, 0, 1, 1]))
  assert out["perplexity"] == pytest.approx(math.exp(7.75 / 4))
  assert out["perplexity"] == pytest.approx(lm_metrics.perplexity(list(ll_N)))
  assert "acc_norm" not in out


def test_choice_aggregate_and_paired_diff():
  d = docs.multiple_choice("q", ["aa", "b"], 1)  # per character: ll / 2 and ll / 1
  # doc 1: -3 < -2 but -1.5 > -2; doc 2: -1.5 > -2 and -0.75 > -2; doc 3: -1 > -1.5, -0.5 > -1.5
  ll_N = np.array([-3.0, -2.0, -1.5, -2.0, -1.0, -1.5])
  scores = metrics.per_doc(docs.CHOICE, [d, d, d], ll_N, [False] * 6)
  assert scores["pred"].tolist() == [1, 0, 0] and scores["pred_norm"].tolist() == [0, 0, 0]
  assert scores["acc"].tolist() == [1, 0, 0] and scores["acc_norm"].tolist() == [0, 0, 0]
  out = metrics.aggregate({"acc": np.array([1, 0, 1]), "acc_norm": np.array([1, 1, 1])})
  assert out == {"n": 3, "acc": pytest.approx(2 / 3),
                 "acc_stderr": pytest.approx(lm_metrics.mean_stderr([1, 0, 1])),
                 "acc_norm": 1.0, "acc_norm_stderr": 0.0}  # fmt: skip
  mean, se = metrics.paired_diff(np.array([1, 0, 1, 1]), np.array([0, 0, 1, 0]))
  assert mean == 0.5 and se == pytest.approx(lm_metrics.mean_stderr([1, 0, 0, 1]))


# -- padding and chunks ---------------------------------------------------------------------------


@given(st.integers(1, 5000))
def test_padded_length(n):
  T = padded_length(n)
  assert T % SCORE_CHUNK == 0 and n <= T < n + SCORE_CHUNK


def test_scores_across_chunks_equal_one_unchunked_pass(lm, bpe):
  """A request longer than two chunks, its continuation straddling a chunk boundary: the state
  carried between chunks gives the scores of one `lm.logits` call over the whole sequence."""
  ids = tuple(bpe.encode(" ".join(TEXTS[:10])))
  pair = ids[: 3 * SCORE_CHUNK - 5], ids[3 * SCORE_CHUNK - 5 : 3 * SCORE_CHUNK + 5]
  n = len(pair[0]) + len(pair[1]) - 1  # scored at n - 10 .. n - 1, across the third boundary
  assert len(ids) >= 3 * SCORE_CHUNK + 5 and n == 3 * SCORE_CHUNK + 4
  short = tuple(map(tuple, lm_eval_pair(bpe.encode, TEXTS[0], " " + TEXTS[1])))
  ll, greedy, stats = score.loglikelihoods(lm.loglikelihood, [pair, short], batch=2)
  expected = [hand_score(lm, list(a), list(b)) for a, b in (pair, short)]
  np.testing.assert_allclose(ll, [e[0] for e in expected], rtol=1e-4)
  np.testing.assert_array_equal(greedy, [e[1] for e in expected])
  assert stats["padded_tokens"] == 2 * padded_length(n)
