"""The fsdp rule: which parameters are sharded over the fsdp axis, and what the start-up summary says of it."""
import jax
import numpy as np

from bilateral_jax import parallel

PARAMS = {  # at fsdp = 8 and the default minimum size, 2**14 elements
    "small": jax.ShapeDtypeStruct((64, 64), np.float32),  # 4,096 elements: replicated
    "embed": jax.ShapeDtypeStruct((1002, 64), np.float32),  # 1002 % 8 = 2: sharded along 64
    "mlp": jax.ShapeDtypeStruct((410, 2100), np.float32),  # neither divisible: replicated, and warned
    "kernel": jax.ShapeDtypeStruct((256, 1024), np.float32),  # sharded along the larger, 1024
}


def test_small_parameters_replicated_large_ones_sharded_along_their_largest_divisible_dimension():
  axes = {name: parallel.fsdp_axis(leaf.shape, 8) for name, leaf in PARAMS.items()}
  assert axes == {"small": None, "embed": 1, "mlp": None, "kernel": 1}
  assert parallel.fsdp_axis((64, 64), 8, min_size=0) == 1  # equal dimensions: the last
  assert parallel.fsdp_axis((256, 1024), 1) is None and parallel.fsdp_axis((), 8, min_size=0) is None
  mesh = parallel.make_mesh(1, 8)
  shardings = parallel.fsdp_sharding(mesh, PARAMS | {"step": jax.ShapeDtypeStruct((), np.int32)})
  shards = {name: jax.device_put(np.zeros(leaf.shape, leaf.dtype), shardings[name]).addressable_shards[0].data.shape
            for name, leaf in PARAMS.items()}
  assert shards == {"small": (64, 64), "embed": (1002, 8), "mlp": (410, 2100), "kernel": (256, 128)}
  assert shardings["step"].spec == jax.sharding.PartitionSpec()


def test_report_gives_the_bytes_sharded_and_replicated_and_names_a_large_parameter_it_cannot_shard():
  line, warning = parallel.fsdp_report({"model": PARAMS}, 8)
  sharded = (1002 * 64 + 256 * 1024) * 4
  assert line.startswith(f"fsdp: parameters {sharded / 2**20:.4g} MiB in 2 arrays sharded over 8 devices "
                         f"({sharded / 8 / 2**10:.4g} KiB each), {(64 * 64 + 410 * 2100) * 4 / 2**20:.4g} MiB in 2 "
                         "replicated (under 16,384 elements or no dimension divisible by 8)"), line
  assert "optimizer state follows" in line and "\n" not in line
  assert warning == ("fsdp=8 divides no dimension of 1 parameter(s) of >= 16,384 elements, replicated: "
                     "model/mlp (410, 2100)")
  assert parallel.fsdp_report({"model": PARAMS}, 8, min_size=10**6)[1] is None  # 861,000 elements: small now
