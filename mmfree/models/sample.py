"""Next-token sampling: greedy, temperature, top-k, top-p (nucleus)."""

import jax
import jax.numpy as jnp


def sample(logits_BxV, key, temperature: float, top_k: int | None, top_p: float | None):
  """One token per row; temperature 0 is greedy. Arguments other than logits/key are static."""
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV.astype(jnp.float32) / temperature
  if top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  if top_p is not None and top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    p_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # Keep the smallest prefix reaching mass top_p: a token stays if the mass before it < top_p.
    keep_BxV = (jnp.cumsum(p_BxV, axis=-1) - p_BxV) < top_p
    cutoff_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None):
  if temperature < 0:
    raise ValueError(f"temperature={temperature}: must be >= 0 (0 is greedy)")
  if top_k is not None and top_k < 1:
    raise ValueError(f"top_k={top_k}: must be a positive integer or None")
  if top_p is not None and not 0 < top_p <= 1:
    raise ValueError(f"top_p={top_p}: must be in (0, 1] or None")
