"""The device mesh, and how arrays are laid out on it.

Axes: `data` (batch) and `fsdp` (batch, and parameters: each parameter of at least `mesh.fsdp_min_size`
elements is sharded along its largest dimension that the axis size divides; smaller ones, and those no
dimension of which divides, are replicated). Axis types are Auto, so jitted code runs without `jax.set_mesh`.
"""
from __future__ import annotations

import math
import os
import re

import flax
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
# Below this many elements a parameter is replicated: sharding it saves little memory and costs a gather
# (and a reduce-scatter of its gradient) per step.
FSDP_MIN_SIZE = 2**14


def fsdp_min_size(config) -> int:
  """An experiment config's mesh.fsdp_min_size; the default for the configs of runs saved before it existed."""
  return config.mesh.get("fsdp_min_size", FSDP_MIN_SIZE)


def mesh_size(data: int, fsdp: int, devices=None) -> int:
  """The number of devices a (data, fsdp) mesh spans: all of them (`devices`, default jax's), which it
  must cover exactly."""
  devices = jax.device_count() if devices is None else len(devices)
  if fsdp < 1 or (data != -1 and data < 1) or devices % fsdp or (data != -1 and data * fsdp != devices):
    raise ValueError(f"mesh data={data} x fsdp={fsdp} does not cover the {devices} devices (data=-1 takes "
                     "what fsdp leaves)")
  return devices


def make_mesh(data: int, fsdp: int, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp) mesh over all devices (`devices`, default jax's: e.g. a `tpu_slice` to compile for);
  data = -1 takes what fsdp leaves."""
  data = mesh_size(data, fsdp, devices) // fsdp
  auto = jax.sharding.AxisType.Auto
  return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(auto, auto), devices=devices)


# HBM per chip of each TPU generation, by the device_kind jax reports.
CHIP_BYTES = {"TPU v2": 16 * 2**30, "TPU v3": 32 * 2**30, "TPU v4": 32 * 2**30, "TPU v5 lite": 16 * 2**30,
              "TPU v5": 95 * 2**30, "TPU v6 lite": 32 * 2**30}


def skip_tpu_probe_without_accelerators() -> None:
  """Uses the CPU when libtpu is installed (for compiling TPU slices) on a host that shows no TPU chip
  and no NVIDIA or AMD GPU (jax's own checks) and JAX_PLATFORMS is not set: jax would only probe for a
  TPU there, and libtpu print its start-up warnings. Call before jax starts its backends."""
  import importlib.util  # noqa: PLC0415
  if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
    return
  try:
    from jax._src import hardware_utils  # noqa: PLC0415
    accelerated = (hardware_utils.num_available_tpu_chips_and_device_id()[0] or hardware_utils.has_visible_nvidia_gpu()
                   or hardware_utils.num_available_amd_gpus(stop_at=1))
  except (ImportError, AttributeError, TypeError):  # another jax: let it probe
    return
  if not accelerated:
    jax.config.update("jax_platforms", "cpu")


def tpu_slice(topology: str) -> list:
  """The devices of the TPU slice `topology` as `jax.experimental.topologies` names it (`v5e:2x2`,
  `v4:2x2x2`, `v5p:2x2x1`): what a step is compiled for on any host, through libtpu, with no TPU present."""
  from jax.experimental import topologies  # noqa: PLC0415
  # Nothing runs on a TPU here: let several such compiles (and a training on this host's TPUs) share libtpu,
  # which otherwise takes a lock file for the first process that loads it, and tell libtpu what it would ask
  # a TPU VM's metadata server (absent here: it prints warnings), unless the environment says it already.
  for name, value in (("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"), ("TPU_SKIP_MDS_QUERY", "1"),
                      ("TPU_WORKER_HOSTNAMES", "localhost"), ("TPU_ACCELERATOR_TYPE", "v5litepod-4")):
    os.environ.setdefault(name, value)
  try:
    return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
  except Exception as error:  # noqa: BLE001 - libtpu missing, or a name it does not know
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise ValueError(f"cannot describe the TPU slice {topology!r} ({message[:200]}); it needs libtpu (`make venv` "
                     "installs it; or `pip install libtpu`) and a name such as v5e:2x2, v4:2x2x2 or v5p:2x2x1") from None


def device_bytes(devices) -> int | None:
  """The HBM of one device of a TPU slice's `devices` (a chip, or one core of a chip when the slice shows
  its cores as devices), or None for a kind CHIP_BYTES does not know."""
  chip = CHIP_BYTES.get(devices[0].device_kind)
  cores = len({getattr(device, "core_on_chip", 0) for device in devices})
  return None if chip is None else chip // cores


def hbm_refusal(error: Exception) -> str | None:
  """libtpu's reason for refusing a program larger than a chip's HBM ("the total memory required for HLO
  temporaries (19.98G) exceeds available HBM (15.75G)"), or None for any other error."""
  if "RESOURCE_EXHAUSTED" not in str(error):
    return None
  reason = re.search(r"Ran out of memory on HBM, (.*?)\.\s", str(error) + " ")
  return reason.group(1) if reason else str(error).splitlines()[0]


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_axis(shape: tuple[int, ...], size: int, min_size: int = FSDP_MIN_SIZE) -> int | None:
  """The dimension of an array of `shape` to shard over an fsdp axis of `size` devices: the largest one
  `size` divides (the last of equals); None (replicate) for size 1, fewer than `min_size` elements, or
  no such dimension."""
  if size == 1 or math.prod(shape) < min_size:
    return None
  divisible = [axis for axis in reversed(range(len(shape))) if shape[axis] >= size and shape[axis] % size == 0]
  return max(divisible, key=lambda axis: shape[axis], default=None)


def fsdp_sharding(mesh, abstract_tree, min_size: int = FSDP_MIN_SIZE):
  """Shardings for a tree of arrays (parameters, optimizer state) under the fsdp rule above."""
  size = mesh.shape["fsdp"]

  def spec(leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    axis = fsdp_axis(shape, size, min_size)
    return NamedSharding(mesh, P(*[("fsdp" if a == axis else None) for a in range(len(shape))]))

  return jax.tree.map(spec, abstract_tree)


def readable_bytes(count: float) -> str:
  """A byte count with its unit (B, KiB, MiB, GiB), 4 significant digits."""
  for unit in ("B", "KiB", "MiB"):
    if count < 1024:
      return f"{count:.4g} {unit}"
    count /= 1024
  return f"{count:.4g} GiB"


def fsdp_report(abstract_params, size: int, min_size: int = FSDP_MIN_SIZE) -> tuple[str, str | None]:
  """-> (a line of the bytes of parameters sharded and replicated over an fsdp axis of `size`, a warning
  line naming the parameters of >= `min_size` elements that stay replicated because `size` divides none of
  their dimensions, or None)."""
  sharded, kept, unshardable = [], [], []
  for path, leaf in flax.traverse_util.flatten_dict(abstract_params, sep="/").items():
    shape = tuple(leaf.shape)
    nbytes = math.prod(shape) * np.dtype(leaf.dtype).itemsize
    if fsdp_axis(shape, size, min_size) is not None:
      sharded.append(nbytes)
    else:
      kept.append(nbytes)
      if size > 1 and shape and math.prod(shape) >= min_size:  # (a scalar has nothing to shard)
        unshardable.append(f"{path} {shape}")
  line = (f"fsdp: parameters {readable_bytes(sum(sharded))} in {len(sharded)} arrays sharded over {size} devices "
          f"({readable_bytes(sum(sharded) / size)} each), {readable_bytes(sum(kept))} in {len(kept)} replicated "
          f"(under {min_size:,} elements or no dimension divisible by {size}); the optimizer state follows them")
  if not unshardable:
    return line, None
  more = f", and {len(unshardable) - 3} more" if len(unshardable) > 3 else ""
  return line, (f"fsdp={size} divides no dimension of {len(unshardable)} parameter(s) of >= {min_size:,} "
                f"elements, replicated: {', '.join(unshardable[:3])}{more}")


def global_batch(local_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """This process's rows of a global batch -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, value) for name, value in local_batch.items()}


def devices_for_dry_run(data: int, fsdp: int) -> int:
  """CPU devices to compile a (data, fsdp) mesh on this machine: its size, or 0 (keep the real devices)
  when data = -1 takes whatever there is."""
  return 0 if data == -1 else data * fsdp
