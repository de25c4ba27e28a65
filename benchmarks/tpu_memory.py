"""Per-chip memory of one attention layer's forward + backward as libtpu compiles it for a TPU slice, on
any host (no TPU needed): standard attention (XLA, and jax's splash kernel: Mosaic, no bias), BSA's explicit
logits (`xla`) and BSA's flash kernel (`pallas`, Mosaic), side by side in one run.

    python benchmarks/tpu_memory.py [--topology v5e:2x2] [--lengths 1024 4096 16384] [--batch-per-chip 8]
                                    [--heads 8] [--head-dim 64] [--out runs/benchmark_tpu_memory.json]

bfloat16, a key padding mask, 1-D coordinates, the Gaussian spatial kernel (bidirectional) and the causal
Laplacian (a language model); the batch is split over the slice's chips (`data` axis), the kernel runs per
chip in a `shard_map`. Temporaries are XLA's temporary buffers in a chip's HBM (libtpu places small ones in
on-chip memory: they count 0, and a ratio to a 0 is shown as -); a Pallas kernel's VMEM tiles are not in
them (a few MiB per core). A program larger than a chip's HBM is reported as not fitting.
"""
import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash  # noqa: E402
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from bilateral_jax import ops, parallel  # noqa: E402
from bilateral_jax.ops import target  # noqa: E402
from bilateral_jax.ops.flash import flash_bilateral_attention  # noqa: E402


def splash_attention(q, k, v, mask, causal: bool):
  """Standard attention through jax's splash kernel, per chip of the target mesh's batch axes (as the
  flash kernel runs): q, k, v [B, N, H, D], mask [B, 1, 1, N] (keys, as segment ids) -> [B, N, H, D]."""
  _, length, heads, head_dim = q.shape
  shape = splash_mask.CausalMask((length, length)) if causal else splash_mask.FullMask((length, length))
  kernel = splash.make_splash_mha(splash_mask.MultiHeadMask([shape] * heads), head_shards=1, q_seq_shards=1)
  heads_first = lambda x: x.transpose(0, 2, 1, 3)

  def per_chip(q, k, v, segments):
    attend = lambda q, k, v, ids: kernel(q, k, v, segment_ids=splash.SegmentIds(q=ids, kv=ids))
    return heads_first(jax.vmap(attend)(heads_first(q) * head_dim**-0.5, heads_first(k), heads_first(v), segments))

  target_ = target.current()
  batch = P(target_.batch_axes)
  run = jax.shard_map(per_chip, mesh=target_.mesh, in_specs=(batch,) * 4, out_specs=batch, check_vma=False)
  return run(q, k, v, mask[:, 0, 0].astype(jnp.int32))


ATTENTIONS = {
    "standard (XLA)": lambda q, k, v, coords, mask, causal, h_y, h_p, spatial: jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=causal),
    "standard (splash)": lambda q, k, v, coords, mask, causal, h_y, h_p, spatial: splash_attention(
        q, k, v, mask, causal),
    "BSA, explicit logits": lambda q, k, v, coords, mask, causal, h_y, h_p, spatial: ops.explicit_bilateral_attention(
        q, k, v, coords, coords, h_y=h_y, h_p=h_p, spatial=spatial, mask=mask, is_causal=causal),
    "BSA, flash (Mosaic)": lambda q, k, v, coords, mask, causal, h_y, h_p, spatial: flash_bilateral_attention(
        q, k, v, coords, coords, h_y=h_y, h_p=h_p, spatial=spatial, mask=mask, is_causal=causal),
}
STANDARD = next(iter(ATTENTIONS))
CASES = {"gaussian, bidirectional": ("gaussian", False), "laplacian, causal": ("laplacian", True)}


def lowered_layer(attention, devices, *, length: int, spatial: str, causal: bool, batch_per_chip: int = 8,
                  heads: int = 8, head_dim: int = 64):
  """jit(grad) of one bf16 attention layer (`ATTENTIONS` signature), lowered for `devices` with the batch
  split over them (`.compile()` it for its memory)."""
  mesh = Mesh(np.array(devices), ("data",))
  coords = ops.sequence_coordinates(length)
  batch = batch_per_chip * len(devices)

  def loss(q, k, v, h_y, h_p):
    mask = jnp.ones((batch, 1, 1, length), bool)
    return jnp.sum(attention(q, k, v, coords, mask, causal, h_y, h_p, spatial).astype(jnp.float32) ** 2)

  x = jax.ShapeDtypeStruct((batch, length, heads, head_dim), jnp.bfloat16, sharding=NamedSharding(mesh, P("data")))
  bandwidths = jax.ShapeDtypeStruct((heads,), jnp.float32, sharding=NamedSharding(mesh, P()))
  with target.compiling_for("tpu", mesh, ("data",)):
    return jax.jit(jax.grad(loss, argnums=range(5))).lower(x, x, x, bandwidths, bandwidths)


def main():
  parallel.skip_tpu_probe_without_accelerators()
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--topology", default="v5e:2x2")
  parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
  parser.add_argument("--batch-per-chip", type=int, default=8)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--out", default="runs/benchmark_tpu_memory.json")
  args = parser.parse_args()
  devices = parallel.tpu_slice(args.topology)
  print(f"{args.topology} ({len(devices)} x {devices[0].device_kind}), bfloat16, {args.batch_per_chip} examples "
        f"per chip, heads {args.heads}, head_dim {args.head_dim}, forward + backward, temporaries per chip")
  rows = []
  for case, (spatial, causal) in CASES.items():
    for length in args.lengths:
      baseline = None
      for name, attention in ATTENTIONS.items():
        start = time.perf_counter()
        try:
          compiled = lowered_layer(attention, devices, length=length, spatial=spatial, causal=causal,
                                   batch_per_chip=args.batch_per_chip, heads=args.heads,
                                   head_dim=args.head_dim).compile()
        except jax.errors.JaxRuntimeError as error:  # libtpu refuses a program larger than the chip's HBM
          if parallel.hbm_refusal(error) is None:
            raise
          rows.append(dict(case=case, length=length, variant=name, fits=False))
          print(f"{case:<24} N={length:<6} {name:<22} does not fit in a chip's HBM")
          continue
        seconds = time.perf_counter() - start
        temp = compiled.memory_analysis().temp_size_in_bytes
        baseline = temp if name == STANDARD else baseline
        ratio = temp / baseline if baseline else None  # small buffers may live in on-chip memory: 0 bytes
        rows.append(dict(case=case, length=length, variant=name, fits=True, temp_mib=temp / 2**20,
                         ratio_vs_standard=ratio, compile_s=seconds))
        shown = "     -" if ratio is None else f"{ratio:6.2f}"
        print(f"{case:<24} N={length:<6} {name:<22} temp {temp / 2**20:10.1f} MiB  x{shown}  "
              f"compile {seconds:5.1f} s")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(topology=args.topology, device=devices[0].device_kind, rows=rows), indent=2))


if __name__ == "__main__":
  main()
