"""Per-device memory of an AdamW train step, replicated against FSDP, compiled and never run.

  uv run python scripts/bench_memory.py [--presets 370m,1.3b,2.7b] [--devices 8] [--batch 8]
      [--seq 1024]

On `--devices` fake CPU devices (XLA_FLAGS is set here, before jax starts), each preset's train
step is lowered on abstract parameters, optimizer state and batch (`jax.ShapeDtypeStruct`s
carrying their shardings: nothing is allocated) and compiled; XLA's memory analysis gives the
bytes one device holds: arguments (parameters, AdamW moments, batch rows), outputs, temporaries
(activations, gradients). Layouts: replicated parameters (mesh data=N, fsdp=1) and FSDP (mesh
data=1, fsdp=N). Beside them, the parameters' and moments' share computed from the shardings
alone (`mesh.shardings`): the check that XLA's argument bytes are what the layout says.
"""

import argparse
import os
import sys
import time


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--presets", default="370m,1.3b,2.7b")
  ap.add_argument("--devices", type=int, default=8)
  ap.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
  ap.add_argument("--seq", type=int, default=1024)
  ap.add_argument(
    "--unrolled", action="store_true", help="blocks unrolled (default: model.scan_layers)"
  )
  args = ap.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  from flax import nnx

  from mmfree.algorithms import mesh
  from mmfree.algorithms import train as loop
  from mmfree.core.model import preset
  from mmfree.core.train import MeshConfig, TrainConfig
  from mmfree.models import MMfreeLM, lm

  gib = 2**30

  def stacked_shapes(cfg):
    """(graphdef, parameter shapes) of the layout `train.train` steps on, nothing allocated."""
    graphdefs = []

    def build():
      graphdef, params = lm.stack_blocks(*nnx.split(MMfreeLM(cfg, nnx.Rngs(0)), nnx.Param))
      graphdefs.append(graphdef)
      return params

    params = jax.eval_shape(build)
    return graphdefs[0], params

  def place(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                        shardings)  # fmt: skip

  blocks = "unrolled" if args.unrolled else "scanned"
  print(f"{args.devices} CPU devices, AdamW float32, global batch {args.batch} x {args.seq} "
        f"tokens, blocks {blocks}; GiB per device")  # fmt: skip
  print("| preset | parameters | layout | arguments | of which state (computed) | outputs | "
        "temporaries | total | compile s |")  # fmt: skip
  print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
  for name in args.presets.split(","):
    cfg = preset(name, scan_layers=not args.unrolled)
    graphdef, params = stacked_shapes(cfg)
    tx = loop.optimizer(TrainConfig())
    opt_state = jax.eval_shape(tx.init, params)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    for layout, m in (("replicated", MeshConfig(data=0, fsdp=1)),
                      ("FSDP", MeshConfig(data=1, fsdp=0))):  # fmt: skip
      devices = mesh.make_mesh(m)
      shard = (mesh.shardings(params, devices), mesh.shardings(opt_state, devices))
      batch = jax.ShapeDtypeStruct((args.batch, args.seq + 1), "int32",
                                   sharding=mesh.batch(devices))  # fmt: skip
      step, _ = loop.make_steps(graphdef, tx, 1, (*shard, mesh.replicated(devices)))
      t0 = time.perf_counter()
      compiled = step.lower(place(params, shard[0]), place(opt_state, shard[1]), batch).compile()
      seconds = time.perf_counter() - t0
      a = compiled.memory_analysis()
      state = mesh.bytes_per_device(params, devices) + mesh.bytes_per_device(opt_state, devices)
      total = a.argument_size_in_bytes + a.output_size_in_bytes + a.temp_size_in_bytes
      total -= a.alias_size_in_bytes  # donated parameters and moments: outputs reuse them
      print(f"| {name} | {n_params / 1e6:,.0f}M | {layout} | {a.argument_size_in_bytes / gib:.2f} "
            f"| {state / gib:.2f} | {a.output_size_in_bytes / gib:.2f} | "
            f"{a.temp_size_in_bytes / gib:.2f} | {total / gib:.2f} | {seconds:.0f} |",
            flush=True)  # fmt: skip
  return 0


if __name__ == "__main__":
  sys.exit(main())
