"""Lava against the emulator: one program, the same tokens, seconds per token and the ratio.

  uv run mmfree lava setup && uv run python scripts/bench_lava.py [--bundle runs/tiny/program]
      [--tokens 16] [--new 4]

Both backends run the prompt (random token ids) and then generate greedily; the emulator is timed
warm, Lava with its compile (it compiles on the first run), its graph building apart. The outputs
are checked bit for bit before any figure is printed.
"""

import argparse
from pathlib import Path

import numpy as np

from mmfree.loihi import backend, bundle_io


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--bundle", default="runs/tiny/program")
  ap.add_argument("--tokens", type=int, default=16)
  ap.add_argument("--new", type=int, default=4)
  ap.add_argument("--venv", default=str(backend.VENV))
  args = ap.parse_args()
  prog = bundle_io.load(args.bundle)
  s = bundle_io.summary(prog)
  print(f"{args.bundle}: {s['populations']} populations, {s['neurons']:,} neurons, "
        f"{s['synapse_groups']} synapse groups")  # fmt: skip
  rng = np.random.default_rng(0)
  prompt = rng.integers(0, prog.model["vocab_size"], args.tokens).tolist()
  backend.run_emulator(Path(args.bundle), prompt, 1)  # warm: weights are converted on first use
  emu, t_emu = backend.run_emulator(Path(args.bundle), prompt, args.new)
  lava, t_lava = backend.run_lava(Path(args.bundle), prompt, args.new, Path(args.venv))
  bad = backend.mismatches(lava, emu)
  if bad:
    raise SystemExit(f"Lava differs from the emulator at {bad[:5]}")
  steps = emu.logits.shape[1]
  per_emu, per_lava = t_emu["run"] / steps, t_lava["run"] / steps
  print(f"{steps} tokens ({args.tokens} prompt + {args.new - 1} fed back), bit-exact")
  print(f"emulator: {per_emu * 1e3:.2f} ms/token (warm)")
  per_step = t_lava["run"] / t_lava["timesteps"] * 1e3
  print(f"Lava: {per_lava * 1e3:.1f} ms/token, {per_step:.1f} ms/timestep over "
        f"{t_lava['timesteps']} timesteps (a generated token waits for the whole pipeline) "
        f"(compile included; graph built in {t_lava['build']:.1f} s, "
        f"{t_lava['total']:.1f} s in all with the subprocess)")  # fmt: skip
  print(f"ratio Lava / emulator: {per_lava / per_emu:,.0f}x per token")


if __name__ == "__main__":
  main()
