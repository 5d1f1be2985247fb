"""A small SentencePiece model trained on test text, for the tests of every tokenizer kind."""

from pathlib import Path

import sentencepiece


def train_sentencepiece(texts, directory: Path, vocab_size: int = 100) -> Path:
  """`directory/sp.model`, a BPE SentencePiece model of `texts` (one line each, numbered)."""
  lines = [f"{t} Line {i} of the training text." for i, t in enumerate(texts * 4)]
  (directory / "text.txt").write_text("\n".join(lines))
  sentencepiece.SentencePieceTrainer.train(input=str(directory / "text.txt"),
    model_prefix=str(directory / "sp"), vocab_size=vocab_size, model_type="bpe",
    minloglevel=2)  # fmt: skip
  return directory / "sp.model"
