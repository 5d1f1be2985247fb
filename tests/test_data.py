"""Embedded corpus, tokenizers and batch pipeline."""

import math
import platform
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from mmfree.data import corpus as corpus_lib
from mmfree.data.pipeline import batches, eval_windows, tokenize_docs
from mmfree.data.tokenizers import (
  ByteTokenizer,
  HFTokenizer,
  SentencePieceTokenizer,
  load_tokenizer,
  train_bpe,
  unigram_entropy,
)

sys.path.insert(0, str(Path(__file__).parent))  # the lava-nc wheel owns the name `tests`
from sp_model import train_sentencepiece  # noqa: E402

TEXTS = [
  "The quick brown fox jumps over the lazy dog.",
  "Ternary weights take the values -1, 0 and +1; activations are int8.",
  "A recurrent unit with element-wise gates needs no matrix multiplication.",
  "Unicode: naïve café, 日本語, emoji 🦊, and a literal <s> in the text.",
] * 20


@pytest.fixture(scope="module")
def corpus():
  return corpus_lib.embedded_corpus()


def test_corpus_is_deterministic(corpus):
  corpus_lib.embedded_corpus.cache_clear()
  again = corpus_lib.embedded_corpus()
  assert again is not corpus
  assert again.train == corpus.train and again.val == corpus.val
  assert again.meta == corpus.meta


def test_corpus_split_and_meta(corpus):
  assert corpus.train and corpus.val
  assert not set(corpus.train) & set(corpus.val)
  meta = corpus.meta
  assert meta["python_version"] == platform.python_version()
  assert len(meta["sha256"]) == 64
  for split in ("train", "val"):
    docs = getattr(corpus, split)
    assert meta[split]["documents"] == len(docs)
    assert meta[split]["chars"] == sum(map(len, docs))
    assert meta[split]["bytes"] >= meta[split]["chars"]
  assert meta["train"]["chars"] > 1_000_000  # enough prose for a small model
  assert all(len(d.split()) >= 20 for d in corpus.train)


def test_corpus_skips_tests():
  assert corpus_lib._skipped(corpus_lib.Path("test/test_os.py"))
  assert corpus_lib._skipped(corpus_lib.Path("idlelib/idle_test/htest.py"))
  assert corpus_lib._skipped(corpus_lib.Path("lib2to3/tests/data/bom.py"))
  assert corpus_lib._skipped(corpus_lib.Path("unittest/test_foo.py"))
  assert not corpus_lib._skipped(corpus_lib.Path("json/decoder.py"))


def test_byte_tokenizer_roundtrip(tmp_path):
  tok = ByteTokenizer()
  text = "naïve café 日本語 🦊\n\t"
  ids = tok.encode(text)
  assert max(ids) < 256 and tok.vocab_size == 258
  assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == text
  assert tok.decode([0xFF]) == "\ufffd"
  tok.save(tmp_path)
  assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)


def test_bpe_roundtrip_and_cache(tmp_path):
  tok = train_bpe(TEXTS, vocab_size=300, cache_dir=tmp_path)
  assert tok.vocab_size <= 300
  assert (tok.bos_id, tok.eos_id) == (0, 1)
  for text in [*TEXTS[:4], "unseen: ∮ E⋅da = Q, ⠁⠂"]:
    assert tok.decode(tok.encode(text)) == text
  assert tok.bos_id not in tok.encode("<s>")  # text stays text
  (cached,) = tmp_path.glob("bpe-*/tokenizer.json")
  before = cached.stat().st_mtime_ns
  again = train_bpe(TEXTS, vocab_size=300, cache_dir=tmp_path)
  assert cached.stat().st_mtime_ns == before
  assert again.tok.to_str() == tok.tok.to_str()
  assert train_bpe(TEXTS, vocab_size=300).tok.to_str() == tok.tok.to_str()  # deterministic

  tok.save(tmp_path / "run")
  loaded = load_tokenizer(tmp_path / "run")
  assert isinstance(loaded, HFTokenizer)
  assert loaded.encode(TEXTS[3]) == tok.encode(TEXTS[3])


def test_sentencepiece_loads(tmp_path):
  train_sentencepiece(TEXTS, tmp_path).rename(tmp_path / "tokenizer.model")
  tok = load_tokenizer(tmp_path)
  assert isinstance(tok, SentencePieceTokenizer)
  assert tok.vocab_size == 100 and tok.bos_id == 1 and tok.eos_id == 2
  assert tok.decode(tok.encode("the quick brown fox")) == "the quick brown fox"
  tok.save(tmp_path / "copy")
  assert load_tokenizer(tmp_path / "copy").encode("lazy dog") == tok.encode("lazy dog")


def test_load_tokenizer_missing_and_corrupt(tmp_path):
  assert load_tokenizer(tmp_path) is None
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(ValueError, match="tokenizer.json"):
    load_tokenizer(tmp_path)
  (tmp_path / "tokenizer.model").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="tokenizer.model"):
    load_tokenizer(tmp_path)


def test_unigram_entropy():
  assert unigram_entropy(np.array([0, 1, 2, 3] * 5), 8) == pytest.approx(math.log(4))
  assert unigram_entropy(np.array([5, 5, 5]), 8) == 0.0
  p = np.array([0.5, 0.25, 0.25])
  assert unigram_entropy(np.array([0, 0, 1, 2]), 3) == pytest.approx(-(p * np.log(p)).sum())
  with pytest.raises(ValueError):
    unigram_entropy(np.array([0, 9]), 8)


def test_tokenize_docs():
  tok = ByteTokenizer()
  ids = tokenize_docs(["ab", "c"], tok)
  assert ids.dtype == np.int32
  assert ids.tolist() == [256, 97, 98, 257, 256, 99, 257]
  assert tokenize_docs(["ab", "c"], tok, add_bos=False, add_eos=False).tolist() == [97, 98, 99]
  bpe = train_bpe(TEXTS, vocab_size=300)
  ids = tokenize_docs(TEXTS[:2], bpe, add_bos=False, add_eos=False)
  assert ids.tolist() == bpe.encode(TEXTS[0]) + bpe.encode(TEXTS[1])


def test_batches_deterministic_and_shaped():
  ids_N = np.arange(1000, dtype=np.int32)
  take = lambda seed, n=5, start=0: list(islice(batches(ids_N, 4, 16, seed, start), n))
  a, b, c = take(0), take(0), take(1)
  assert all(x.shape == (4, 17) and x.dtype == np.int32 for x in a)
  assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
  assert np.array_equal(take(0, n=1, start=3)[0], a[3])  # resumable
  assert np.all(np.diff(a[0], axis=1) == 1)  # contiguous windows of the stream
  assert np.all(a[0][:, 0] % 16 == 0)
  # (1000 - 1) // 16 = 62 windows: 31 batches of 2 are one epoch, each window once.
  epoch = np.concatenate(list(islice(batches(ids_N, 2, 16, 0), 31)))
  assert sorted(epoch[:, 0].tolist()) == list(range(0, 62 * 16, 16))


def test_batches_too_short():
  with pytest.raises(ValueError, match="shorter than one window"):
    batches(np.arange(10), 2, 16, 0)
  with pytest.raises(ValueError, match="shorter than one window"):
    eval_windows(np.arange(16), 16, 4)


def test_eval_windows():
  w = eval_windows(np.arange(50), 8, max_windows=3)
  assert w.shape == (3, 9) and w.dtype == np.int32
  assert w[:, 0].tolist() == [0, 8, 16]
  assert eval_windows(np.arange(50), 8).shape == (6, 9)
  targets = eval_windows(np.arange(50), 8)[:, 1:].ravel()
  assert len(set(targets.tolist())) == targets.size
