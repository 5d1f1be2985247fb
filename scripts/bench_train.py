"""Training throughput: tokens/s, step time and model FLOPs utilization of the train loop.

  uv run python scripts/bench_train.py [--preset small] [--hidden 256 --layers 4 --vocab 4096]
      [--batch 8 --seq 256 --steps 20] [--compile-layers 4,24,32] [--mesh-fsdp 1]
  bash scripts/device/bench_train.sh 370m       # on a lent GPU machine (the `device` tool)

Two loops on the same jitted AdamW step, in the same process: the baseline is the loop as it was
before (it reads the loss on the host every step, builds each batch in the loop, and BitLinear
multiplies [B, T, I] activations, whose weight gradient XLA's CPU dot computes through a transposed
copy of each output gradient, ~15% of a step); mmfree's (`train.train`) carries finiteness on the
device, reads the loss every `log_every` steps (here: at the end) and reads batches ahead on a
thread (`pipeline.batches(prefetch=2)`), placed with `make_array_from_process_local_data`; then
mmfree's loop with bfloat16 BitLinear operands (`model.matmul_dtype`: float32 master weights and
accumulation; at `bitnet` the operands are small integers, exact in bfloat16). All on the (data,
fsdp) mesh of every local device.

Model FLOPs per token (written out; MFU's convention: forward + backward = 3x forward, no
rematerialization, quantizer arithmetic not counted): every BitLinear is a dense matmul in
training, 2 FLOPs per weight per token forward, so 6·N_linear, N_linear = L·(4·H·D + 3·H·I) + H·V
(MLGRU i, f, g: H→D and o: D→H; GLU gate H→2I and down I→H; the lm_head H→V; the embedding is a
lookup), plus the MLGRU recurrence h = f⊙h + (1−f)⊙c (3 FLOPs per channel forward: 9·L·D). The
peak is a float32 matmul's FLOP/s measured here (XLA's dot at 2048³): a practical ceiling, not the
CPU's datasheet figure. Compile time: the step lowered and compiled at each `--compile-layers`,
with the blocks unrolled and under one scan (`model.scan_layers`).
"""

import argparse
import contextlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmfree.algorithms import mesh
from mmfree.algorithms import train as loop
from mmfree.core.train import MeshConfig, TrainConfig
from mmfree.data import pipeline
from mmfree.models import MMfreeLM, layers, lm, preset


def flops_per_token(cfg) -> float:
  H, D, I, L, V = (cfg.hidden_size, cfg.inner_size, cfg.mlp_size, cfg.num_hidden_layers,
                   cfg.vocab_size)  # fmt: skip
  linear = L * (4 * H * D + 3 * H * I) + H * V
  return 6.0 * linear + 9.0 * L * D


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
  """float32 FLOP/s of XLA's matmul at n³ on the default device."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return reps * 2 * n**3 / (time.perf_counter() - t0)


def _setup(cfg, m: MeshConfig):
  # the layout `train.train` steps on: blocks 1..L-1 stacked under model.scan_layers
  graphdef, params = lm.stack_blocks(*nnx.split(MMfreeLM(cfg, nnx.Rngs(0)), nnx.Param))
  tx = loop.optimizer(TrainConfig(steps=1000))
  opt_state = tx.init(params)
  devices = mesh.make_mesh(m)
  layout = (mesh.shardings(params, devices), mesh.shardings(opt_state, devices),
            mesh.replicated(devices))  # fmt: skip
  params, opt_state = jax.device_put((params, opt_state), layout[:2])
  step, _ = loop.make_steps(graphdef, tx, 1, layout)
  return step, params, opt_state, layout, mesh.batch(devices)


@contextlib.contextmanager
def _batched_matmul():
  """BitLinear's matmul as it was before: on [B, T, I], its weight gradient contracting B and T
  (XLA's CPU dot then transposes each output gradient). Active while the baseline traces."""
  rows = layers.BitLinear._matmul

  def batched(self, x_BxTxI, w_IxO):
    dt = jnp.dtype(self.matmul_dtype)
    return jnp.matmul(x_BxTxI.astype(dt), w_IxO.astype(dt), preferred_element_type=jnp.float32)

  layers.BitLinear._matmul = batched
  try:
    yield
  finally:
    layers.BitLinear._matmul = rows


def baseline(cfg, m, ids, batch, seq, steps) -> float:
  """Seconds per step: the loss read every step, batches made in the loop, the [B, T, I] matmul."""
  step, params, opt_state, _, sharding = _setup(cfg, m)
  batches = pipeline.batches(ids, batch, seq, 0)
  put = lambda: jax.device_put(next(batches), sharding)
  with _batched_matmul():
    params, opt_state, loss, _ = step(params, opt_state, put())
  float(loss)  # compiled
  t0 = time.perf_counter()
  for _ in range(steps):
    params, opt_state, loss, _ = step(params, opt_state, put())
    float(loss)
  return (time.perf_counter() - t0) / steps


def mmfree_loop(cfg, m, ids, batch, seq, steps) -> float:
  """Seconds per step: `train.train`'s pattern (finiteness on device, batches read ahead)."""
  step, params, opt_state, layout, sharding = _setup(cfg, m)
  step = loop.watch_finite(step, layout)
  first_bad = jax.device_put(jnp.zeros((), jnp.int32), layout[2])
  batches = pipeline.batches(ids, batch, seq, 0, prefetch=2)
  put = lambda: jax.make_array_from_process_local_data(sharding, next(batches))
  params, opt_state, loss, _, first_bad = step(params, opt_state, put(), 1, first_bad)
  float(loss)
  t0 = time.perf_counter()
  for k in range(steps):
    params, opt_state, loss, _, first_bad = step(params, opt_state, put(), k + 2, first_bad)
  assert int(first_bad) == 0 and np.isfinite(float(loss))
  return (time.perf_counter() - t0) / steps


def compile_seconds(cfg, m, batch, seq) -> float:
  step, params, opt_state, _, sharding = _setup(cfg, m)
  x = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32, sharding=sharding)
  t0 = time.perf_counter()
  step.lower(params, opt_state, x).compile()
  return time.perf_counter() - t0


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="small")
  ap.add_argument("--hidden", type=int, help="default: the preset's (small: 256)")
  ap.add_argument("--layers", type=int, help="default: the preset's (small: 4)")
  ap.add_argument("--vocab", type=int, help="default: the preset's (small: 4096)")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--mesh-fsdp", type=int, default=1, help="mesh.fsdp (data: the rest)")
  ap.add_argument("--compile-layers", default="4,24,32", help="'' to skip")
  args = ap.parse_args()
  sizes = {"hidden_size": args.hidden, "num_hidden_layers": args.layers, "vocab_size": args.vocab}
  cfg = preset(args.preset, **{k: v for k, v in sizes.items() if v is not None})
  m = MeshConfig(data=0, fsdp=args.mesh_fsdp)
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, 1 << 20).astype(np.int32)
  tokens = args.batch * args.seq
  fpt, peak = flops_per_token(cfg), matmul_peak()
  print(f"preset {args.preset} H={cfg.hidden_size} L={cfg.num_hidden_layers} "
        f"V={cfg.vocab_size}, batch {args.batch} x {args.seq}, {jax.device_count()} "
        f"{jax.devices()[0].platform} devices; "
        f"{fpt / 1e6:,.1f} MFLOP a token; matmul peak {peak / 1e9:,.1f} GFLOP/s")  # fmt: skip
  print("| loop | step ms | tokens/s | MFU | vs baseline |\n|---|---:|---:|---:|---:|")
  base = baseline(cfg, m, ids, args.batch, args.seq, args.steps)
  ours = mmfree_loop(cfg, m, ids, args.batch, args.seq, args.steps)
  bf16 = mmfree_loop(cfg.replace(matmul_dtype="bfloat16"), m, ids, args.batch, args.seq,
                     args.steps)  # fmt: skip
  rows = (("baseline (sync every step, [B, T, I] matmul)", base), ("mmfree", ours),
          ("mmfree, bfloat16 matmul operands", bf16))  # fmt: skip
  for name, s in rows:
    tps = tokens / s
    print(f"| {name} | {1e3 * s:.1f} | {tps:,.0f} | {tps * fpt / peak:.1%} | {base / s:.2f}x |")
  if args.compile_layers:
    print("\n| layers | unrolled compile s | vs first | scanned (model.scan_layers) s | vs first |")
    print("|---:|---:|---:|---:|---:|")
    first = {}
    for L in map(int, args.compile_layers.split(",")):
      row = []
      for scanned in (False, True):
        c = cfg.replace(num_hidden_layers=L, scan_layers=scanned)
        s = compile_seconds(c, m, args.batch, args.seq)
        first.setdefault(scanned, s)
        row.append(f"{s:.1f} | {s / first[scanned]:.2f}x")
      print(f"| {L} | {' | '.join(row)} |", flush=True)


if __name__ == "__main__":
  main()
