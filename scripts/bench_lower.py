"""Lowering and emulator benchmark: the 370m preset (random weights) and a trained small run.

  uv run python scripts/bench_lower.py [--preset 370m] [--small runs/final/ptq8] [--tokens 4]

The preset's weights are its random initialization (ternary absmean of normal weights: about a
third zero), calibrated on two batches of random token ids: enough for formats, not for accuracy.
Prints lowering seconds and peak memory, the mapping report, and emulator tokens/s.
"""

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from flax import nnx


def _peak_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _emulate(prog, tokens_BxT) -> float:
  from mmfree.loihi import emulate

  emu = emulate.Emulator(prog)
  t0 = time.perf_counter()
  emu.run(tokens_BxT)
  return tokens_BxT.size / (time.perf_counter() - t0)


def main():
  from mmfree.loihi import lower, mapping, program
  from mmfree.models import MMfreeLM, preset
  from mmfree.quant import calibrate
  from mmfree.quant.config import QuantConfig

  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--preset", default="370m")
  ap.add_argument("--small", default="runs/final/ptq8", help="a calibrated run (optional)")
  ap.add_argument("--tokens", type=int, default=4, help="tokens through the preset's emulator")
  args = ap.parse_args()

  cfg = preset(args.preset).replace(precision="bitnet")
  model = MMfreeLM(cfg, nnx.Rngs(0))
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, cfg.vocab_size, (1, 32)) for _ in range(2)]
  t0 = time.perf_counter()
  qcfg = QuantConfig()
  scales, _ = calibrate.calibrate(model, batches, qcfg)
  print(f"{args.preset}: calibrated in {time.perf_counter() - t0:.1f} s")
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  del model
  t0 = time.perf_counter()
  prog = lower.lower(params, cfg, qcfg, scales, source=f"random {args.preset}")
  with tempfile.TemporaryDirectory() as d:
    program.save(prog, Path(d) / "program")
    dt = time.perf_counter() - t0
    prog = program.load(Path(d) / "program")
    print(f"{args.preset}: lowered and saved in {dt:.1f} s; peak memory of this process "
          f"{_peak_gb():.2f} GB (the float32 model included)")  # fmt: skip
    print(f"ternary weights {lower.zero_share(prog):.1%} zero")
    print(mapping.report(mapping.place(prog)))
    tps = _emulate(prog, rng.integers(0, cfg.vocab_size, (1, args.tokens)))
    print(f"{args.preset}: emulator {tps:.2f} tokens/s (batch 1)")
  if args.small and Path(args.small, "quant").is_dir():
    with tempfile.TemporaryDirectory() as d:
      small = program.load(lower.lower_run(Path(args.small), Path(d) / "program"))
      tps = _emulate(small, rng.integers(0, small.model["vocab_size"], (1, 64)))
      print(f"{args.small}: emulator {tps:.1f} tokens/s (batch 1, 64 tokens)")


if __name__ == "__main__":
  main()
