"""The data section: where tokens come from, how val is held out, how text becomes ids."""

import dataclasses

SOURCES = ("embedded", "text", "jsonl", "tokens", "hf")
MIN_BPE_VOCAB = 258  # 256 bytes + <s> + </s>


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the tokens come from, how val is held out and how text becomes ids."""

  source: str = "embedded"  # embedded | text | jsonl | tokens | hf
  path: str = ""  # file, directory or glob (text/jsonl/tokens); dataset or builder name (hf)
  val_path: str = ""  # val files like `path`, or (hf) a split name; else val_fraction holds out
  text_field: str = "text"  # of JSONL objects and hf rows
  hf_config: str = ""
  hf_split: str = "train"
  data_files: str = ""  # comma-separated local files for an hf builder ("json", "text"): offline
  streaming: bool = False  # hf only, with max_docs
  max_docs: int = 0  # documents read from each of path and val_path; 0 = all
  val_fraction: float = 0.05
  tokenizer: str = "bpe"  # byte | bpe | path to tokenizer.model, tokenizer.json or their dir;
  # for token files "bpe" means ids only (no text to train on)
  vocab_size: int = 4096  # of the bpe; the model's for token files without a tokenizer
  seed: int = 0  # salts the hash that holds out text/jsonl/hf documents

  def __post_init__(self):
    src, doc_source = self.source, self.source in ("text", "jsonl", "hf")
    bpe = self.tokenizer == "bpe" and src != "tokens"
    min_vocab = MIN_BPE_VOCAB if bpe else 1
    checks = [
      ("source", src not in SOURCES, f"expected one of {', '.join(SOURCES)}"),
      ("path", src != "embedded" and not self.path, f"data.source={src!r} needs a path"),
      ("path", src == "embedded" and self.path, "the embedded corpus has no path"),
      ("val_path", src == "embedded" and self.val_path, "the embedded corpus has a fixed val"),
      ("data_files", self.data_files and src != "hf", "applies to data.source='hf' only"),
      ("streaming", self.streaming and src != "hf", "applies to data.source='hf' only"),
      ("max_docs", self.max_docs and not doc_source, "applies to text, jsonl and hf sources"),
      ("max_docs", self.max_docs < 0, "expected 0 (all) or a positive count"),
      ("max_docs", self.streaming and not self.max_docs, "streaming needs a limit (> 0)"),
      ("seed", self.seed and not doc_source, "the split of this source is fixed"),
      ("val_fraction", not 0 <= self.val_fraction <= 0.5, "expected a fraction in [0, 0.5]"),
      ("val_fraction", self.val_fraction == 0 and not self.val_path, "holds out nothing: no val"),
      ("text_field", not self.text_field, "expected a field name"),
      ("tokenizer", not self.tokenizer, "expected byte, bpe or a path"),
      ("vocab_size", self.vocab_size < min_vocab, f"expected >= {min_vocab}" + " (bpe)" * bpe),
    ]
    for field, bad, why in checks:
      if bad:
        raise ValueError(f"data.{field}={getattr(self, field)!r}: {why}")
