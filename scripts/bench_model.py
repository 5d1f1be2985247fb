"""Model throughput on this machine: training steps and recurrent generation.

  uv run python scripts/bench_model.py [--preset small --batch 16 --seq 128 --gen-preset 370m]

Prints training tokens/s (forward, backward, AdamW) with the associative scan and with
`jax.lax.scan` (ratio between them); evaluation tokens/s (`mmfree eval`'s scoring: loss, and at
`hw` the saturation of every point from the same pass) at `bitnet` and `hw` on the same config,
as ratios to the training step; and batch-1 greedy generation tokens/s at the 370m preset
with weights quantized once against re-quantizing them every step as the reference
implementation does (ratio between them, and against the reference's published-in-issue
0.52 tokens/s on this CPU).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmfree.algorithms import evaluate
from mmfree.algorithms import train as loop
from mmfree.algorithms.load import LanguageModel
from mmfree.core.quant import QuantConfig
from mmfree.models import MMfreeLM, preset
from mmfree.quant import calibrate
from mmfree.quant.points import set_hw
from mmfree.store.checkpoint import build_model

REFERENCE_TOKENS_PER_S = 0.52  # reference PyTorch implementation, 370M, this CPU (issue 2)


def bench_train(name: str, scan: str, batch: int, seq: int, steps: int) -> float:
  cfg = preset(name, scan=scan)
  graphdef, params = nnx.split(MMfreeLM(cfg, nnx.Rngs(0)), nnx.Param)
  tx = loop.optimizer(loop.TrainConfig(steps=steps))
  opt_state = tx.init(params)
  train_step, _ = loop.make_steps(graphdef, tx)
  data = jax.random.randint(jax.random.key(0), (steps + 1, batch, seq + 1), 0, cfg.vocab_size)
  params, opt_state, loss, _ = train_step(params, opt_state, data[0])  # compile
  jax.block_until_ready(loss)
  t0 = time.perf_counter()
  for i in range(1, steps + 1):
    params, opt_state, loss, _ = train_step(params, opt_state, data[i])
  jax.block_until_ready(loss)
  return steps * batch * seq / (time.perf_counter() - t0)


def bench_eval(name: str, batch: int, seq: int, batches: int) -> dict:
  """Evaluation tokens/s at `bitnet` and `hw` (calibrated on random tokens), compilation and
  the padded last batch included in the warm-up, not the timing."""
  cfg = preset(name)
  model = MMfreeLM(cfg.replace(precision="bitnet"), nnx.Rngs(0))
  rng = np.random.default_rng(0)
  windows = rng.integers(0, cfg.vocab_size, (batches * batch - batch // 2, seq + 1))
  scales, _ = calibrate.calibrate(model, [windows[:batch, :-1]], QuantConfig())
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  out = {}
  for precision in ("bitnet", "hw"):
    m = build_model(cfg.replace(precision=precision), params)
    if precision == "hw":
      set_hw(m, QuantConfig(), scales)
      run = lambda lm, w: evaluate.score_saturation(lm, w, None, batch)  # noqa: E731
    else:
      run = lambda lm, w: evaluate.score(lm.token_nll, w, None, batch)  # noqa: E731
    lm = LanguageModel(m)
    run(lm, windows[: batch + 1])  # compile, and the padded shape: the same one
    t0 = time.perf_counter()
    scored = run(lm, windows)
    out[precision] = scored["tokens"] / (time.perf_counter() - t0)
  return out


def bench_generate(lm: LanguageModel, tokens: int) -> float:
  prompt = np.arange(1, 9, dtype=np.int32)
  lm.generate(prompt, 2, temperature=0, stop_at_eos=False)  # compile prefill and step
  t0 = time.perf_counter()
  lm.generate(prompt, tokens + 1, temperature=0, stop_at_eos=False)
  dt = time.perf_counter() - t0
  t1 = time.perf_counter()
  lm.generate(prompt, 1, temperature=0, stop_at_eos=False)  # the prefill alone
  return tokens / (dt - (time.perf_counter() - t1))


def read_bandwidth(nbytes: int) -> float:
  """GB/s of a jitted sum over `nbytes` of float32: the memory-bandwidth ceiling for decoding."""
  x = jnp.ones((nbytes // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(5):
    total(x).block_until_ready()
  return 5 * nbytes / (time.perf_counter() - t0) / 1e9


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--preset", default="small")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--eval-batches", type=int, default=8)
  p.add_argument("--gen-preset", default="370m")
  p.add_argument("--gen-tokens", type=int, default=32)
  p.add_argument("--baseline-tokens", type=int, default=4)
  args = p.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")

  print(f"\ntraining step, preset {args.preset}, batch {args.batch} x seq {args.seq}:")
  tps = {
    scan: bench_train(args.preset, scan, args.batch, args.seq, args.steps)
    for scan in ("associative", "sequential")
  }
  for scan, v in tps.items():
    print(f"  {scan:12s} {v:10,.0f} tokens/s")
  print(f"  associative / sequential: {tps['associative'] / tps['sequential']:.2f}x")

  print(f"\nevaluation, preset {args.preset}, batch {args.batch} x seq {args.seq}, "
        f"{args.eval_batches} batches (the last one partial):")  # fmt: skip
  for precision, v in bench_eval(args.preset, args.batch, args.seq, args.eval_batches).items():
    print(
      f"  {precision:6s} {v:10,.0f} tokens/s  ({v / tps['associative']:.2f}x the training step)"
    )

  cfg = preset(args.gen_preset)
  print(f"\nrecurrent generation, preset {args.gen_preset} (random weights), batch 1, greedy:")
  t0 = time.perf_counter()
  model = MMfreeLM(cfg, nnx.Rngs(0))
  jax.block_until_ready(nnx.state(model))
  print(f"  init {time.perf_counter() - t0:.1f}s")
  baseline = bench_generate(LanguageModel(model, quantize_once=False), args.baseline_tokens)
  t0 = time.perf_counter()
  lm = LanguageModel(model)  # quantizes the weights once, in place
  print(f"  quantize once {time.perf_counter() - t0:.1f}s")
  fast = bench_generate(lm, args.gen_tokens)
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(lm._state) if x.ndim == 2)
  weight_bytes -= cfg.vocab_size * cfg.hidden_size * 4  # the embedding is gathered, not read
  print(f"  re-quantize every step (reference behaviour): {baseline:6.2f} tokens/s")
  print(f"  quantized once at load:                       {fast:6.2f} tokens/s")
  print(
    f"  ratio: {fast / baseline:.1f}x in-process baseline, "
    f"{fast / REFERENCE_TOKENS_PER_S:.1f}x the reference's {REFERENCE_TOKENS_PER_S} tokens/s"
  )
  print(
    f"  weights streamed per token: {weight_bytes / 1e9:.2f} GB "
    f"({weight_bytes * fast / 1e9:.1f} GB/s effective; a plain read of as many bytes: "
    f"{read_bandwidth(weight_bytes):.1f} GB/s)"
  )


if __name__ == "__main__":
  main()
