"""The Mosaic (TPU) flash kernel equals the explicit ops in TPU interpret mode (races detected, uninitialised
memory NaN), per shard of a mesh as on one device, and compiles through libtpu for a TPU slice with memory
linear in the length: on v5e, temporaries under 1/8 of the explicit logits' at N = 4,096
(benchmarks/tpu_memory.py runs here, once, at that length)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import tpu_memory
from bilateral_jax import ops, parallel
from bilateral_jax.ops import target
from bilateral_jax.ops.flash import flash_bilateral_attention
from tests.test_benchmarks import ROOT, TINY, check_printed
from tests.test_ops import B, D, H, H_P, H_Y, assert_close, positions, qkv, spatial_params

N = 150  # two 128-wide tiles, the second mostly padding
CHECKED = pltpu.InterpretParams(detect_races=True, uninitialized_memory="nan")


def mosaic(*args, **kwargs):
  return flash_bilateral_attention(*args, kernel="mosaic", interpret=CHECKED, **kwargs)


def gradients_of(attention, args, pos, cotangent, **kwargs):
  def loss(q, k, v, h_y, h_p=None, shift=None):
    out = attention(q, k, v, pos, pos, h_y=h_y, h_p=h_p, shift=shift, **kwargs)
    return jnp.sum(out * cotangent), out
  return jax.value_and_grad(loss, argnums=range(len(args)), has_aux=True)(*args.values())


@pytest.mark.parametrize("content,spatial,dims,causal", [
    ("gaussian", "gaussian", 2, False), ("dot", "laplacian", 1, True), ("gaussian", "shifted", 2, False),
    ("dot", "asymmetric", 1, True), ("gaussian", "none", None, False)])
def test_mosaic_kernel_equals_explicit_forward_and_gradients(content, spatial, dims, causal):
  q, k, v = qkv(seed=3, n=N, m=N)
  pos = None if spatial == "none" else positions(spatial, dims, N)  # first row: no place
  padding = np.ones((B, N), bool)
  padding[1, -5:] = False
  if not causal:
    padding[0] = False  # a row of the batch with no key to attend: uniform weights, as the explicit ops
  kwargs = dict(content=content, spatial=spatial, mask=jnp.asarray(padding)[:, None, None, :], is_causal=causal)
  params = {name: x for name, x in spatial_params(spatial, dims).items() if x is not None and spatial != "none"}
  args = dict(q=q, k=k, v=v, h_y=H_Y) | params
  cotangent = jax.random.normal(jax.random.key(9), (B, N, H, D))
  (_, got), got_grads = gradients_of(mosaic, args, pos, cotangent, **kwargs)
  (_, want), want_grads = gradients_of(ops.explicit_bilateral_attention, args, pos, cotangent, **kwargs)
  assert_close(got, want)
  for got_grad, want_grad in zip(got_grads, want_grads):
    assert_close(got_grad, want_grad, rtol=1e-4)


def test_mosaic_kernel_runs_per_shard_of_the_batch_axes():
  """Under a target mesh the kernel runs in a `shard_map` over the batch; the shared coordinates' and
  bandwidths' gradients are summed over the shards."""
  n, batch = 20, 8
  q, k, v = (jax.random.normal(key, (batch, n, H, D)) for key in jax.random.split(jax.random.key(0), 3))
  pos = positions("gaussian", 2, n)
  mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), parallel.BATCH_AXES)

  def grads(q, k, v, h_y, h_p):
    loss = lambda *a: jnp.sum(jnp.sin(mosaic(*a[:3], pos, pos, h_y=a[3], h_p=a[4])))
    return jax.grad(loss, argnums=range(5))(q, k, v, h_y, h_p)

  def sharded(*args):
    with target.compiling_for("cpu", mesh, parallel.BATCH_AXES):
      return grads(*args)

  batch_sharded = NamedSharding(mesh, P(parallel.BATCH_AXES))
  lowered = jax.jit(sharded).lower(*(jax.device_put(x, batch_sharded) for x in (q, k, v)), H_Y, H_P)
  assert "shard_map" in lowered.as_text() or "sdy.manual_computation" in lowered.as_text()
  for got, want in zip(jax.jit(sharded)(q, k, v, H_Y, H_P), grads(q, k, v, H_Y, H_P)):
    assert_close(got, want, rtol=1e-4)


def test_mosaic_kernel_compiles_for_a_tpu_slice_in_linear_memory(tmp_path):
  """`benchmarks/tpu_memory.py` at its test size (N = 4,096, 2 examples per chip; the benchmark tests leave
  it to this one): libtpu compiles every attention for a v5e 2x2 slice on this CPU host, the flash path as
  three Mosaic kernels (forward, key and query gradients) whose per-chip temporaries are a small fraction of
  the explicit logits'."""
  out = tmp_path / "out.json"
  done = subprocess.run([sys.executable, "benchmarks/tpu_memory.py", *TINY["tpu_memory.py"], "--out", str(out)],
                        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = json.loads(out.read_text())["rows"]
  check_printed("tpu_memory.py", done.stdout, {"rows": rows})
  temp = {(row["case"], row["variant"]): row["temp_mib"] for row in rows}
  for case in tpu_memory.CASES:
    assert temp[case, "BSA, flash (Mosaic)"] * 8 < temp[case, "BSA, explicit logits"], temp
  spatial, causal = tpu_memory.CASES["laplacian, causal"]
  lowered = tpu_memory.lowered_layer(tpu_memory.ATTENTIONS["BSA, flash (Mosaic)"], parallel.tpu_slice("v5e:2x2"),
                                     length=4096, spatial=spatial, causal=causal, batch_per_chip=2)
  assert lowered.as_text().count("tpu_custom_call") == 3, lowered.as_text().count("tpu_custom_call")
