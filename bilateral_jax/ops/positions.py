"""Token places and the position handling of every attention variant.

Coordinates are `[len, c]` float arrays: `r_i = i` for sequences (c = 1), `(row, col)` for image patches
(c = 2). A NaN row is a token with no place (CLS/summary tokens): BSA gives its pairs no spatial term,
ALiBi no distance penalty, RoPE no rotation.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from bilateral_jax.ops.kernels import spatial_logits


# Coordinates are numpy constants, concrete under jit, so that a path's conditions on them (the folded
# causal Laplacian's increasing positions) are checked rather than taken on trust.
def sequence_coordinates(length: int) -> np.ndarray:
  """[length, 1] float32: r_i = i."""
  return np.arange(length, dtype=np.float32)[:, None]


def grid_coordinates(rows: int, cols: int) -> np.ndarray:
  """[rows * cols, 2] float32: (row, col) of each patch in row-major order."""
  r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
  return np.stack([r.ravel(), c.ravel()], axis=-1).astype(np.float32)


def prepend_placeless(coords, count: int) -> np.ndarray:
  """Prepends `count` tokens with no place (NaN rows) to coordinates [len, c] (numpy in, numpy out)."""
  coords = np.asarray(coords)
  return np.concatenate([np.full((count, coords.shape[-1]), np.nan, coords.dtype), coords])


def sinusoidal_table(length: int, dim: int, base: float = 10_000.0) -> jnp.ndarray:
  """[length, dim] sin/cos position table of Vaswani et al. (sin on even, cos on odd channels)."""
  position = np.arange(length)[:, None]
  inv_freq = np.exp(-math.log(base) * np.arange(0, dim, 2) / dim)
  table = np.zeros((length, dim), np.float32)
  table[:, 0::2] = np.sin(position * inv_freq)
  table[:, 1::2] = np.cos(position * inv_freq)[:, : dim // 2]
  return jnp.asarray(table)


def coordinate_table(tables, coords, placeless) -> jnp.ndarray:
  """Position table rows looked up by coordinates: tables [c, max_length, dim // c] (one per axis),
  coords [len, c] (non-negative integers; NaN rows: no place), placeless [dim] -> [len, dim], each axis's
  row concatenated; tokens with no place get the `placeless` vector (TUPE's untied CLS position)."""
  placed = ~jnp.any(jnp.isnan(coords), axis=-1)
  index = jnp.clip(jnp.where(placed[:, None], coords, 0).astype(jnp.int32), 0, tables.shape[1] - 1)
  rows = jnp.concatenate([tables[axis][index[:, axis]] for axis in range(coords.shape[-1])], axis=-1)
  return jnp.where(placed[:, None], rows, placeless[None].astype(rows.dtype))


def alibi_slopes(heads: int) -> jnp.ndarray:
  """[heads] ALiBi slopes (Press et al. 2022): 2^(-8 h / heads), h = 1..heads, for a power of two; for
  another count, those of the power of two below it, then every other slope of twice that power."""
  below = 2 ** int(math.log2(heads))
  slopes = 2.0 ** (-8.0 * np.arange(1, below + 1) / below)
  extra = 2.0 ** (-8.0 * np.arange(1, 2 * below + 1, 2) / (2 * below))[:heads - below]
  return jnp.asarray(np.concatenate([slopes, extra]), jnp.float32)


def alibi_bias(q_pos, k_pos, slopes) -> jnp.ndarray:
  """ALiBi bias -m_h ||r_i - r_j|| -> [1, heads, q_len, k_len]: the laplacian kernel with h_p = 1 / m_h.

  With causal masking this is the original ALiBi; without it, its symmetric (bidirectional) form.
  """
  return spatial_logits(q_pos, k_pos, h_p=1.0 / slopes, spatial="laplacian")


def apply_rope(x, coords, base: float = 10_000.0) -> jnp.ndarray:
  """Rotary embedding of x [batch, len, heads, head_dim] at coordinates [len, c] (axial for c > 1).

  The head dimension is split into c equal groups, one per coordinate axis, each rotated in
  half-split pairs (x_a, x_{a + g/2}) by angles r * base^(-2a/g). NaN coordinates: no rotation.
  """
  head_dim, axes = x.shape[-1], coords.shape[-1]
  if head_dim % (2 * axes):
    raise ValueError(f"RoPE needs head_dim ({head_dim}) divisible by 2 * coordinate axes ({axes})")
  coords = jnp.where(jnp.isnan(coords), 0.0, coords)
  group = head_dim // axes
  inv_freq = base ** (-jnp.arange(0, group, 2, dtype=jnp.float32) / group)  # [group / 2]
  out = []
  for axis, part in enumerate(jnp.split(x, axes, axis=-1)):
    angle = coords[:, axis, None] * inv_freq  # [len, group / 2]
    cos, sin = jnp.cos(angle)[None, :, None, :], jnp.sin(angle)[None, :, None, :]
    first, second = jnp.split(part.astype(jnp.float32), 2, axis=-1)
    out.append(jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1))
  return jnp.concatenate(out, axis=-1).astype(x.dtype)
