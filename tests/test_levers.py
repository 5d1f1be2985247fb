"""Event-driven levers (`quant.threshold`, `quant.delta`): the kernels against the plain-integer
reference, exactness and sparsity of sigma-delta at threshold 0, the accuracy cost above it,
what the activity report counts, the configs refused, and `mmfree.load` under stateful senders.
The `hw` model, the emulator and Lava agree across drawn levers in `test_design_space`."""

import dataclasses
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))  # the lava-nc wheel owns the name `tests`
import design_space as ds  # noqa: E402
import intref  # noqa: E402

from mmfree.algorithms import lower  # noqa: E402
from mmfree.algorithms.load import LanguageModel  # noqa: E402
from mmfree.core.quant import MESSAGE_POINTS, QuantConfig  # noqa: E402
from mmfree.loihi import emulate, mapping, measure, neurons, opcount  # noqa: E402
from mmfree.quant.points import set_hw  # noqa: E402
from mmfree.store.checkpoint import build_model  # noqa: E402

EVERY_DELTA_0 = tuple(f"{p}=0" for p in MESSAGE_POINTS if p != "bitlinear_in")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-200, 200), min_size=3, max_size=3), min_size=1, max_size=12),
       st.integers(0, 40), st.integers(1, 40))  # fmt: skip
def test_kernels_equal_the_plain_integer_reference(values_TxN, delta_thr, act_thr):
  v_TxN = np.asarray(values_TxN, np.int64)
  for xp in (np, jnp):
    got_thr = np.asarray(neurons.threshold_int(xp.asarray(v_TxN), act_thr))
    assert got_thr.tolist() == [[intref.threshold(v, act_thr) for v in row] for row in values_TxN]
    last, sent = xp.zeros(v_TxN.shape[1], xp.int64 if xp is np else xp.int32), []
    for row in v_TxN:
      d, last = neurons.delta_step_int(xp.asarray(row), last, delta_thr)
      sent.append(np.asarray(d))
    ref = [intref.sigma_delta(list(col), delta_thr) for col in v_TxN.T]
    assert np.asarray(sent).T.tolist() == [s for s, _ in ref]
    held = np.cumsum(np.asarray(sent), axis=0)  # what a receiver accumulates
    assert held.T.tolist() == [h for _, h in ref]
    if delta_thr == 0:  # every change is sent: the receiver holds the values themselves
      assert held.tolist() == v_TxN.tolist()


@pytest.fixture(scope="module")
def model():
  """A calibrated 2-layer draw (per-token inputs, the lm_head on chip): scales do not depend on
  the levers (they act after quantization), so each test lowers it with its own."""
  d = ds.draw(0)
  d = dataclasses.replace(d, cfg=d.cfg.replace(num_hidden_layers=2), lm_head="chip")
  params, scales, _ = ds.build(d)
  return d, params, scales


def _repeating_tokens() -> np.ndarray:
  tokens = np.random.default_rng(7).integers(0, ds.VOCAB, (ds.B, ds.T))
  tokens[:, 4:] = tokens[:, 3:4]  # a token held: values settle and repeat
  return tokens


def _lowered(model, **levers):
  d, params, scales = model
  qcfg = d.qcfg.replace(**levers)
  return dataclasses.replace(d, qcfg=qcfg), lower.lower(params, d.cfg, qcfg, scales,
                                                        lm_head=d.lm_head)  # fmt: skip


def test_delta_at_zero_is_exact_and_sends_strictly_less_where_values_repeat(model):
  tokens = _repeating_tokens()
  _, dense_prog = _lowered(model)
  dense = emulate.Emulator(dense_prog).run(tokens, record=True)
  _, prog = _lowered(model, delta=EVERY_DELTA_0)
  sd = emulate.Emulator(prog).run(tokens, record=True)
  np.testing.assert_array_equal(sd.logits, dense.logits)
  for pop, y in dense.outputs.items():
    np.testing.assert_array_equal(sd.outputs[pop], y, err_msg=pop)
  for q in prog.populations:
    if q.name not in sd.levers:
      continue  # the readout (no message point), a per-token BitLinear input
    a, b = sd.activity[q.name], dense.activity[q.name]
    # Every message the dense program sends is either sent or removed by delta: none lost.
    np.testing.assert_array_equal(a["messages"] + a["removed_delta"], b["messages"], q.name)
    y = dense.outputs[q.name]
    # Silent: the non-zero values that did not change; sent beyond the dense: a value that fell
    # to zero (its receivers must be told).
    repeats = np.count_nonzero((y[:, 1:] == y[:, :-1]) & (y[:, 1:] != 0))
    to_zero = np.count_nonzero((y[:, 1:] == 0) & (y[:, :-1] != 0))
    assert a["removed_delta"].sum() == repeats - to_zero, q.name
    if repeats > to_zero:
      assert a["messages"].sum() < b["messages"].sum(), q.name
  assert sum(v["synops"].sum() for v in sd.activity.values()) < sum(
    v["synops"].sum() for v in dense.activity.values()
  )
  rep = measure.lever_report(sd, tokens.shape[1])
  assert set(rep) == {p for p in MESSAGE_POINTS if p not in ("bitlinear_in",)}
  assert all(r["removed_delta"] > 0 and r["delta"] == 0 for r in rep.values())


def test_thresholds_above_zero_trade_accuracy_and_hw_follows_the_program(model):
  tokens = _repeating_tokens()
  levers = {"threshold": ("gated=3", "glu_prod=3"), "delta": ("residual=3", "block_in=3")}
  d, prog = _lowered(model, **levers)
  result = emulate.Emulator(prog).run(tokens, record=True)
  logits, values, _ = ds.hw_run(d, model[1], model[2], tokens)
  np.testing.assert_array_equal(result.logits, logits)
  dense_logits, _, _ = ds.hw_run(model[0], model[1], model[2], tokens)

  def nll(z):
    z = z[:, :-1] - z[:, :-1].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

  assert abs(nll(logits) - nll(dense_logits)) > 1e-4  # a measured change, not a no-op
  rep = measure.lever_report(result, tokens.shape[1])
  assert rep["gated"]["removed_threshold"] > 0 and rep["residual"]["removed_delta"] > 0
  assert rep["gated"]["threshold"] == 3 and rep["residual"]["delta"] == 3
  # The state the levers keep is placed: the sender's last value, each receiver's sums.
  res = prog.population("layers.0.res_attn")
  assert res.state_bits["delta_last"] == res.out_bits
  assert "acc_x" in prog.population("layers.0.mlp_norm").state_bits
  _, dense_prog = _lowered(model)
  dense_res = dense_prog.population(res.name)
  assert mapping.state_bits(prog, res) > mapping.state_bits(dense_prog, dense_res)
  ops, dense_ops = (opcount.program_instructions(p)["layers.0.res_attn"]
                    for p in (prog, dense_prog))  # fmt: skip
  assert ops > dense_ops  # the sender's subtract, compare and select, the state it keeps


def test_stateful_senders_are_scored_and_generated_from_the_start(model):
  """`h` does not carry a sigma-delta sender's last value: loads with delta above 0 read every
  sequence from its start, and agree with the program on long inputs and greedy generation."""
  levers = {"delta": ("residual=2", "silu_h=1")}
  d, prog = _lowered(model, **levers)
  hw_model = build_model(d.cfg.replace(precision="hw"), model[1])
  set_hw(hw_model, d.qcfg, model[2])
  lm = LanguageModel(hw_model)
  tokens = np.random.default_rng(3).integers(0, ds.VOCAB, (1, 40))  # past one SCORE_CHUNK
  emu = emulate.Emulator(prog).run(tokens, max_new_tokens=4)
  np.testing.assert_array_equal(lm.logits(tokens), emu.logits[:, :40])
  targets, mask = np.roll(tokens, -1, 1), np.ones_like(tokens, bool)
  mask[:, -1] = False
  ll, _ = lm.loglikelihood(tokens, targets, mask)
  z = emu.logits[0, :39].astype(np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  assert ll[0] == pytest.approx(np.take_along_axis(logp, tokens[0, 1:, None], -1).sum(), 1e-4)
  new = lm.generate(tokens, 4, temperature=0.0, stop_at_eos=False)
  np.testing.assert_array_equal(new, emu.new)


def test_levers_on_static_bitlinear_inputs_are_bit_exact():
  d = ds.draw(3)
  qcfg = d.qcfg.replace(bitlinear_input="static", threshold=("bitlinear_in=2",),
                        delta=("bitlinear_in=1", "g_norm=0"))  # fmt: skip
  d = dataclasses.replace(d, qcfg=qcfg, lm_head="chip")
  params, scales, prog = ds.build(d)
  tokens = _repeating_tokens()
  result = emulate.Emulator(prog).run(tokens, record=True)
  logits, values, _ = ds.hw_run(d, params, scales, tokens)
  np.testing.assert_array_equal(result.logits, logits)
  for pop, key in ds.outputs_by_point(d.cfg.num_hidden_layers).items():
    np.testing.assert_array_equal(result.outputs[pop], values[key] / scales[key].scale, pop)
  rep = measure.lever_report(result, tokens.shape[1])
  assert rep["bitlinear_in"]["removed_threshold"] > 0
  assert rep["bitlinear_in"]["removed_delta"] > 0
  with pytest.raises(ValueError, match="lm_head on chip"):  # the host reads its input dense
    lower.lower(params, d.cfg, qcfg, scales, lm_head="host")


@pytest.mark.parametrize(
  ("kw", "match"),
  [
    ({"delta": ("c=0",)}, r"quant.delta entry 'c=0'.*message point|point of"),
    ({"threshold": ("gated=0",)}, r"quant.threshold\[gated\]=0: must be >= 1"),
    ({"delta": ("residual=-1",)}, r"quant.delta\[residual\]=-1: must be >= 0"),
    ({"delta": ("bitlinear_in=0",)}, "needs quant.bitlinear_input='static'"),
    ({"threshold": ("gated=2",), "disabled": ("gated",)}, "is in quant.disabled"),
  ],
)
def test_bad_levers_are_refused_naming_the_field(kw, match):
  with pytest.raises(ValueError, match=match):
    QuantConfig(**kw)
