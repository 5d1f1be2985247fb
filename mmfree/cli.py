"""The `mmfree` command line."""

import argparse
import dataclasses
import sys
import time
from pathlib import Path


def _add_dataclass_flags(p: argparse.ArgumentParser, cls, prefix: str = ""):
  """One `--name` flag per dataclass field (defaults shown), typed from the field's default."""
  for f in dataclasses.fields(cls):
    kind = type(f.default) if f.default is not None else str
    if kind is bool:
      p.add_argument(f"--{prefix}{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"))
    else:
      p.add_argument(f"--{prefix}{f.name}", type=kind, default=None, help=f"default {f.default}")


def _picked(args, cls, prefix: str = "") -> dict:
  vals = {
    f.name: getattr(args, (prefix + f.name).replace("-", "_")) for f in dataclasses.fields(cls)
  }
  return {k: v for k, v in vals.items() if v is not None}


def cmd_train(args):
  from mmfree.models import preset
  from mmfree.train import loop

  model_cfg = preset(args.preset, **({"scan": args.scan} if args.scan else {}))
  train_cfg = loop.TrainConfig(**_picked(args, loop.TrainConfig))
  data_cfg = loop.DataConfig(**_picked(args, loop.DataConfig))
  final = loop.train(Path(args.workdir), model_cfg, train_cfg, data_cfg)
  print(
    f"done: val_loss {final['val_loss']:.3f} nats/token (unigram entropy "
    f"{final['unigram_entropy_nats']:.3f}), val_bpb {final['val_bpb']:.3f}, "
    f"{final['tokens_per_s']:,.0f} tokens/s -> {args.workdir}"
  )


def cmd_generate(args):
  import mmfree

  lm = mmfree.load(args.path)
  if lm.tokenizer is None:
    sys.exit(
      f"{args.path} has no tokenizer files (tokenizer.model or tokenizer.json): "
      "text generation needs one; use mmfree.load(...).generate(token_ids, ...) instead"
    )
  tok = lm.tokenizer
  prompt = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(args.prompt)
  print(args.prompt, end="", flush=True)
  new, shown = [], ""

  def on_token(next_B):
    nonlocal shown
    new.append(int(next_B[0]))
    text = tok.decode(new)
    # Print only the stable new text: a byte sequence may be mid-way through a character.
    if not text.endswith("\ufffd"):
      print(text[len(shown) :], end="", flush=True)
      shown = text

  t0 = time.perf_counter()
  lm.generate(
    prompt,
    args.max_new_tokens,
    args.temperature,
    args.top_k,
    args.top_p,
    args.seed,
    on_token=on_token,
  )
  dt = time.perf_counter() - t0
  print(
    f"\n[{len(new)} tokens in {dt:.2f}s: {len(new) / dt:.1f} tokens/s incl. prompt and compile]",
    file=sys.stderr,
  )


def cmd_import_hf(args):
  from mmfree.data.tokenizers import load_tokenizer
  from mmfree.models import hf
  from mmfree.train import checkpoint

  cfg, params = hf.load_hf(Path(args.dir))
  out = Path(args.out)
  checkpoint.write_config(out, cfg, source={"hf_dir": str(Path(args.dir).absolute())})
  checkpoint.save_params(out, 0, params)
  tok = load_tokenizer(Path(args.dir))
  if tok is not None:
    tok.save(out)
  print(f"imported {args.dir} -> {out} ({'with' if tok else 'without'} tokenizer)")


def main(argv=None):
  from mmfree.train.loop import DataConfig, TrainConfig

  p = argparse.ArgumentParser(prog="mmfree", description=__doc__)
  sub = p.add_subparsers(dest="cmd", required=True)

  t = sub.add_parser("train", help="train the default model on the embedded corpus")
  t.add_argument("--workdir", required=True, help="run directory to write")
  t.add_argument("--preset", default="small", help="model size preset (default small)")
  t.add_argument("--scan", choices=["associative", "sequential"], default=None)
  _add_dataclass_flags(t, TrainConfig)
  _add_dataclass_flags(t, DataConfig)
  t.set_defaults(fn=cmd_train)

  g = sub.add_parser("generate", help="stream a continuation of a prompt")
  g.add_argument("path", help="run directory or Hugging Face checkpoint directory")
  g.add_argument("--prompt", default="The ")
  g.add_argument("--max-new-tokens", type=int, default=64)
  g.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
  g.add_argument("--top-k", type=int, default=None)
  g.add_argument("--top-p", type=float, default=0.95)
  g.add_argument("--seed", type=int, default=0)
  g.set_defaults(fn=cmd_generate)

  i = sub.add_parser("import-hf", help="import a published checkpoint (ridger/MMfreeLM-*)")
  i.add_argument("dir", help="directory with config.json and model.safetensors")
  i.add_argument("--out", required=True, help="run directory to write")
  i.set_defaults(fn=cmd_import_hf)

  args = p.parse_args(argv)
  try:
    args.fn(args)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"mmfree {args.cmd}: error: {e}")


if __name__ == "__main__":
  main()
