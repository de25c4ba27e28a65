"""What a traced computation is compiled for: the platform ('cpu', 'gpu', 'tpu') and, where known, the
mesh whose batch axes the kernels run over (`jax.shard_map`: a Pallas kernel is not partitioned by XLA).
A TPU slice compiled from a CPU host is a TPU target."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class Target:
  platform: str
  mesh: jax.sharding.Mesh | None = None
  batch_axes: tuple[str, ...] = ()


_TARGET = contextvars.ContextVar("bsa_compile_target", default=None)


@contextlib.contextmanager
def compiling_for(platform: str, mesh: jax.sharding.Mesh | None = None, batch_axes: tuple[str, ...] = ()):
  """Traces inside choose their path for `platform` (the devices the step is compiled for) instead of this
  host's default backend, and run their kernels per shard of `mesh`'s `batch_axes`."""
  token = _TARGET.set(Target(platform, mesh, tuple(batch_axes)))
  try:
    yield
  finally:
    _TARGET.reset(token)


def current() -> Target:
  """`compiling_for`'s target, else jax's default backend with no mesh."""
  return _TARGET.get() or Target(jax.default_backend())


def target_platform() -> str:
  return current().platform
