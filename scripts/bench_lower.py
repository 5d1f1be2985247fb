"""Lowering and emulator benchmark: the 370m preset (random weights) and a trained small run.

  uv run python scripts/bench_lower.py [--preset 370m] [--small runs/tiny] [--tokens 8]

The preset's weights are its random initialization (ternary absmean of normal weights: about a
third zero), calibrated on two batches of random token ids: enough for formats, not for accuracy.
They are written as a checkpoint directory with its `quant/` (what `mmfree import-hf` plus
`mmfree quantize calibrate` give), then `mmfree lower` runs on it in a process of its own, so its
seconds and peak memory are the lowering's alone. Then: the mapping report, and emulator tokens/s
at the preset and on the small run (lowered the same way), against a reference matmul of the same
weights in the same process (the emulator's floor).
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _write_run(preset: str, d: Path):
  """A random `preset` model as an HF checkpoint directory plus its calibration."""
  from flax import nnx

  from mmfree import models
  from mmfree.core.quant import QuantConfig
  from mmfree.models import hf
  from mmfree.quant import calibrate

  cfg = models.preset(preset).replace(precision="bitnet")
  model = models.MMfreeLM(cfg, nnx.Rngs(0))
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  qcfg = QuantConfig()
  scales, stats = calibrate.calibrate(model, [rng.integers(0, cfg.vocab_size, (1, 32))] * 2, qcfg)
  print(f"{preset}: random weights calibrated in {time.perf_counter() - t0:.1f} s")
  hf.save_hf(d, cfg, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  calibrate.save(d, qcfg, scales, stats, {"batches": 2, "source": "random ids"})


def _lower(run: Path, out: Path) -> tuple[float, float]:
  """(seconds, peak GB) of `mmfree lower` in a child process. The peak is the child's own VmHWM:
  ru_maxrss would carry over this (large) process's resident set from the fork."""
  code = (
    "import sys; from mmfree.cli import main; main(sys.argv[1:]); "
    "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0], file=sys.stderr)"
  )
  t0 = time.perf_counter()
  cmd = [sys.executable, "-c", code, "lower", str(run), "--out", str(out)]
  done = subprocess.run(
    cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )
  dt = time.perf_counter() - t0
  return dt, int(done.stderr.split()[-1]) / 2**20  # KiB


def _emulate(prog, n_tokens: int, rng) -> tuple[float, float]:
  """(emulator tokens/s, tokens/s of one float32 matmul per synapse group per token)."""
  from mmfree.loihi import emulate

  emu = emulate.Emulator(prog)
  tokens = rng.integers(0, prog.model["vocab_size"], (1, n_tokens))
  emu.run(tokens[:, :1])  # warm: weights are converted on first use
  t0 = time.perf_counter()
  emu.run(tokens)
  tps = n_tokens / (time.perf_counter() - t0)
  ws = [emu.weights(s.name) for s in prog.synapses]
  xs = [np.ones((1, w.shape[0]), w.dtype) for w in ws]
  t0 = time.perf_counter()
  for _ in range(n_tokens):
    for x, w in zip(xs, ws, strict=True):
      x @ w
  return tps, n_tokens / (time.perf_counter() - t0)


def main():
  from mmfree.algorithms import lower
  from mmfree.loihi import bundle_io, mapping, program

  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--preset", default="370m")
  ap.add_argument("--small", default="runs/tiny", help="a calibrated run (optional)")
  ap.add_argument("--tokens", type=int, default=8, help="tokens through the preset's emulator")
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as d:
    run, out = Path(d) / "run", Path(d) / "program"
    _write_run(args.preset, run)
    dt, peak = _lower(run, out)
    print(f"{args.preset}: `mmfree lower` {dt:.1f} s, peak memory {peak:.2f} GB (its process)")
    prog = bundle_io.load(out)
    s = bundle_io.summary(prog)
    print(f"bundle: {s['populations']} populations, {s['neurons']:,} neurons, "
          f"{sum(s['bytes'].values()) / 2**20:,.0f} MiB of arrays; ternary weights "
          f"{program.zero_share(prog):.1%} zero")  # fmt: skip
    print(mapping.report(mapping.place(prog)))
    tps, ref = _emulate(prog, args.tokens, rng)
    print(f"{args.preset}: emulator {tps:.2f} tokens/s (batch 1); the matmuls alone "
          f"{ref:.2f} tokens/s; ratio {tps / ref:.2f}")  # fmt: skip
  if args.small and Path(args.small, "quant").is_dir():
    with tempfile.TemporaryDirectory() as d:
      small = bundle_io.load(lower.lower_run(Path(args.small), Path(d) / "program"))
      tps, ref = _emulate(small, 64, rng)
      print(f"{args.small}: emulator {tps:.1f} tokens/s (batch 1, 64 tokens); the matmuls alone "
            f"{ref:.1f} tokens/s; ratio {tps / ref:.2f}")  # fmt: skip


if __name__ == "__main__":
  main()
