"""Flash BSA: a Pallas kernel that computes the spatial term of every kernel with an in-tile form
(`SpatialKernel.tile`: gaussian, shifted, laplacian, asymmetric) inside each tile from the coordinates,
with an online softmax, so that no N x N buffer exists in the forward or the backward pass (memory linear
in N). This module holds the wrapper and the Triton (GPU) kernels, `ops.flash_tpu` the Mosaic (TPU)
kernels, `ops.tiles` the tile math both share. On a CPU target either runs in its interpreter (the tests'
path). float32 inputs are multiplied at full precision (no TF32); Triton pads the head width to a power of
two (its tensors must have power-of-two sizes), Mosaic to a multiple of 128 lanes.

The kernel sees the BSA logit in a form with every bandwidth moved outside it, so that autodiff of the
wrapper gives the gradients for h_y and h_p from the kernel's gradients for q, the key bias and the
coordinates:

  content dot:       (q_i / h_y^2) . k_j
  content gaussian:  (q_i / h_y^2) . k_j - |k_j|^2 / (2 h_y^2)       (-|q_i|^2 / (2 h_y^2) cancels)
  spatial gaussian:  -|R_i - R_j|^2,  R = r / (sqrt(2) h_p)           (per head; shifted: R_i - delta /
                                                                      (sqrt(2) h_p) for the queries)
  spatial laplacian: -|R_i - R_j|,    R = r / h_p
  asymmetric:        -max(A_i - A_j, 0) - max(B_j - B_i, 0),  A = r / h_p^-, B = r / h_p^+

Coordinates stay float32 inside the kernel whatever the dtype of q, k, v: the spatial term is computed
from differences of coordinates, never from expanded polynomials, so it does not cancel in low precision.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu
from jax.sharding import PartitionSpec as P

from bilateral_jax.ops import flash_tpu, target, tiles
from bilateral_jax.ops.kernels import SPATIAL, split_placed

FLASH_SPATIAL = (None, "none") + tuple(name for name, kernel in SPATIAL.items() if kernel.tile is not None)


def flash_applies(spatial: str | None, q_pos=None, mask=None) -> bool:
  """Whether `flash_bilateral_attention` computes this case: no spatial term, or a kernel with an in-tile
  form on coordinates [len, c] (c <= 3, and <= the kernel's `max_dims`), and a mask that depends on the
  key only ([batch or 1, 1, 1, k_len])."""
  if spatial not in FLASH_SPATIAL:
    return False
  if spatial not in (None, "none") and (q_pos is None or jnp.ndim(q_pos) != 2
                                        or q_pos.shape[-1] > min(3, SPATIAL[spatial].max_dims)):
    return False
  return mask is None or (jnp.ndim(mask) == 4 and mask.shape[1] == 1 and mask.shape[2] == 1)


def _key_blocks(q_end, opts: tiles.Options, num_k_blocks: int):
  """How many key blocks a query block ending at row `q_end` sees."""
  if not opts.causal:
    return num_k_blocks
  return jnp.minimum(pl.cdiv(q_end, opts.block_k), num_k_blocks)


def _rows(ref, start=None, size=None):
  """The coordinate rows of a [rows, len] ref (optionally a slice of the columns), each as a row [1, len]."""
  cols = slice(None) if start is None else pl.ds(start, size)
  return [ref[r, cols][None, :] for r in range(ref.shape[0])]


def _columns(ref, start=None, size=None):
  """`_rows` as columns [len, 1]: the coordinates of the queries."""
  cols = slice(None) if start is None else pl.ds(start, size)
  return [ref[r, cols][:, None] for r in range(ref.shape[0])]


def _forward_kernel(q_ref, k_ref, v_ref, kb_ref, keep_ref, qc_ref, kc_ref, o_ref, m_ref, inv_l_ref, *, opts):
  block_q, block_k = opts.block_q, opts.block_k
  q_start = pl.program_id(2) * block_q
  q, q_coords = q_ref[...], _columns(qc_ref)

  def body(j, carry):
    m, l, acc = carry
    keys = pl.ds(j * block_k, block_k)
    s, _, _ = tiles.tile(q, k_ref[keys, :], kb_ref[keys][None, :], keep_ref[keys][None, :], q_coords,
                         _rows(kc_ref, j * block_k, block_k), q_start, j * block_k, opts)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    p = jnp.exp(s - m_new[:, None])
    alpha = jnp.exp(m - m_new)
    v = v_ref[keys, :]
    acc = alpha[:, None] * acc + tiles.dot(p.astype(v.dtype), v)
    return m_new, alpha * l + jnp.sum(p, axis=1), acc

  init = (jnp.full((block_q,), -jnp.inf, jnp.float32), jnp.zeros((block_q,), jnp.float32),
          jnp.zeros(o_ref.shape, jnp.float32))
  m, l, acc = lax.fori_loop(0, _key_blocks(q_start + block_q, opts, k_ref.shape[0] // block_k), body, init)
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  # The row max and 1 / normaliser, not their log-sum-exp: in a row with no key to attend, m is the
  # masked logit and m + log(l) would round back to it.
  m_ref[...] = m
  inv_l_ref[...] = 1.0 / l


def _key_gradients_kernel(q_ref, k_ref, v_ref, kb_ref, keep_ref, qc_ref, kc_ref, do_ref, m_ref, inv_l_ref,
                          delta_ref, dk_ref, dv_ref, dkb_ref, dkc_ref, *, opts):
  block_q, block_k = opts.block_q, opts.block_k
  k_start = pl.program_id(2) * block_k
  k, v, k_bias, k_keep, k_coords = k_ref[...], v_ref[...], kb_ref[...][None, :], keep_ref[...][None, :], _rows(kc_ref)

  def body(i, carry):
    dk, dv, dkb, dkc = carry
    rows = pl.ds(i * block_q, block_q)
    q, do = q_ref[rows, :], do_ref[rows, :]
    p, ds, spatial_grads = tiles.tile_gradients(
        q, k, v, k_bias, k_keep, _columns(qc_ref, i * block_q, block_q), k_coords, do, m_ref[rows][:, None],
        inv_l_ref[rows][:, None], delta_ref[rows][:, None], i * block_q, k_start, opts)
    dv = dv + tiles.dot(p.astype(do.dtype), do, ((0,), (0,)))
    dk = dk + tiles.dot(ds.astype(q.dtype), q, ((0,), (0,)))
    dkc = [dc - jnp.sum(ds * g, axis=0) for dc, g in zip(dkc, spatial_grads)] + dkc[len(spatial_grads):]
    return dk, dv, dkb + jnp.sum(ds, axis=0), dkc

  first = k_start // block_q if opts.causal else 0
  zeros = jnp.zeros((block_k,), jnp.float32)
  init = (jnp.zeros(dk_ref.shape, jnp.float32), jnp.zeros(dv_ref.shape, jnp.float32), zeros,
          [zeros] * dkc_ref.shape[0])
  dk, dv, dkb, dkc = lax.fori_loop(first, q_ref.shape[0] // block_q, body, init)
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  dkb_ref[...] = dkb
  for r, dc in enumerate(dkc):
    dkc_ref[r, :] = dc


def _query_gradients_kernel(q_ref, k_ref, v_ref, kb_ref, keep_ref, qc_ref, kc_ref, do_ref, m_ref, inv_l_ref,
                            delta_ref, dq_ref, dqc_ref, *, opts):
  block_q, block_k = opts.block_q, opts.block_k
  q_start = pl.program_id(2) * block_q
  q, do, delta, q_coords = q_ref[...], do_ref[...], delta_ref[...][:, None], _columns(qc_ref)
  m, inv_l = m_ref[...][:, None], inv_l_ref[...][:, None]

  def body(j, carry):
    dq, dqc = carry
    keys = pl.ds(j * block_k, block_k)
    k = k_ref[keys, :]
    _, ds, spatial_grads = tiles.tile_gradients(
        q, k, v_ref[keys, :], kb_ref[keys][None, :], keep_ref[keys][None, :], q_coords,
        _rows(kc_ref, j * block_k, block_k), do, m, inv_l, delta, q_start, j * block_k, opts)
    dq = dq + tiles.dot(ds.astype(k.dtype), k)
    dqc = [dc + jnp.sum(ds * g, axis=1) for dc, g in zip(dqc, spatial_grads)] + dqc[len(spatial_grads):]
    return dq, dqc

  zeros = jnp.zeros((block_q,), jnp.float32)
  init = (jnp.zeros(dq_ref.shape, jnp.float32), [zeros] * dqc_ref.shape[0])
  dq, dqc = lax.fori_loop(0, _key_blocks(q_start + block_q, opts, k_ref.shape[0] // block_k), body, init)
  dq_ref[...] = dq.astype(dq_ref.dtype)
  for r, dc in enumerate(dqc):
    dqc_ref[r, :] = dc


def _specs(q, k, q_coords, blocked: str, opts: tiles.Options):
  """BlockSpecs over the grid (batch, heads, blocks of `blocked` = 'queries' or 'keys') for the inputs
  q, k, v, k_bias, k_keep, q_coords, k_coords and the per-query (do, m, inv_l, delta) and per-key outputs."""
  n, m, d, rows = q.shape[1], k.shape[1], q.shape[3], q_coords.shape[1]
  bq = opts.block_q if blocked == "queries" else n
  bk = opts.block_k if blocked == "keys" else m
  qi = (lambda b, h, i: i) if blocked == "queries" else (lambda b, h, i: 0)
  ki = (lambda b, h, i: i) if blocked == "keys" else (lambda b, h, i: 0)
  q_spec = pl.BlockSpec((None, bq, None, d), lambda b, h, i: (b, qi(b, h, i), h, 0))
  k_spec = pl.BlockSpec((None, bk, None, d), lambda b, h, i: (b, ki(b, h, i), h, 0))
  q_row = pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, qi(b, h, i)))
  k_row = pl.BlockSpec((None, None, bk), lambda b, h, i: (b, h, ki(b, h, i)))
  return dict(
      inputs=[q_spec, k_spec, k_spec, k_row, pl.BlockSpec((None, bk), lambda b, h, i: (b, ki(b, h, i))),
              pl.BlockSpec((None, rows, bq), lambda b, h, i: (h, 0, qi(b, h, i))),
              pl.BlockSpec((None, rows, bk), lambda b, h, i: (h, 0, ki(b, h, i)))],
      per_query=[q_spec, q_row, q_row, q_row], q=q_spec, k=k_spec, k_row=k_row,
      q_coords=pl.BlockSpec((None, None, rows, bq), lambda b, h, i: (b, h, 0, qi(b, h, i))),
      k_coords=pl.BlockSpec((None, None, rows, bk), lambda b, h, i: (b, h, 0, ki(b, h, i))))


def _call(kernel, grid_blocks: int, in_specs, out_specs, out_shape, opts: tiles.Options):
  batch, heads, width = out_shape[0].shape[0], out_shape[0].shape[2], out_shape[0].shape[3]
  return pl.pallas_call(
      functools.partial(kernel, opts=opts), grid=(batch, heads, grid_blocks), in_specs=in_specs,
      out_specs=out_specs, out_shape=out_shape, interpret=opts.interpret,
      compiler_params=plgpu.CompilerParams(num_warps=4 if width <= 64 else 8, num_stages=2))


def _forward(q, k, v, k_bias, k_keep, q_coords, k_coords, opts: tiles.Options):
  batch, n, heads, _ = q.shape
  specs = _specs(q, k, q_coords, "queries", opts)
  row = jax.ShapeDtypeStruct((batch, heads, n), jnp.float32)
  out_shape = [jax.ShapeDtypeStruct(q.shape[:3] + v.shape[3:], v.dtype), row, row]
  out_specs = [specs["q"], specs["per_query"][1], specs["per_query"][1]]
  return _call(_forward_kernel, n // opts.block_q, specs["inputs"], out_specs, out_shape, opts)(
      q, k, v, k_bias, k_keep, q_coords, k_coords)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _flash(q, k, v, k_bias, k_keep, q_coords, k_coords, opts: tiles.Options):
  return _forward(q, k, v, k_bias, k_keep, q_coords, k_coords, opts)[0]


def _flash_forward(q, k, v, k_bias, k_keep, q_coords, k_coords, opts):
  out, row_max, inv_l = _forward(q, k, v, k_bias, k_keep, q_coords, k_coords, opts)
  return out, (q, k, v, k_bias, k_keep, q_coords, k_coords, out, row_max, inv_l)


def _flash_backward(opts, residuals, d_out):
  q, k, v, k_bias, k_keep, q_coords, k_coords, out, row_max, inv_l = residuals
  batch, n, heads, _ = q.shape
  m, rows = k.shape[1], q_coords.shape[1]
  delta = jnp.einsum("bnhd,bnhd->bhn", d_out.astype(jnp.float32), out.astype(jnp.float32))
  inputs = (q, k, v, k_bias, k_keep, q_coords, k_coords, d_out, row_max, inv_l, delta)

  key_specs = _specs(q, k, q_coords, "keys", opts)
  dk, dv, dk_bias, dk_coords = _call(
      _key_gradients_kernel, m // opts.block_k, key_specs["inputs"] + key_specs["per_query"],
      [key_specs["k"], key_specs["k"], key_specs["k_row"], key_specs["k_coords"]],
      [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype),
       jax.ShapeDtypeStruct((batch, heads, m), jnp.float32),
       jax.ShapeDtypeStruct((batch, heads, rows, m), jnp.float32)], opts)(*inputs)

  query_specs = _specs(q, k, q_coords, "queries", opts)
  dq, dq_coords = _call(
      _query_gradients_kernel, n // opts.block_q, query_specs["inputs"] + query_specs["per_query"],
      [query_specs["q"], query_specs["q_coords"]],
      [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((batch, heads, rows, n), jnp.float32)],
      opts)(*inputs)
  return dq, dk, dv, dk_bias, jnp.zeros_like(k_keep), dq_coords.sum(0), dk_coords.sum(0)


_flash.defvjp(_flash_forward, _flash_backward)


def _block(length: int, block: int) -> int:
  """The tile size along a sequence: `block`, or the next power of two >= 16 for shorter sequences."""
  return min(block, max(16, pl.next_power_of_2(length)))


def _pad(x, axis: int, size: int, value=0.0):
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _kernel_coordinates(kernel_rows, pos, length: int):
  """Coordinates [len, c] (NaN rows: no place) -> per-head kernel rows [heads, rows, length]
  (`kernel_rows(coords)` -> [heads, r, len], then zero rows up to a power of two for Triton, the last row
  the 0/1 `placed` flag)."""
  coords, placed = split_placed(jnp.asarray(pos, jnp.float32))
  scaled = kernel_rows(coords)
  heads, rows = scaled.shape[0], max(2, pl.next_power_of_2(scaled.shape[1] + 1))
  filler = jnp.zeros((heads, rows - 1 - scaled.shape[1], scaled.shape[2]), jnp.float32)
  flag = jnp.broadcast_to(lax.stop_gradient(placed.astype(jnp.float32)), (heads, 1, placed.shape[0]))
  return _pad(jnp.concatenate([scaled, filler, flag], axis=1), 2, length)


KERNELS = ("triton", "mosaic")  # GPU, TPU


def flash_bilateral_attention(q, k, v, q_pos, k_pos, *, h_y, h_p, content: str = "gaussian",
                              spatial: str | None = "gaussian", shift=None, mask=None, is_causal: bool = False,
                              block_size: int | None = None, kernel: str | None = None,
                              interpret=None) -> jnp.ndarray:
  """Equals `explicit_bilateral_attention` (same arguments) where `flash_applies`; [batch, q_len, heads,
  head_dim].

  Memory is linear in the lengths. `kernel`: 'mosaic' (TPU, `ops.flash_tpu`) or 'triton' (GPU), default
  the compile target's (`ops.target`; Triton on a CPU target). `interpret` defaults to True on a CPU
  target (for Mosaic it may be a `pltpu.InterpretParams`). `block_size` (the tile side): Triton
  compiled 128 for head widths <= 64, else 64 (4 and 8 warps; not yet timed on a GPU), interpreted 512,
  where fewer, larger tiles run faster (x1.25 vs x2.1 at 256, N=1024); Mosaic 256 compiled and 128
  interpreted, rounded to multiples of 128. Under a target mesh the kernel runs per shard of its batch axes
  (`jax.shard_map`).
  """
  if not flash_applies(spatial, q_pos, mask):
    raise ValueError(f"flash_bilateral_attention does not apply to spatial={spatial!r} with coordinates of "
                     f"shape {getattr(q_pos, 'shape', None)} and mask of shape {getattr(mask, 'shape', None)}; "
                     "use ops.bilateral_attention (or the folded path for spatial 'dot')")
  compile_target = target.current()
  kernel = kernel or ("mosaic" if compile_target.platform == "tpu" else "triton")
  if kernel not in KERNELS:
    raise ValueError(f"kernel={kernel!r} is not one of: {', '.join(KERNELS)}")
  spatial = None if spatial == "none" or q_pos is None else spatial
  batch, n, heads, head_dim = q.shape
  m = k.shape[1]
  interpret = compile_target.platform == "cpu" if interpret is None else interpret
  d_pad = max(head_dim, v.shape[-1])
  if kernel == "mosaic":
    interpret = pltpu.InterpretParams() if interpret is True else interpret
    block_size = (128 if interpret else 256) if block_size is None else block_size
    block = lambda length: min(-(-block_size // 128) * 128, -(-length // 128) * 128)
    d_pad = -(-d_pad // 128) * 128  # lanes
  else:
    if not interpret:  # Triton's tensors have power-of-two sizes, its dot widths >= 16
      d_pad = max(16, pl.next_power_of_2(d_pad))
    block_size = (512 if interpret else 128 if d_pad <= 64 else 64) if block_size is None else block_size
    block = lambda length: _block(length, block_size)
  opts = tiles.Options(spatial, bool(is_causal), n, m, block(n), block(m), interpret)
  n_pad, m_pad = -(-n // opts.block_q) * opts.block_q, -(-m // opts.block_k) * opts.block_k

  inv_hy2 = 1.0 / jnp.square(jnp.asarray(h_y, jnp.float32))  # [heads]
  q_scaled = q * inv_hy2[None, None, :, None].astype(q.dtype)
  if content == "gaussian":
    k_bias = -0.5 * jnp.einsum("bmhd,bmhd->bhm", k.astype(jnp.float32), k.astype(jnp.float32)) * inv_hy2[:, None]
  else:
    k_bias = jnp.zeros((batch, heads, m), jnp.float32)
  k_keep = jnp.ones((batch, m), jnp.float32)
  if mask is not None:
    k_keep = jnp.broadcast_to(jnp.asarray(mask)[:, 0, 0, :], (batch, m)).astype(jnp.float32)

  if spatial is None:
    q_coords, k_coords = jnp.zeros((heads, 2, n_pad)), jnp.zeros((heads, 2, m_pad))
  else:
    tile_rows = SPATIAL[spatial].tile_rows
    h_p = jnp.asarray(h_p, jnp.float32)
    shift = None if shift is None else jnp.asarray(shift, jnp.float32)
    q_rows = functools.partial(tile_rows, h_p=h_p, shift=shift)
    k_rows = functools.partial(tile_rows, h_p=h_p, shift=None)
    q_coords = _kernel_coordinates(q_rows, q_pos, n_pad)
    k_coords = _kernel_coordinates(k_rows, k_pos, m_pad)

  def pad_tokens(x, length):
    return _pad(_pad(x, 1, length), 3, d_pad)

  core = flash_tpu.flash if kernel == "mosaic" else _flash
  run = lambda *args: core(*args, opts)
  mesh, axes = compile_target.mesh, compile_target.batch_axes
  shards = 1 if mesh is None else math.prod(mesh.shape[a] for a in axes)
  if shards > 1 and batch % shards == 0:  # a Pallas kernel is not partitioned by XLA: one call per shard
    per_example, shared = P(axes), P()
    run = jax.shard_map(run, mesh=mesh, in_specs=(per_example,) * 5 + (shared, shared), out_specs=per_example,
                        check_vma=False)
  out = run(pad_tokens(q_scaled, n_pad), pad_tokens(k, m_pad), pad_tokens(v, m_pad), _pad(k_bias, 2, m_pad),
            _pad(k_keep, 1, m_pad), q_coords, k_coords)
  return out[:, :n, :, :v.shape[-1]]
