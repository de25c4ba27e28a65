"""Flash BSA on TPU: the kernels of `ops.flash` (same tile math, `ops.tiles`) in Mosaic's layout.

The grid is (batch, heads, blocks, blocks) with the reduced blocks an "arbitrary" axis whose partial sums
live in VMEM scratch (the online-softmax state in the forward pass, dk/dv and dq in the backward pass);
blocks are multiples of 128. Per-query vectors (the row max, 1 / normaliser, delta, the coordinate rows of
the queries and their gradients) travel as lanes of one [.., len, 128] array, lane r holding vector r; per-key
vectors as rows [.., 1 or rows, len]. q, k, v are laid out [batch, heads, len, head_dim], the head width
padded to a multiple of 128. Nothing of size N x N exists in HBM.

Runs compiled on a TPU (or for a TPU slice compiled from a CPU host) and on CPU in TPU interpret mode
(`pltpu.InterpretParams`), which checks out-of-bounds accesses, races and reads of uninitialised memory.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from bilateral_jax.ops import tiles

LANES = 128


def _runs(q_block, k_block, opts: tiles.Options):
  """Whether tile (q_block, k_block) has a pair to compute (causal: a key at or before a query)."""
  if not opts.causal:
    return q_block >= 0  # always, as a traced condition
  return k_block * opts.block_k <= q_block * opts.block_q + opts.block_q - 1


def _column(lanes, r: int):
  """Vector r of a per-query [block, 128] array, as a column [block, 1]."""
  return lanes[:, r:r + 1]


def _spread(column, width: int):
  """A column [block, 128] of equal lanes, repeated to [block, width] (width a multiple of 128)."""
  return jnp.tile(column, (1, width // LANES))


def _zero(*refs):
  for ref in refs:
    ref[...] = jnp.zeros(ref.shape, jnp.float32)


def _coordinates(qc_ref, kc_ref, rows: int):
  q_lanes = qc_ref[...]
  return [_column(q_lanes, r) for r in range(rows)], [kc_ref[pl.ds(r, 1), :] for r in range(rows)]


def _forward_kernel(q_ref, k_ref, v_ref, kb_ref, keep_ref, qc_ref, kc_ref, o_ref, stats_ref, m_scratch,
                    l_scratch, acc_scratch, *, opts: tiles.Options, rows: int):
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _start():
    m_scratch[...] = jnp.full(m_scratch.shape, -jnp.inf, jnp.float32)
    _zero(l_scratch, acc_scratch)

  @pl.when(_runs(i, j, opts))
  def _accumulate():
    q_coords, k_coords = _coordinates(qc_ref, kc_ref, rows)
    s, _, _ = tiles.tile(q_ref[...], k_ref[...], kb_ref[...], keep_ref[...], q_coords, k_coords,
                         i * opts.block_q, j * opts.block_k, opts)
    m_prev = m_scratch[...]  # [block_q, 128], equal lanes
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    p = jnp.exp(s - _spread(m_next, opts.block_k))
    alpha = jnp.exp(m_prev - m_next)
    l_scratch[...] = alpha * l_scratch[...] + jnp.sum(p, axis=1, keepdims=True)
    m_scratch[...] = m_next
    v = v_ref[...]
    acc_scratch[...] = (acc_scratch[...] * _spread(alpha, v.shape[-1])
                        + tiles.dot(p.astype(v.dtype), v))

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    l = l_scratch[...]
    o_ref[...] = (acc_scratch[...] / _spread(l, acc_scratch.shape[-1])).astype(o_ref.dtype)
    # The row max and 1 / normaliser (lanes 0 and 1), not their log-sum-exp: in a row with no key to
    # attend, m is the masked logit and m + log(l) would round back to it.
    lane = lax.broadcasted_iota(jnp.int32, l.shape, 1)
    stats_ref[...] = jnp.where(lane == 0, m_scratch[...], jnp.where(lane == 1, 1.0 / l, 0.0))


def _gradients(q_ref, k_ref, v_ref, kb_ref, keep_ref, qc_ref, kc_ref, do_ref, stats_ref, i, j, opts, rows):
  q_coords, k_coords = _coordinates(qc_ref, kc_ref, rows)
  stats = stats_ref[...]
  q, k, do = q_ref[...], k_ref[...], do_ref[...]
  p, ds, spatial_grads = tiles.tile_gradients(q, k, v_ref[...], kb_ref[...], keep_ref[...], q_coords, k_coords,
                                              do, _column(stats, 0), _column(stats, 1), _column(stats, 2),
                                              i * opts.block_q, j * opts.block_k, opts)
  return q, k, do, p, ds, spatial_grads


def _key_gradients_kernel(q_ref, k_ref, v_ref, kb_ref, keep_ref, qc_ref, kc_ref, do_ref, stats_ref, dk_ref,
                          dv_ref, dkb_ref, dkc_ref, dk_scratch, dv_scratch, *, opts: tiles.Options, rows: int):
  j, i = pl.program_id(2), pl.program_id(3)  # key block, query block (the reduced axis)

  @pl.when(i == 0)
  def _start():
    _zero(dk_scratch, dv_scratch, dkb_ref, dkc_ref)

  @pl.when(_runs(i, j, opts))
  def _accumulate():
    q, _, do, p, ds, spatial_grads = _gradients(q_ref, k_ref, v_ref, kb_ref, keep_ref, qc_ref, kc_ref, do_ref,
                                                stats_ref, i, j, opts, rows)
    dv_scratch[...] += tiles.dot(p.T.astype(do.dtype), do)
    dk_scratch[...] += tiles.dot(ds.T.astype(q.dtype), q)
    dkb_ref[...] += jnp.sum(ds, axis=0, keepdims=True)
    for r, g in enumerate(spatial_grads):
      dkc_ref[pl.ds(r, 1), :] -= jnp.sum(ds * g, axis=0, keepdims=True)

  @pl.when(i == pl.num_programs(3) - 1)
  def _finish():
    dk_ref[...] = dk_scratch[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_scratch[...].astype(dv_ref.dtype)


def _query_gradients_kernel(q_ref, k_ref, v_ref, kb_ref, keep_ref, qc_ref, kc_ref, do_ref, stats_ref, dq_ref,
                            dqc_ref, dq_scratch, *, opts: tiles.Options, rows: int):
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _start():
    _zero(dq_scratch, dqc_ref)

  @pl.when(_runs(i, j, opts))
  def _accumulate():
    _, k, _, _, ds, spatial_grads = _gradients(q_ref, k_ref, v_ref, kb_ref, keep_ref, qc_ref, kc_ref, do_ref,
                                               stats_ref, i, j, opts, rows)
    dq_scratch[...] += tiles.dot(ds.astype(k.dtype), k)
    lane = lax.broadcasted_iota(jnp.int32, dqc_ref.shape, 1)
    for r, g in enumerate(spatial_grads):
      dqc_ref[...] += jnp.where(lane == r, jnp.sum(ds * g, axis=1, keepdims=True), 0.0)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = dq_scratch[...].astype(dq_ref.dtype)


def _specs(opts: tiles.Options, rows: int, d: int, blocked_first: str):
  """BlockSpecs of the kernel inputs (q, k, v, k_bias, k_keep, q_coords, k_coords, dO, stats) over the grid
  (batch, heads, a, b) where a indexes query blocks and b key blocks (`blocked_first='queries'`) or the
  reverse ('keys')."""
  if blocked_first == "queries":
    qi, ki = (lambda b, h, a, c: a), (lambda b, h, a, c: c)
  else:
    qi, ki = (lambda b, h, a, c: c), (lambda b, h, a, c: a)
  bq, bk = opts.block_q, opts.block_k
  q_spec = pl.BlockSpec((None, None, bq, d), lambda b, h, a, c: (b, h, qi(b, h, a, c), 0))
  k_spec = pl.BlockSpec((None, None, bk, d), lambda b, h, a, c: (b, h, ki(b, h, a, c), 0))
  lanes = pl.BlockSpec((None, None, bq, LANES), lambda b, h, a, c: (b, h, qi(b, h, a, c), 0))
  k_row = pl.BlockSpec((None, None, 1, bk), lambda b, h, a, c: (b, h, 0, ki(b, h, a, c)))
  return dict(
      q=q_spec, k=k_spec, lanes=lanes, k_row=k_row,
      k_rows=pl.BlockSpec((None, None, rows, bk), lambda b, h, a, c: (b, h, 0, ki(b, h, a, c))),
      inputs=[q_spec, k_spec, k_spec, k_row,
              pl.BlockSpec((None, 1, bk), lambda b, h, a, c: (b, 0, ki(b, h, a, c))),
              pl.BlockSpec((None, bq, LANES), lambda b, h, a, c: (h, qi(b, h, a, c), 0)),
              pl.BlockSpec((None, rows, bk), lambda b, h, a, c: (h, 0, ki(b, h, a, c))),
              q_spec, lanes])


def _call(kernel, blocks: tuple[int, int], in_specs, out_specs, out_shape, scratch, opts: tiles.Options,
          rows: int):
  batch, heads = out_shape[0].shape[:2]
  return pl.pallas_call(
      functools.partial(kernel, opts=opts, rows=rows),
      grid_spec=pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=0, grid=(batch, heads) + blocks,
                                             in_specs=in_specs, out_specs=out_specs, scratch_shapes=scratch),
      out_shape=out_shape, interpret=opts.interpret,
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")))


def _layout(q, k, v, k_bias, k_keep, q_coords):
  """The arguments of `flash` in this kernel's layout: q, k, v [batch, heads, len, d], k_bias
  [batch, heads, 1, m], k_keep [batch, 1, m], the query coordinates as lanes [heads, n, 128]."""
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)
  rows = q_coords.shape[1]
  q_lanes = jnp.pad(jnp.swapaxes(q_coords, 1, 2), ((0, 0), (0, 0), (0, LANES - rows)))  # [heads, n, 128]
  return heads_first(q), heads_first(k), heads_first(v), k_bias[:, :, None, :], k_keep[:, None, :], q_lanes


def _forward(laid_out, k_coords, opts: tiles.Options, rows: int):
  """`_layout`'s tensors -> out [batch, n, heads, d], stats [batch, heads, n, 128] (lanes: row max, 1 / normaliser)."""
  qt, kt, vt, kb, keep, q_lanes = laid_out
  (batch, heads, n, d), m = qt.shape, kt.shape[2]
  specs = _specs(opts, rows, d, "queries")
  out, stats = _call(
      _forward_kernel, (n // opts.block_q, m // opts.block_k), specs["inputs"][:7], [specs["q"], specs["lanes"]],
      [jax.ShapeDtypeStruct(qt.shape[:3] + vt.shape[3:], vt.dtype),
       jax.ShapeDtypeStruct((batch, heads, n, LANES), jnp.float32)],
      [pltpu.VMEM((opts.block_q, LANES), jnp.float32), pltpu.VMEM((opts.block_q, LANES), jnp.float32),
       pltpu.VMEM((opts.block_q, vt.shape[3]), jnp.float32)], opts, rows)(qt, kt, vt, kb, keep, q_lanes, k_coords)
  return jnp.swapaxes(out, 1, 2), stats


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def flash(q, k, v, k_bias, k_keep, q_coords, k_coords, opts: tiles.Options):
  """Flash attention on TPU: q [batch, n, heads, d], k, v [batch, m, heads, d], k_bias [batch, heads, m],
  k_keep [batch, m] (1 = attend), q_coords [heads, rows, n], k_coords [heads, rows, m] (scaled coordinate
  rows, the last the 0/1 `placed` flag; n, m multiples of the blocks, d of 128) -> [batch, n, heads, d]."""
  return _forward(_layout(q, k, v, k_bias, k_keep, q_coords), k_coords, opts, q_coords.shape[1])[0]


def _flash_forward(q, k, v, k_bias, k_keep, q_coords, k_coords, opts):
  laid_out = _layout(q, k, v, k_bias, k_keep, q_coords)  # kept for the backward kernels, not laid out again
  out, stats = _forward(laid_out, k_coords, opts, q_coords.shape[1])
  return out, (laid_out, k_keep, q_coords, k_coords, out, stats)


def _flash_backward(opts, residuals, d_out):
  (qt, kt, vt, kb, keep, q_lanes), k_keep, q_coords, k_coords, out, stats = residuals
  (batch, heads, n, d), m, rows = qt.shape, kt.shape[2], q_coords.shape[1]
  delta = jnp.einsum("bnhd,bnhd->bhn", d_out.astype(jnp.float32), out.astype(jnp.float32))
  stats = stats.at[..., 2].set(delta)
  inputs = (qt, kt, vt, kb, keep, q_lanes, k_coords, jnp.swapaxes(d_out, 1, 2), stats)
  blocks = (n // opts.block_q, m // opts.block_k)

  key_specs = _specs(opts, rows, d, "keys")
  dk, dv, dk_bias, dk_coords = _call(
      _key_gradients_kernel, blocks[::-1], key_specs["inputs"],
      [key_specs["k"], key_specs["k"], key_specs["k_row"], key_specs["k_rows"]],
      [jax.ShapeDtypeStruct(kt.shape, kt.dtype), jax.ShapeDtypeStruct(vt.shape, vt.dtype),
       jax.ShapeDtypeStruct((batch, heads, 1, m), jnp.float32),
       jax.ShapeDtypeStruct((batch, heads, rows, m), jnp.float32)],
      [pltpu.VMEM((opts.block_k, d), jnp.float32), pltpu.VMEM((opts.block_k, vt.shape[3]), jnp.float32)],
      opts, rows)(*inputs)

  query_specs = _specs(opts, rows, d, "queries")
  dq, dq_lanes = _call(
      _query_gradients_kernel, blocks, query_specs["inputs"], [query_specs["q"], query_specs["lanes"]],
      [jax.ShapeDtypeStruct(qt.shape, qt.dtype), jax.ShapeDtypeStruct((batch, heads, n, LANES), jnp.float32)],
      [pltpu.VMEM((opts.block_q, d), jnp.float32)], opts, rows)(*inputs)
  dq_coords = jnp.swapaxes(dq_lanes[..., :rows], 2, 3).sum(0)  # [heads, rows, n]
  return (jnp.swapaxes(dq, 1, 2), jnp.swapaxes(dk, 1, 2), jnp.swapaxes(dv, 1, 2), dk_bias[:, :, 0],
          jnp.zeros_like(k_keep), dq_coords, dk_coords.sum(0))


flash.defvjp(_flash_forward, _flash_backward)
