"""Adaptive input embeddings and the adaptive softmax (Grave et al. 2017; Baevski & Auli 2019), in the
form of Transformer-XL's and lmtool-fwms' `AdaptiveEmbedding` and `ProjectedAdaptiveLogSoftmax`.

The vocabulary, ids ordered by decreasing frequency, is cut into clusters at `cutoffs`: cluster i holds ids
[bounds[i], bounds[i + 1]) (`cluster_bounds`). Cluster i has width dim_i = model_dim // div_val**i: a table
[size_i, dim_i] and, where present, a projection P_i [dim_i, model_dim]. A token's input embedding is its
row of its cluster's table times P_i. The output distribution is p(w) = p_head(w) for w in cluster 0 and
p_head(tail i) p_i(w) for w in tail cluster i: the head scores cluster 0's words plus one logit per tail
cluster on h P_0^T; tail i scores its words on h P_i^T (the input's map, transposed: tied projections are
the same array).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def cluster_bounds(cutoffs, vocab_size: int) -> tuple[int, ...]:
  """(0, c_1, ..., vocab_size): cluster i is ids [bounds[i], bounds[i + 1]). Cutoffs at or beyond the
  vocabulary are dropped (a small vocabulary gets fewer clusters)."""
  cutoffs = tuple(int(c) for c in cutoffs)
  if any(b <= a for a, b in zip((0,) + cutoffs, cutoffs)):
    raise ValueError(f"adaptive cutoffs {cutoffs} must be positive and increasing")
  return (0,) + tuple(c for c in cutoffs if c < vocab_size) + (vocab_size,)


def cluster_dims(model_dim: int, div_val: int, clusters: int) -> tuple[int, ...]:
  """Cluster i's width model_dim // div_val**i."""
  dims = tuple(model_dim // max(div_val, 1)**i for i in range(clusters))
  if div_val < 1 or min(dims) < 1:
    raise ValueError(f"div_val={div_val} leaves a cluster of {clusters} with no width (model_dim {model_dim})")
  return dims


class AdaptiveSoftmax(NamedTuple):
  """The output layer's arrays; cluster i's ids follow from the table sizes (cluster 0 first).

  tables: [size_i, dim_i] per cluster (tied: the input embedding tables); bias: [size_i] per cluster;
  projections: P_i [dim_i, model_dim] per cluster, or None (dim_i == model_dim, no map): h -> h P_i^T;
  cluster_weight [clusters - 1, dim_0], cluster_bias [clusters - 1]: the head's logits of the tails.
  """
  tables: tuple
  bias: tuple
  projections: tuple
  cluster_weight: jax.Array
  cluster_bias: jax.Array


def adaptive_embed(tokens, tables, projections) -> jax.Array:
  """tokens [...] int -> [..., model_dim]: each token's row of its cluster's table (clusters in id order,
  sized by the tables) times that cluster's projection [dim_i, model_dim] (None: the row itself)."""
  out, start = 0.0, 0
  for table, projection in zip(tables, projections):
    size = table.shape[0]
    rows = jnp.take(table, jnp.clip(tokens - start, 0, size - 1), axis=0)
    rows = rows if projection is None else rows @ projection
    out = out + jnp.where(((tokens >= start) & (tokens < start + size))[..., None], rows, 0.0)
    start += size
  return out


def _cluster_log_probs(hidden, softmax: AdaptiveSoftmax) -> list[jax.Array]:
  """hidden [..., model_dim] -> per cluster, log p of its words [..., size_i] (tails include the head's
  log-probability of the cluster)."""
  logits = []
  for i, (table, bias, projection) in enumerate(zip(softmax.tables, softmax.bias, softmax.projections)):
    h = hidden if projection is None else hidden @ projection.T
    if i == 0:
      table = jnp.concatenate([table, softmax.cluster_weight.astype(table.dtype)], axis=0)
      bias = jnp.concatenate([bias, softmax.cluster_bias.astype(bias.dtype)], axis=0)
    logits.append(h @ table.T + bias)
  head = jax.nn.log_softmax(logits[0], axis=-1)
  shortlist = softmax.tables[0].shape[0]
  return [head[..., :shortlist]] + [head[..., shortlist + i, None] + jax.nn.log_softmax(tail, axis=-1)
                                    for i, tail in enumerate(logits[1:])]


def adaptive_log_probs(hidden, softmax: AdaptiveSoftmax) -> jax.Array:
  """hidden [..., model_dim] -> log p [..., vocab] over the whole vocabulary (sums to 1; for small
  vocabularies and tests: it materialises [..., vocab])."""
  return jnp.concatenate(_cluster_log_probs(hidden, softmax), axis=-1)


def _score_chunk(softmax: AdaptiveSoftmax, hidden, targets):
  """hidden [chunk, model_dim], targets [chunk] -> (log p(target) [chunk], argmax id [chunk])."""
  clusters = _cluster_log_probs(hidden, softmax)
  dtype = jnp.result_type(clusters[0].dtype, jnp.float32)
  log_prob, best = jnp.zeros(targets.shape, dtype), jnp.full(targets.shape, -jnp.inf, dtype)
  predicted = jnp.zeros(targets.shape, jnp.int32)
  start = 0
  for cluster in clusters:
    size = cluster.shape[-1]
    local = targets - start
    gathered = jnp.take_along_axis(cluster, jnp.clip(local, 0, size - 1)[:, None], axis=-1)[:, 0]
    log_prob = jnp.where((local >= 0) & (local < size), gathered.astype(dtype), log_prob)
    top = jnp.max(cluster, axis=-1).astype(dtype)
    better = top > best  # ties: the earlier cluster, as argmax over the concatenation
    best = jnp.where(better, top, best)
    predicted = jnp.where(better, jnp.argmax(cluster, axis=-1).astype(jnp.int32) + start, predicted)
    start += size
  return log_prob, predicted


def adaptive_target_log_probs(hidden, targets, softmax: AdaptiveSoftmax, *, chunk: int = 32):
  """hidden [..., len, model_dim], targets [..., len] int -> (log p(target) [..., len] (float32 or wider),
  the most probable id [..., len] over the whole vocabulary), without materialising [..., len, vocab].

  The positions of every sequence are scored `chunk` at a time (`lax.map` over position chunks, so the
  leading batch axes, which data parallelism shards, stay inside each step), each chunk under
  `jax.checkpoint`: the backward pass recomputes a chunk's logits instead of storing them, and memory is
  bounded by batch x chunk x vocabulary. With static shapes every cluster's logits are computed for every
  position; the saving is memory, not FLOPs (PyTorch's adaptive softmax computes a tail only for the
  targets in it).
  """
  shape, width = targets.shape, hidden.shape[-1]
  length = shape[-1]
  hidden, targets = hidden.reshape(-1, length, width), targets.reshape(-1, length).astype(jnp.int32)
  rows, chunk = hidden.shape[0], max(1, min(chunk, length))
  pad = -length % chunk
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(rows, -1, chunk, width).swapaxes(0, 1)
  targets = jnp.pad(targets, ((0, 0), (0, pad))).reshape(rows, -1, chunk).swapaxes(0, 1)
  score = jax.checkpoint(lambda s, h, t: _score_chunk(s, h.reshape(-1, width), t.reshape(-1)))
  log_prob, predicted = jax.lax.map(lambda args: score(softmax, *args), (hidden, targets))  # [chunks, rows * chunk]
  unchunk = lambda x: x.reshape(-1, rows, chunk).swapaxes(0, 1).reshape(rows, -1)[:, :length].reshape(shape)
  return unchunk(log_prob), unchunk(predicted)
