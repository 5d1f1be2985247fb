"""`mmfree.load` and generation: greedy against full-sequence logits, sampling filters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mmfree
from mmfree.algorithms.load import LanguageModel
from mmfree.models import MMfreeLM, preset
from mmfree.models.sample import sample
from mmfree.store import checkpoint


@pytest.fixture(scope="module")
def lm():
  model = MMfreeLM(preset("tiny"), nnx.Rngs(0))
  model.lower_bounds[...] = jax.random.normal(jax.random.key(1), model.lower_bounds.shape)
  return LanguageModel(model)


def test_greedy_generation_follows_full_sequence_argmax(lm):
  prompt = np.array([[5, 17, 33, 2], [9, 9, 100, 7]], np.int32)
  new = lm.generate(prompt, 12, temperature=0, stop_at_eos=False)
  assert new.shape == (2, 12)
  # Recompute every position in one parallel call: each new token is the argmax before it.
  logits = lm.logits(np.concatenate([prompt, new], axis=1))
  np.testing.assert_array_equal(new, logits[:, prompt.shape[1] - 1 : -1].argmax(-1))


def test_sampling_is_seeded_and_top_k_1_is_greedy(lm):
  prompt = [3, 4, 5]
  greedy = lm.generate(prompt, 8, temperature=0, stop_at_eos=False)
  assert greedy.shape == (8,)
  np.testing.assert_array_equal(lm.generate(prompt, 8, top_k=1, stop_at_eos=False), greedy)
  a = lm.generate(prompt, 16, temperature=2.0, seed=1, stop_at_eos=False)
  np.testing.assert_array_equal(
    a, lm.generate(prompt, 16, temperature=2.0, seed=1, stop_at_eos=False)
  )
  assert not np.array_equal(a, lm.generate(prompt, 16, temperature=2.0, seed=2, stop_at_eos=False))


def test_top_k_and_top_p_filter_the_distribution():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  draw = lambda **kw: {int(sample(logits, jax.random.key(i), 1.0, **kw)[0]) for i in range(300)}
  assert draw(top_k=None, top_p=None) == {0, 1, 2, 3}
  assert draw(top_k=2, top_p=None) == {0, 1}
  assert draw(top_k=None, top_p=0.6) == {0, 1}  # 0.5 < 0.6, so the second token is needed
  assert draw(top_k=None, top_p=0.5) == {0}


def test_generation_stops_at_eos(lm):
  eos = lm.config.eos_token_id
  first = int(lm.generate([3, 4, 5], 1, temperature=0)[0])
  lm.config = lm.config.replace(eos_token_id=first)
  try:
    assert lm.generate([3, 4, 5], 10, temperature=0).tolist() == [first]
  finally:
    lm.config = lm.config.replace(eos_token_id=eos)


def test_bad_inputs_are_refused(lm):
  with pytest.raises(ValueError, match="prompt_tokens"):
    lm.generate([1, 999], 3)
  with pytest.raises(ValueError, match="tokens_BxT"):
    lm.logits(np.zeros((1, 2, 3), np.int32))
  with pytest.raises(ValueError, match="temperature"):
    lm.generate([1], 3, temperature=-1)
  with pytest.raises(ValueError, match="top_p"):
    lm.generate([1], 3, top_p=1.5)


def test_load_run_directory_without_tokenizer(tmp_path, lm):
  cfg = preset("tiny")
  model = MMfreeLM(cfg, nnx.Rngs(4))
  checkpoint.write_config(tmp_path, cfg)
  checkpoint.save_params(tmp_path, 7, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  loaded = mmfree.load(tmp_path)
  assert loaded.tokenizer is None and loaded.config == cfg
  tokens = np.array([[1, 2, 3, 4]])
  np.testing.assert_allclose(loaded.logits(tokens), model(jnp.asarray(tokens))[0], rtol=1e-5)
  as_float = mmfree.load(tmp_path, precision="float")
  assert not np.allclose(as_float.logits(tokens), loaded.logits(tokens))


def test_load_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such directory"):
    mmfree.load(tmp_path / "missing")
  (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
  with pytest.raises(ValueError, match="safetensors"):
    mmfree.load(tmp_path)
