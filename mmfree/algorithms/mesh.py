"""Where training's arrays live: a (data, fsdp) device mesh and the sharding of every array.

A parameter (and each AdamW moment, which has its shape) is split over `fsdp` along its largest
dimension that `fsdp` divides, replicated over `data`; one with no such dimension (a norm's gain
at an odd width, a scalar) is replicated. The rule reads shapes only, so a parameter and its
optimizer moments always share a layout. Batch rows split over both axes.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmfree.core.train import MeshConfig

AXES = ("data", "fsdp")
BATCH = PartitionSpec(AXES)  # rows over every device


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
  """The (data, fsdp) mesh of `devices` (all of them: every process's, under jax.distributed)."""
  devices = jax.devices() if devices is None else devices
  shape = cfg.shape(len(devices))
  return Mesh(np.asarray(devices).reshape(shape), AXES)


def spec(shape: tuple, fsdp: int) -> PartitionSpec:
  """`fsdp` on the largest dimension it divides (the first of equal ones), or replicated."""
  if fsdp == 1:
    return PartitionSpec()
  dims = sorted(range(len(shape)), key=lambda i: (-shape[i], i))
  dim = next((i for i in dims if shape[i] % fsdp == 0), None)
  if dim is None:
    return PartitionSpec()
  return PartitionSpec(*("fsdp" if i == dim else None for i in range(len(shape))))


def shardings(tree, mesh: Mesh):
  """A NamedSharding for every array leaf of `tree` (arrays or ShapeDtypeStructs)."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, spec(np.shape(x), fsdp)), tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, BATCH)


def bytes_per_device(tree, mesh: Mesh) -> int:
  """Bytes one device holds of `tree` under `shardings` (the largest shard of each leaf)."""
  sh = shardings(tree, mesh)
  total = 0
  for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(sh), strict=True):
    total += int(np.prod(s.shard_shape(np.shape(x)))) * np.dtype(x.dtype).itemsize
  return total
