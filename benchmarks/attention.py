"""Forward + backward time and temporary memory of attention: standard (`jax.nn.dot_product_attention`,
cuDNN's on a GPU) vs BSA on each path, measured side by side in one run.

    python benchmarks/attention.py [--lengths N ...] [--batch 2] [--heads 8] [--head-dim 64]
                                   [--rounds 5] [--out runs/benchmark_attention.json]

Paths (`bilateral_jax.ops.dispatch`): `xla` is the explicit logits (`explicit_bilateral_attention`); `folded` is
`folded_bilateral_attention` (cuDNN on a GPU where it applies) for the foldable kernels (dot content + causal Laplacian spatial, i.e.
learned-bandwidth ALiBi; Gaussian content without spatial term; TUPE); `pallas` is the flash kernel
(in-tile spatial terms, or the folded q and k for TUPE; interpreted on CPU). Every variant is causal. Times are medians of
interleaved rounds; memory is XLA's temporary buffer size for the compiled forward + backward (a Pallas
kernel's own tiles are not in it). float32 on CPU, lengths 512-2048; bfloat16 on GPU, lengths 512-16K.
A variant that does not fit in memory is reported as such.
"""
import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bilateral_jax import ops, parallel  # noqa: E402
from bilateral_jax.ops.dispatch import pallas_attention  # noqa: E402
from bilateral_jax.ops.flash import flash_bilateral_attention  # noqa: E402
from bilateral_jax.ops.folded import folded_bilateral_attention  # noqa: E402


# cuDNN's fused attention on a GPU (the baseline to beat there), XLA's elsewhere.
STANDARD_BACKEND = "cudnn" if jax.default_backend() == "gpu" else None


def variants(length, heads):
  coords = ops.sequence_coordinates(length)
  h_y, h_p = jnp.full((heads,), 2.0), ops.geometric_bandwidths(heads, 1.0, 256.0)
  features = 0.1 * jax.random.normal(jax.random.key(1), (length, heads, 8))  # TUPE's projected position table
  return {
      "standard (jax.nn)": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                                        implementation=STANDARD_BACKEND),
      "BSA gaussian/gaussian, xla": lambda q, k, v: ops.explicit_bilateral_attention(
          q, k, v, coords, coords, h_y=h_y, h_p=h_p, is_causal=True),
      "BSA dot/laplacian, xla": lambda q, k, v: ops.explicit_bilateral_attention(
          q, k, v, coords, coords, h_y=h_y, h_p=h_p, content="dot", spatial="laplacian", is_causal=True),
      "BSA dot/laplacian, folded": lambda q, k, v: folded_bilateral_attention(
          q, k, v, coords, coords, h_y=h_y, h_p=h_p, content="dot", spatial="laplacian", is_causal=True),
      "BSA gaussian/none, folded": lambda q, k, v: folded_bilateral_attention(
          q, k, v, None, None, h_y=h_y, h_p=None, content="gaussian", spatial=None, is_causal=True),
      "BSA gaussian/gaussian, pallas": lambda q, k, v: flash_bilateral_attention(
          q, k, v, coords, coords, h_y=h_y, h_p=h_p, is_causal=True),
      "BSA dot/laplacian, pallas": lambda q, k, v: flash_bilateral_attention(
          q, k, v, coords, coords, h_y=h_y, h_p=h_p, content="dot", spatial="laplacian", is_causal=True),
      "BSA dot/dot (TUPE), folded": lambda q, k, v: folded_bilateral_attention(
          q, k, v, features, features, h_y=h_y, h_p=h_y, content="dot", spatial="dot", is_causal=True),
      "BSA dot/dot (TUPE), pallas": lambda q, k, v: pallas_attention(
          q, k, v, features, features, h_y=h_y, h_p=h_y, content="dot", spatial="dot", is_causal=True),
  }


def main():
  parallel.skip_tpu_probe_without_accelerators()
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", type=int, nargs="+")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--out", default="runs/benchmark_attention.json")
  args = parser.parse_args()
  on_cpu = jax.default_backend() == "cpu"
  dtype = jnp.float32 if on_cpu else jnp.bfloat16
  lengths = args.lengths or ([512, 1024, 2048] if on_cpu else [512, 1024, 2048, 4096, 8192, 16384])
  rows = []
  print(f"{jax.devices()[0].device_kind}, {jnp.dtype(dtype).name}, batch {args.batch}, heads {args.heads}, "
        f"head_dim {args.head_dim}, causal, forward + backward")
  for length in lengths:
    shape = (args.batch, length, args.heads, args.head_dim)
    q, k, v = (jax.random.normal(key, shape, dtype) for key in jax.random.split(jax.random.key(0), 3))
    compiled, times = {}, {}
    for name, attention in variants(length, args.heads).items():
      step = jax.jit(jax.grad(lambda q, k, v, f=attention: jnp.sum(f(q, k, v).astype(jnp.float32) ** 2),
                              argnums=(0, 1, 2)))
      try:
        compiled[name] = step.lower(q, k, v).compile()
        jax.block_until_ready(compiled[name](q, k, v))
      except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
          raise
        compiled.pop(name, None)
        rows.append(dict(length=length, variant=name, out_of_memory=True))
        print(f"N={length:<6} {name:<30} out of memory")
        continue
      times[name] = []
    for _ in range(args.rounds):
      for name, fn in compiled.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(q, k, v))
        times[name].append(time.perf_counter() - start)
    baseline = statistics.median(times["standard (jax.nn)"])
    for name, fn in compiled.items():
      seconds = statistics.median(times[name])
      memory = fn.memory_analysis()
      temp = getattr(memory, "temp_size_in_bytes", float("nan")) if memory is not None else float("nan")
      rows.append(dict(length=length, variant=name, ms=1e3 * seconds, ratio_vs_standard=seconds / baseline,
                       temp_mib=temp / 2**20))
      print(f"N={length:<6} {name:<30} {1e3 * seconds:9.2f} ms  x{seconds / baseline:5.2f}  "
            f"temp {temp / 2**20:8.1f} MiB")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(device=str(jax.devices()[0].device_kind), dtype=jnp.dtype(dtype).name,
                                 rows=rows), indent=2))


if __name__ == "__main__":
  main()
