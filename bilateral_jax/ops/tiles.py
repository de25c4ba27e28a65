"""The tile math of the flash BSA kernels, shared by the Triton kernels (`ops.flash`) and the Mosaic kernels
(`ops.flash_tpu`): the logits of one [block_q, block_k] tile from the scaled q, k and coordinates (the
logit form is in `ops.flash`), and the softmax cotangents of one tile for the backward kernels.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import tpu as pltpu

from bilateral_jax.ops.kernels import SPATIAL

MASKED = float(jnp.finfo(jnp.float32).min)  # the masked logit of `attention_weights`


class Options(NamedTuple):
  """The static settings of one kernel call."""
  spatial: str | None  # a kernel with an in-tile form (`SpatialKernel.tile`), or None
  causal: bool
  q_len: int  # unpadded lengths: rows and keys beyond them are padding
  k_len: int
  block_q: int  # the tile side along the queries and the keys
  block_k: int
  interpret: bool | pltpu.InterpretParams


def dot(a, b, contract=((1,), (0,))):
  """a, b (2-D) contracted over `contract` (a's axis, b's axis), in float32; float32 inputs at full
  precision (not TF32 on a GPU: the tests' tolerances are those of float32 math)."""
  precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return lax.dot_general(a, b, (contract, ((), ())), precision=precision, preferred_element_type=jnp.float32)


def tile(q, k, k_bias, k_keep, q_coords, k_coords, q_start, k_start, opts: Options):
  """Logits [block_q, block_k] (float32) of one tile, which pairs count ([block_q, block_k] bool), and
  dS/dR_q per coordinate row (a list of [block_q, block_k]; empty without a spatial term).

  q [block_q, d], k [block_k, d], k_bias/k_keep [1, block_k]; q_coords: the coordinate rows of the queries
  as columns [block_q, 1], k_coords those of the keys as rows [1, block_k]; the last of each is the 0/1
  `placed` flag. q_start, k_start: the first query and key of the tile.
  """
  s = dot(q, k, ((1,), (1,))) + k_bias
  spatial_grads = []
  if opts.spatial is not None:
    placed = q_coords[-1] * k_coords[-1]
    term, grads = SPATIAL[opts.spatial].tile([a - b for a, b in zip(q_coords[:-1], k_coords[:-1])])
    s = s + placed * term
    spatial_grads = [placed * g for g in grads]
  rows = q_start + lax.broadcasted_iota(jnp.int32, s.shape, 0)
  cols = k_start + lax.broadcasted_iota(jnp.int32, s.shape, 1)
  keep = k_keep > 0
  if opts.causal:
    keep = keep & (cols <= rows)
  s = jnp.where(keep, s, MASKED)
  real = cols < opts.k_len
  s = jnp.where(real, s, -jnp.inf)  # padding keys weigh nothing, even in a row where every key is masked
  return s, keep & real, spatial_grads


def tile_gradients(q, k, v, k_bias, k_keep, q_coords, k_coords, do, m, inv_l, delta, q_start, k_start,
                   opts: Options):
  """Softmax weights p and logit cotangents ds = p (dO.v - delta) of one tile ([block_q, block_k] each),
  and `tile`'s dS/dR_q.

  `tile`'s arguments, and v [block_k, d_v], do [block_q, d_v]; m, inv_l, delta: the row max, 1 / normaliser
  and rowsum(dO * O) as columns [block_q, 1].
  """
  s, counted, spatial_grads = tile(q, k, k_bias, k_keep, q_coords, k_coords, q_start, k_start, opts)
  p = jnp.exp(s - m) * inv_l
  dp = dot(do, v, ((1,), (1,)))
  ds = jnp.where(counted, p * (dp - delta), 0.0)  # a fully masked row has constant logits
  return p, ds, spatial_grads
