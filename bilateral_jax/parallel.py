"""The device mesh, and how arrays are laid out on it.

Axes: `data` (batch) and `fsdp` (batch, and parameters: each parameter's largest dimension divisible by
the axis size is sharded along it; others are replicated). Axis types are Auto, so jitted code runs
without `jax.set_mesh`.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def mesh_size(data: int, fsdp: int) -> int:
  """The number of devices a (data, fsdp) mesh spans: all of them, which it must cover exactly."""
  devices = jax.device_count()
  if fsdp < 1 or (data != -1 and data < 1) or devices % fsdp or (data != -1 and data * fsdp != devices):
    raise ValueError(f"mesh data={data} x fsdp={fsdp} does not cover the {devices} devices (data=-1 takes "
                     "what fsdp leaves)")
  return devices


def make_mesh(data: int, fsdp: int) -> jax.sharding.Mesh:
  """A (data, fsdp) mesh over all devices; data = -1 takes what fsdp leaves."""
  data = mesh_size(data, fsdp) // fsdp
  auto = jax.sharding.AxisType.Auto
  return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(auto, auto))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_sharding(mesh, abstract_tree):
  """Shardings for a tree of arrays (parameters, optimizer state) under the fsdp rule above."""
  size = mesh.shape["fsdp"]

  def spec(leaf):
    shape = getattr(leaf, "shape", ())
    if size > 1:
      for axis in np.argsort(shape)[::-1]:
        if shape[axis] % size == 0 and shape[axis] >= size:
          return NamedSharding(mesh, P(*[("fsdp" if a == axis else None) for a in range(len(shape))]))
    return NamedSharding(mesh, P())

  return jax.tree.map(spec, abstract_tree)


def global_batch(local_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """This process's rows of a global batch -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, value) for name, value in local_batch.items()}


def devices_for_dry_run(data: int, fsdp: int) -> int:
  """CPU devices to compile a (data, fsdp) mesh on this machine: its size, or 0 (keep the real devices)
  when data = -1 takes whatever there is."""
  return 0 if data == -1 else data * fsdp
