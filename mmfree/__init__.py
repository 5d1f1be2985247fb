"""mmfree: MatMul-free language models and their lowering to Intel Loihi 2.

`import mmfree` stays light (no jax): the Loihi modules must import in the Lava environment.
"""

__all__ = ["load"]


def __getattr__(name):
  if name == "load":
    from mmfree.algorithms.load import load

    return load
  raise AttributeError(f"module 'mmfree' has no attribute {name!r}")
