"""Data sources: readers, held-out val, token files, tokenizer resolution and the token cache."""

import dataclasses
import json

import numpy as np
import pytest
import sentencepiece

from mmfree.data import corpus as corpus_lib
from mmfree.data import streams
from mmfree.data.pipeline import batches, tokenize_docs
from mmfree.data.sources import DataConfig, documents, load_data, train_tokenizer
from mmfree.data.tokenizers import (
  ByteTokenizer,
  HFTokenizer,
  SentencePieceTokenizer,
  load_tokenizer,
  train_bpe,
)

WORDS = "ternary weights gate a recurrent unit without matrix multiplication on neuromorphic cores"


def _doc(i: int) -> str:
  return f"Document {i}: " + " ".join(WORDS.split()[i % 5 :] * (i + 2)) + " café 🦊\n"


@pytest.fixture
def text_dir(tmp_path):
  root = tmp_path / "texts"
  (root / "sub").mkdir(parents=True)
  for i in range(12):
    (root / ("sub" if i % 3 == 0 else "") / f"doc{i:02d}.txt").write_text(_doc(i))
  (root / "notes.md").write_text(_doc(12))
  (root / "skip.bin").write_bytes(b"\xff\xfe not a document")
  return root


@pytest.fixture
def jsonl_file(tmp_path):
  path = tmp_path / "docs.jsonl"
  lines = [json.dumps({"text": _doc(i), "id": i}) for i in range(12)]
  path.write_text("\n".join(lines[:6] + [""] + lines[6:]) + "\n")  # a blank line is skipped
  return path


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv("MMFREE_CACHE", str(tmp_path / "cache"))


def test_text_dir_split_and_stream(text_dir, tmp_path):
  cfg = DataConfig(source="text", path=str(text_dir), val_fraction=0.3, tokenizer="byte")
  train, val, _ = documents(cfg)
  assert len(train) + len(val) == 13 and train and val  # .bin skipped, sub/ walked
  assert not set(train) & set(val)
  assert {_doc(i) for i in range(13)} == set(train) | set(val)
  data = load_data(cfg, tmp_path / "c1")
  again = load_data(cfg, tmp_path / "c2")
  assert np.array_equal(data.train_N, again.train_N) and np.array_equal(data.val_N, again.val_N)
  tok = ByteTokenizer()
  assert np.array_equal(data.val_N, tokenize_docs(val, tok))
  assert np.array_equal(data.train_N, tokenize_docs(train, tok))
  assert isinstance(data.tokenizer, ByteTokenizer) and data.vocab_size == 258
  info = data.info
  assert info["documents"] == {"train": len(train), "val": len(val)}
  assert info["train_tokens"] == data.train_N.size and info["val_tokens"] == data.val_N.size
  val_bytes = sum(len(d.encode()) for d in val)
  assert info["val_bytes_per_token"] == pytest.approx(val_bytes / data.val_N.size)
  assert 0 < info["unigram_entropy_nats"] < np.log(258)
  assert info["config"]["source"] == "text"

  salted = documents(DataConfig(source="text", path=str(text_dir), val_fraction=0.3, seed=1))
  assert set(salted[1]) != set(val)  # the seed reshuffles which documents are held out
  glob_cfg = DataConfig(
    source="text", path=str(text_dir / "**" / "*.txt"), val_path=str(text_dir / "notes.md")
  )
  g_train, g_val, _ = documents(glob_cfg)
  assert len(g_train) == 12 and g_val == [_doc(12)]
  assert (
    len(documents(DataConfig(source="text", path=str(text_dir), max_docs=6, val_fraction=0.5))[0])
    < 6
  )


def test_text_not_utf8_and_missing(text_dir):
  (text_dir / "bad.txt").write_bytes(b"caf\xe9")
  with pytest.raises(ValueError, match="bad.txt: not UTF-8"):
    documents(DataConfig(source="text", path=str(text_dir)))
  with pytest.raises(ValueError, match="data.path="):
    documents(DataConfig(source="text", path=str(text_dir / "nope")))
  with pytest.raises(ValueError, match="glob matches none"):
    documents(DataConfig(source="text", path=str(text_dir / "*.xyz")))


def test_jsonl_reader_and_errors(jsonl_file, tmp_path):
  train, val, _ = documents(DataConfig(source="jsonl", path=str(jsonl_file), val_fraction=0.3))
  assert sorted(train + val) == sorted(_doc(i) for i in range(12))
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n{"text": oops}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not a UTF-8 JSON object"):
    documents(DataConfig(source="jsonl", path=str(bad)))
  with pytest.raises(ValueError, match=r"docs.jsonl:1: no string field 'body'"):
    documents(DataConfig(source="jsonl", path=str(jsonl_file), text_field="body"))


def test_hf_json_builder_matches_jsonl(jsonl_file, tmp_path, monkeypatch):
  import datasets  # slow to import: only this test pays for it

  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
  common = {"val_fraction": 0.3, "max_docs": 10}
  jsonl = documents(DataConfig(source="jsonl", path=str(jsonl_file), **common))
  hf = DataConfig(source="hf", path="json", data_files=str(jsonl_file), **common)
  # Row indices and file:line names hash differently: compare the documents, not the split.
  docs = lambda split: sorted(split[0] + split[1])
  assert docs(documents(hf)) == docs(jsonl)
  streamed = DataConfig(
    source="hf", path="json", data_files=str(jsonl_file), streaming=True, **common
  )
  assert documents(streamed)[:2] == documents(hf)[:2]
  for streaming in (False, True):
    bad = dataclasses.replace(streamed, streaming=streaming, text_field="body")
    with pytest.raises(ValueError, match="data.text_field='body'"):
      documents(bad)


def test_token_files(tmp_path):
  ids_N = (np.arange(1000) * 7 % 50).astype(np.uint16)
  np.save(tmp_path / "ids.npy", ids_N)
  cfg = DataConfig(source="tokens", path=str(tmp_path / "ids.npy"), val_fraction=0.1, vocab_size=50)
  data = load_data(cfg, tmp_path / "c")
  assert isinstance(data.train_N, np.memmap) and isinstance(data.val_N, np.memmap)
  assert np.array_equal(data.train_N, ids_N[:900]) and np.array_equal(data.val_N, ids_N[900:])
  assert data.tokenizer is None and data.vocab_size == 50
  assert data.info["val_bytes_per_token"] is None and data.info["documents"] is None
  batch = next(batches(data.train_N, 2, 16, 0))
  assert batch.dtype == np.int32 and batch.shape == (2, 17)

  with pytest.raises(ValueError, match=r"ids.npy: token ids must lie in \[0, 40\)"):
    load_data(
      DataConfig(source="tokens", path=str(tmp_path / "ids.npy"), vocab_size=40), tmp_path / "c"
    )
  np.save(tmp_path / "grid.npy", np.zeros((4, 4), np.int32))
  with pytest.raises(ValueError, match=r"grid.npy: .*1-D integer.*shape \(4, 4\)"):
    load_data(DataConfig(source="tokens", path=str(tmp_path / "grid.npy")), tmp_path / "c")
  np.save(tmp_path / "floats.npy", np.zeros(8, np.float32))
  with pytest.raises(ValueError, match="floats.npy: .*dtype float32"):
    load_data(DataConfig(source="tokens", path=str(tmp_path / "floats.npy")), tmp_path / "c")


def test_token_dir_and_val_path(tmp_path):
  (tmp_path / "shards").mkdir()
  parts = [np.arange(i * 100, i * 100 + 100, dtype=np.int32) % 258 for i in range(3)]
  for i, p in enumerate(parts):
    np.save(tmp_path / "shards" / f"{i:03d}.npy", p)
  np.save(tmp_path / "val.npy", np.arange(64, dtype=np.int64))
  cfg = DataConfig(
    source="tokens",
    path=str(tmp_path / "shards"),
    val_path=str(tmp_path / "val.npy"),
    tokenizer="byte",
  )
  data = load_data(cfg, tmp_path / "c")
  assert isinstance(data.train_N, np.memmap)  # the shards, copied into one cached stream
  assert np.array_equal(data.train_N, np.concatenate(parts))
  assert np.array_equal(data.val_N, np.arange(64))
  assert isinstance(data.tokenizer, ByteTokenizer) and data.vocab_size == 258


def test_tokenizer_paths(text_dir, tmp_path):
  lines = [_doc(i) for i in range(40)]
  (tmp_path / "sp.txt").write_text("".join(lines))
  sentencepiece.SentencePieceTrainer.train(
    input=str(tmp_path / "sp.txt"), model_prefix=str(tmp_path / "sp"), vocab_size=40, minloglevel=2
  )
  base = {"source": "text", "path": str(text_dir), "val_fraction": 0.3}
  sp = load_data(DataConfig(**base, tokenizer=str(tmp_path / "sp.model")), tmp_path / "c")
  assert isinstance(sp.tokenizer, SentencePieceTokenizer) and sp.vocab_size == 40
  assert sp.train_N.max() < 40 and sp.train_N[0] == sp.tokenizer.bos_id

  bpe = train_bpe(lines, vocab_size=300)
  bpe.save(tmp_path / "hf")
  for path in (tmp_path / "hf", tmp_path / "hf" / "tokenizer.json"):
    data = load_data(DataConfig(**base, tokenizer=str(path)), tmp_path / "c")
    assert isinstance(data.tokenizer, HFTokenizer)
    assert data.tokenizer.tok.to_str() == bpe.tok.to_str()
  with pytest.raises(ValueError, match="data.tokenizer=.*no such file"):
    load_data(DataConfig(**base, tokenizer=str(tmp_path / "missing.model")), tmp_path / "c")


def test_cache_hit_and_invalidation(text_dir, tmp_path, monkeypatch):
  calls = []
  real = streams.tokenize_docs
  monkeypatch.setattr(streams, "tokenize_docs", lambda *a, **k: calls.append(1) or real(*a, **k))
  cfg = DataConfig(source="text", path=str(text_dir), val_fraction=0.3, vocab_size=300)
  first = load_data(cfg, tmp_path / "c")
  n_calls = len(calls)
  assert n_calls > 0 and isinstance(first.tokenizer, HFTokenizer)
  (entry,) = (tmp_path / "c" / "tokens").iterdir()
  assert {"train.npy", "val.npy", "meta.json", "tokenizer.json"} <= {
    p.name for p in entry.iterdir()
  }
  second = load_data(cfg, tmp_path / "c")
  assert len(calls) == n_calls  # read back, not tokenized again
  assert np.array_equal(first.train_N, second.train_N) and second.info == first.info
  assert second.tokenizer.tok.to_str() == first.tokenizer.tok.to_str()

  (text_dir / "doc01.txt").write_text("An edited document, longer than before. " * 20)
  third = load_data(cfg, tmp_path / "c")
  assert len(calls) > n_calls and len(list((tmp_path / "c" / "tokens").iterdir())) == 2
  assert third.train_N.size + third.val_N.size != first.train_N.size + first.val_N.size


def test_embedded_matches_tokenize_docs(tmp_path):
  corpus = corpus_lib.embedded_corpus()
  data = load_data(DataConfig(tokenizer="byte"), tmp_path / "c")
  tok = ByteTokenizer()
  assert np.array_equal(data.train_N, tokenize_docs(corpus.train, tok))
  assert np.array_equal(data.val_N, tokenize_docs(corpus.val, tok))
  assert data.info["corpus_meta"] == corpus.meta
  bytes_val = sum(len(d.encode()) for d in corpus.val)
  assert data.info["val_bytes_per_token"] == pytest.approx(bytes_val / data.val_N.size)


def test_train_tokenizer(text_dir, tmp_path):
  cfg = DataConfig(source="text", path=str(text_dir), val_fraction=0.3)
  tok = train_tokenizer(cfg, 300, tmp_path / "tok")
  loaded = load_tokenizer(tmp_path / "tok")
  assert isinstance(loaded, HFTokenizer) and (tmp_path / "tok" / "tokenizer.json").is_file()
  assert loaded.encode(_doc(3)) == tok.encode(_doc(3))
  assert loaded.decode(loaded.encode(_doc(3))) == _doc(3)
  with pytest.raises(ValueError, match="data.source='tokens'"):
    train_tokenizer(DataConfig(source="tokens", path="x.npy"), 300, tmp_path / "t2")


@pytest.mark.parametrize(
  "kwargs, field",
  [
    ({"source": "parquet"}, "source"),
    ({"source": "text"}, "path"),
    ({"path": "x"}, "path"),
    ({"source": "text", "path": "x", "val_fraction": 0.7}, "val_fraction"),
    ({"source": "text", "path": "x", "val_fraction": 0.0}, "val_fraction"),
    ({"source": "hf", "path": "json", "streaming": True}, "max_docs"),
    ({"source": "text", "path": "x", "streaming": True}, "streaming"),
    ({"source": "text", "path": "x", "data_files": "a.json"}, "data_files"),
    ({"source": "text", "path": "x", "max_docs": -1}, "max_docs"),
    ({"source": "tokens", "path": "x", "seed": 3}, "seed"),
    ({"seed": 3}, "seed"),
    ({"vocab_size": 100}, "vocab_size"),
    ({"source": "text", "path": "x", "text_field": ""}, "text_field"),
  ],
)
def test_bad_config_names_field(kwargs, field):
  with pytest.raises(ValueError, match=f"data.{field}="):
    DataConfig(**kwargs)


def test_streamed_tokenization_equals_tokenizing_everything_at_once(
  text_dir, tmp_path, monkeypatch
):
  monkeypatch.setattr(streams, "ENCODE_DOCS", 2)  # many small chunks
  monkeypatch.setattr(streams, "COPY", 5)  # and a raw-to-.npy copy in pieces
  cfg = DataConfig(source="text", path=str(text_dir), val_fraction=0.3, tokenizer="byte")
  data = load_data(cfg, tmp_path / "c")
  train, val, _ = documents(cfg)
  tok = data.tokenizer
  np.testing.assert_array_equal(data.train_N, tokenize_docs(train, tok))
  np.testing.assert_array_equal(data.val_N, tokenize_docs(val, tok))
  assert data.info["documents"] == {"train": len(train), "val": len(val)}
  assert data.info["val_bytes_per_token"] == sum(len(d.encode()) for d in val) / data.val_N.size
