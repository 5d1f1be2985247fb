"""Training options: gradient accumulation, init_from, wandb offline, eval, tokenizer training."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mmfree
from mmfree import configs
from mmfree.algorithms import train as loop
from mmfree.cli import main
from mmfree.core.train import TrainConfig
from mmfree.models import MMfreeLM, lm, preset
from mmfree.run import run_experiment
from mmfree.store import checkpoint

SMOKE = str(Path(__file__).parent.parent / "experiments/tiny.py:smoke")


def test_gradient_accumulation_matches_the_full_batch():
  graphdef, params = nnx.split(MMfreeLM(preset("tiny"), nnx.Rngs(0)), nnx.Param)
  tx = optax.sgd(1.0)  # the update is the gradient itself
  batch = jax.random.randint(jax.random.key(0), (8, 17), 0, 258)
  step = lambda k, p: loop.make_steps(graphdef, tx, k)[0](p, tx.init(p), batch)
  outs = [step(k, jax.tree.map(jnp.copy, params)) for k in (1, 2, 4)]  # copies: steps donate them
  for p, _, loss, gnorm in outs[1:]:
    np.testing.assert_allclose(loss, outs[0][2], rtol=1e-5)
    np.testing.assert_allclose(gnorm, outs[0][3], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-4), p, outs[0][0])


def test_scanned_blocks_match_unrolled_ones():
  """model.scan_layers (and remat) computes the same loss and update as the unrolled loop: one
  SGD step's parameters agree to float32 rounding; at `hw` the blocks stay unrolled."""
  cfg = preset("tiny", num_hidden_layers=4)
  tx = optax.sgd(1.0)
  batch = jax.random.randint(jax.random.key(0), (4, 17), 0, 258)
  outs = []
  for scan, remat, stack in ((False, "none", False), (True, "none", False), (True, "none", True),
                             (True, "block", True)):  # fmt: skip
    g, p = nnx.split(MMfreeLM(cfg.replace(scan_layers=scan, remat=remat), nnx.Rngs(0)), nnx.Param)
    g, p = lm.stack_blocks(g, p) if stack else (g, p)
    p, o, loss, gnorm = loop.make_steps(g, tx)[0](p, tx.init(p), batch)
    outs.append((lm.map_model_states(lm.unstack_layers, p) if stack else p, o, loss, gnorm))
  for p, _, loss, gnorm in outs[1:]:
    np.testing.assert_allclose(loss, outs[0][2], rtol=1e-6)
    np.testing.assert_allclose(gnorm, outs[0][3], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), p, outs[0][0])
  model = MMfreeLM(cfg.replace(scan_layers=True), nnx.Rngs(0))
  assert model._scannable()
  model.layers[2].attn.probe = object()  # per-module state: the blocks are no longer alike
  assert not model._scannable()
  with pytest.raises(ValueError, match="model.remat applies to scanned blocks"):
    cfg.replace(remat="block")


def test_stacked_blocks_hold_as_many_arrays_at_any_depth():
  """What keeps compile time flat: the training layout's arrays do not multiply with depth."""
  shapes = {}
  for L in (4, 12):
    g, p = nnx.split(MMfreeLM(preset("tiny", num_hidden_layers=L, scan_layers=True), nnx.Rngs(0)),
                     nnx.Param)  # fmt: skip
    shapes[L] = {_names(k): x.shape for k, x in jax.tree_util.tree_leaves_with_path(
      lm.stack_blocks(g, p)[1])}  # fmt: skip
  assert shapes[4].keys() == shapes[12].keys()
  assert shapes[12]["layers/1/attn/f_proj/kernel"] == (
    11,
    *shapes[4]["layers/0/attn/f_proj/kernel"],
  )
  g, p = nnx.split(MMfreeLM(preset("tiny", num_hidden_layers=4), nnx.Rngs(0)), nnx.Param)
  assert lm.stack_blocks(g, p) == (g, p)  # scan_layers off: nothing stacked


def test_scanned_training_saves_the_canonical_layout_and_resumes_unrolled(tmp_path):
  """A `scan_layers` run checkpoints blocks one by one, like an unrolled run, and ends at its
  parameters; its step-3 checkpoint resumes unrolled to the same end."""
  base = {"model.num_hidden_layers": 4, "stages": ("train",)}
  ends = {}
  for name, scan in (("unrolled", False), ("scanned", True)):
    exp = configs.load_experiment(SMOKE, {**base, "model.scan_layers": scan})
    run_experiment(exp, tmp_path / name)
    ends[name] = checkpoint.read_params(tmp_path / name)[1]
  with checkpoint.manager(tmp_path / "scanned") as mgr:
    mgr.delete(6)
  run_experiment(configs.load_experiment(SMOKE, base), tmp_path / "scanned")
  resumed = checkpoint.read_params(tmp_path / "scanned")[1]
  for other in (ends["scanned"], resumed):
    assert jax.tree.structure(other) == jax.tree.structure(ends["unrolled"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), other, ends["unrolled"])


def _names(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", ""))) for k in path if not
                  isinstance(k, jax.tree_util.GetAttrKey))  # fmt: skip


def test_weight_decay_applies_to_the_bitlinear_kernels_only():
  cfg = preset("tiny")
  _, params = nnx.split(MMfreeLM(cfg, nnx.Rngs(0)), nnx.Param)
  mask = {_names(p): m for p, m in jax.tree_util.tree_leaves_with_path(loop.decay_mask(params))}
  proj = [f"attn/{x}_proj" for x in "fgio"] + ["mlp/gate_proj", "mlp/down_proj"]
  kernels = {f"layers/{i}/{m}/kernel" for i in range(cfg.num_hidden_layers) for m in proj}
  assert {k for k, m in mask.items() if m} == kernels | {"lm_head/kernel"}
  off = {k for k, m in mask.items() if not m}
  assert {"embeddings/embedding", "lower_bounds", "norm/weight"} <= off
  assert all(k.endswith("weight") for k in off - {"embeddings/embedding", "lower_bounds"})


def test_one_step_of_zero_gradients_decays_kernels_and_nothing_else():
  model = MMfreeLM(preset("tiny"), nnx.Rngs(0))
  model.lower_bounds[...] = 0.5  # zeros at init would hide a decay
  _, params = nnx.split(model, nnx.Param)
  cfg = TrainConfig(steps=10, lr=0.1, warmup_steps=0, weight_decay=0.1)
  tx = loop.optimizer(cfg)
  zeros = jax.tree.map(jnp.zeros_like, params)
  new = optax.apply_updates(params, tx.update(zeros, tx.init(params), params)[0])
  flat = lambda tree: {_names(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  old, new = flat(params), flat(new)
  for name, x in old.items():
    if name.endswith("kernel"):
      np.testing.assert_allclose(new[name], x * (1 - cfg.lr * cfg.weight_decay), rtol=1e-6)
    else:  # lower_bounds, the embedding, every norm weight
      np.testing.assert_array_equal(new[name], x)


def test_the_first_non_finite_step_is_recorded_on_the_device():
  graphdef, params = nnx.split(MMfreeLM(preset("tiny"), nnx.Rngs(0)), nnx.Param)
  batch = jax.random.randint(jax.random.key(0), (2, 9), 0, 258)
  first_bad = jnp.zeros((), jnp.int32)
  for tx, step, expected in ((optax.sgd(0.1), 1, 0), (optax.sgd(jnp.nan), 2, 2),
                             (optax.sgd(0.1), 3, 2)):  # fmt: skip
    step_fn = loop.watch_finite(loop.make_steps(graphdef, tx)[0])
    before = params
    params, _, _, _, first_bad = step_fn(params, tx.init(params), batch, step, first_bad)
    assert int(first_bad) == expected
    assert all(x.is_deleted() for x in jax.tree.leaves(before))  # donated


def test_divergence_between_log_steps_stops_before_any_checkpoint(tmp_path):
  # lr 1e30 without warmup: step 1 is finite, step 2 is not; nothing syncs until step 4.
  overrides = {"train.lr": 1e30, "train.warmup_steps": 0, "train.log_every": 4,
               "train.eval_every": 4, "train.ckpt_every": 4, "stages": ("train",)}  # fmt: skip
  with pytest.raises(FloatingPointError, match="non-finite at step 2; no checkpoint was saved"):
    run_experiment(configs.load_experiment(SMOKE, overrides), tmp_path)
  with checkpoint.manager(tmp_path) as mgr:
    assert mgr.latest_step() is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  d = tmp_path_factory.mktemp("base")
  run_experiment(configs.load_experiment(SMOKE, {"tracking.wandb": "offline"}), d)
  return d


def test_wandb_offline_logs_into_the_run_directory(trained):
  assert list((trained / "wandb").glob("offline-run-*")), "no offline wandb run written"
  assert (trained / "metrics.jsonl").read_text()  # the JSONL record is kept regardless


def test_fine_tune_from_a_run_directory_starts_from_its_weights(trained, tmp_path):
  # The architecture comes from init_from, whatever the experiment's model section says.
  overrides = {"train.init_from": str(trained), "train.lr": 0.0, "train.steps": 2,
               "stages": ("train",), "model.hidden_size": 48}  # fmt: skip
  exp = configs.load_experiment(SMOKE, overrides)
  run_experiment(exp, tmp_path)
  run_experiment(exp, tmp_path)  # a rerun finds the same experiment and has nothing to do
  a, b = mmfree.load(trained), mmfree.load(tmp_path)
  tokens = np.arange(1, 20)[None] % a.config.vocab_size
  np.testing.assert_array_equal(a.logits(tokens), b.logits(tokens))  # lr 0: unchanged weights
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["train"]["init_from"] == str(trained)
  assert saved["model"]["hidden_size"] == a.config.hidden_size == 32


def test_eval_cli_reports_each_precision(trained, capsys):
  main(["eval", str(trained), "--precision", "float,bitnet", "--seq-len", "32",
        "--data.tokenizer=byte"])  # fmt: skip
  lines = capsys.readouterr().out.strip().splitlines()
  assert [ln.split()[0] for ln in lines] == ["float", "bitnet"]
  assert all("bpb" in ln for ln in lines)
  ev = json.loads((trained / "eval.json").read_text())
  assert np.isfinite(ev["bitnet"]["bpb"]) and ev["bitnet"]["precision"] == "bitnet"


def test_tokenizer_train_cli_on_a_text_directory(tmp_path):
  docs = tmp_path / "docs"
  docs.mkdir()
  for i in range(20):
    (docs / f"{i}.txt").write_text(f"Document {i} is about rivers, hills and the sea. " * 20)
  main(["tokenizer", "train", "--vocab-size", "300", "--out", str(tmp_path / "tok"),
        "--data.source=text", f"--data.path={docs}"])  # fmt: skip
  tok = mmfree.data.tokenizers.load_tokenizer(tmp_path / "tok")
  assert tok.vocab_size == 300 and tok.decode(tok.encode("rivers and hills")) == "rivers and hills"
