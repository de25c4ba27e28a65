"""Content (range) and spatial kernels of Bilateral Self-Attention, as attention logits.

Layout: queries/keys `[batch, length, heads, head_dim]`; logits `[batch, heads, q_len, k_len]`, float32
whatever the input dtype. Formulas (docs/method.md section 2), per head:

  content  gaussian:   -||q_i - k_j||^2 / (2 h_y^2)      dot: q_i . k_j / h_y^2
  spatial  gaussian:   -||r_i - r_j||^2 / (2 h_p^2)      laplacian: -||r_i - r_j|| / h_p
           shifted:    -||r_i - r_j - delta_h||^2 / (2 h_p^2)
           asymmetric: -(r_i - r_j) / h_p^-  (key before the query), -(r_j - r_i) / h_p^+ (after); 1-D
           dot:        P_i . P_j / h_p^2  (P: per-head projections of a position table)

Every spatial kernel is one `SpatialKernel` entry of `SPATIAL`: its logits, the shapes and initial values
of its parameters, its low-rank features for the folded path (or none), its in-tile function for the
flash kernel (or none), and whether it sees direction. The folded and flash paths, the dispatcher and the
attention module ask the entry; adding a kernel is adding an entry.

Position features are `[len, c]` (coordinates, shared by all heads) or, for `dot`, per-head projected
features `[len, heads, c]`. A row containing NaN marks a token with no place (a CLS or summary token):
every pair that involves it gets a spatial term of exactly 0, and no NaN reaches values or gradients.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

CONTENT_KERNELS = ("gaussian", "dot")


def _check_kernel(kind: str, name: str, known) -> None:
  if name not in known:
    raise ValueError(f"unknown {kind} kernel {name!r}; known: {', '.join(known)}")


def accumulation_dtype(*arrays) -> jnp.dtype:
  """float32, or float64 where an input is (numerical checks under jax_enable_x64): what logits, softmax
  and sums are computed in."""
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def at_least_float32(x) -> jnp.ndarray:
  x = jnp.asarray(x)
  return x.astype(accumulation_dtype(x))


def _per_head(x) -> jnp.ndarray:
  """[heads] -> [1, heads, 1, 1] float32 (or float64), broadcastable against logits."""
  return at_least_float32(x)[None, :, None, None]


def content_logits(q, k, *, h_y, content: str = "gaussian") -> jnp.ndarray:
  """Range-kernel logits C(q_i, k_j; h_y) up to a per-query constant: q [b, n, h, d], k [b, m, h, d] ->
  [b, h, n, m] float32 (products accumulated in float32 from inputs of any dtype).

  `gaussian` omits its row term -||q_i||^2 / (2 h_y^2), which cancels in the softmax: no large |q|^2 +
  |k|^2 - 2 q.k cancellation happens in low precision.
  """
  _check_kernel("content", content, CONTENT_KERNELS)
  inv_h2 = 1.0 / jnp.square(_per_head(h_y))
  logits = jnp.einsum("bnhd,bmhd->bhnm", q, k, preferred_element_type=accumulation_dtype(q, k)) * inv_h2
  if content == "dot":
    return logits
  k_wide = at_least_float32(k)
  return logits - 0.5 * jnp.einsum("bmhd,bmhd->bhm", k_wide, k_wide)[..., None, :] * inv_h2


def split_placed(features):
  """(finite features with placeless rows zeroed, placed mask) for [len, ..., c] -> [len, ...]."""
  placed = ~jnp.any(jnp.isnan(features), axis=-1)
  return jnp.where(placed[..., None], features, 0.0), placed


def _features_per_head(features, heads: int) -> jnp.ndarray:
  """[len, c] (shared) or [len, heads, c] -> [len, heads, c]."""
  if features.ndim == 2:
    features = features[:, None, :]
  return jnp.broadcast_to(features, (features.shape[0], heads, features.shape[-1]))


def _safe_norm(sq):
  """sqrt with a finite gradient at 0 (the double where)."""
  nonzero = sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


# Spatial terms [heads, n, m] of placed coordinates r_q [n, c], r_k [m, c] (the pair mask comes after).
def _gaussian(r_q, r_k, h_p, shift):
  diff = r_q[None, :, None, :] - r_k[None, None, :, :]  # [1, n, m, c]
  if shift is not None:
    diff = diff - shift[:, None, None, :]
  return -0.5 * jnp.sum(jnp.square(diff), -1) / jnp.square(h_p)[:, None, None]


def _laplacian(r_q, r_k, h_p, shift):
  dist = _safe_norm(jnp.sum(jnp.square(r_q[:, None, :] - r_k[None, :, :]), -1))
  return -dist[None] / h_p[:, None, None]


def _asymmetric(r_q, r_k, h_p, shift):
  ahead = r_k[None, :, 0] - r_q[:, None, 0]  # [n, m]: > 0 for a key after the query
  before, after = h_p[:, 0, None, None], h_p[:, 1, None, None]
  return -jnp.maximum(-ahead, 0.0)[None] / before - jnp.maximum(ahead, 0.0)[None] / after


def _dot(p_q, p_k, h_p, shift):
  return jnp.einsum("nhc,mhc->hnm", p_q, p_k) / jnp.square(h_p)[:, None, None]


# In-tile forms for the flash kernel: the bandwidths (and shifts) are folded into per-head coordinate
# rows R [heads, rows, len] (`tile_rows`), and the tile computes S and dS/d(row difference) from the
# differences R_q - R_k of each row, as lists of [block_q, block_k] arrays.
def _tile_gaussian(diffs):
  return -sum(d * d for d in diffs), [-2.0 * d for d in diffs]


def _tile_laplacian(diffs):
  dist = _safe_norm(sum(d * d for d in diffs))
  inv = jnp.where(dist > 0, 1.0 / jnp.where(dist > 0, dist, 1.0), 0.0)
  return -dist, [-d * inv for d in diffs]


def _tile_asymmetric(diffs):
  before, after = diffs[:2]  # rows r / h_p^- and r / h_p^+ (then zero filler); a key before the query: > 0
  return (-jnp.maximum(before, 0.0) - jnp.maximum(-after, 0.0),
          [-(before > 0).astype(jnp.float32), (after < 0).astype(jnp.float32)])


def _scaled_rows(r, h_p, shift, factor):
  """[len, c] -> [heads, c, len]: r / (factor h_p) (minus shift / (factor h_p) when shift is given)."""
  scale = 1.0 / (factor * h_p)
  rows = r.T[None] * scale[:, None, None]
  return rows if shift is None else rows - (shift * scale[:, None])[:, :, None]


def _increasing_sequence(q_pos, k_pos) -> bool:
  """Query and key coordinates are the same strictly increasing 1-D sequence positions [len, 1]. Traced
  coordinates cannot be checked: False (the models' coordinates are numpy constants, concrete under jit)."""
  if q_pos is None or q_pos.ndim != 2 or q_pos.shape[-1] != 1:
    return False
  try:
    q_pos, k_pos = np.asarray(q_pos), np.asarray(k_pos)
  except jax.errors.TracerArrayConversionError:
    return False
  return q_pos.shape == k_pos.shape and np.array_equal(q_pos, k_pos) and bool(np.all(np.diff(q_pos[:, 0]) > 0))


def _fold_causal_laplacian(h_before):
  """Causal 1-D Laplacian: S = -(r_i - r_j) / h for j <= i = [1/h] . [r_j] + a row term that cancels."""
  def fold(q_pos, k_pos, h_p, heads):
    h = h_before(h_p)
    q_feat = jnp.broadcast_to((1.0 / h)[None, :, None], (q_pos.shape[0], heads, 1))
    k_feat = jnp.broadcast_to(jnp.asarray(k_pos, jnp.float32)[:, None, :], (k_pos.shape[0], heads, 1))
    return q_feat, k_feat
  return fold


def _fold_dot(q_pos, k_pos, h_p, heads):
  q_feat, _ = split_placed(_features_per_head(jnp.asarray(q_pos), heads))  # [n, h, c]
  k_feat, _ = split_placed(_features_per_head(jnp.asarray(k_pos), heads))
  return q_feat / jnp.square(h_p)[None, :, None], k_feat


def geometric_bandwidths(heads: int, low: float, high: float) -> np.ndarray:
  """[heads] bandwidths spread geometrically from `low` (local heads) to `high` (global heads)."""
  return np.geomspace(low, high, heads) if heads > 1 else np.asarray([math.sqrt(low * high)])


def _directions(heads: int, dims: int) -> np.ndarray:
  """[heads, dims] unit vectors spread over the directions: 1-D alternately +1 and -1; 2-D at angles
  2 pi h / heads; more axes: +-e_a in turn."""
  if dims == 1:
    return np.where(np.arange(heads) % 2 == 0, 1.0, -1.0)[:, None]
  if dims == 2:
    angle = 2 * np.pi * np.arange(heads) / heads
    return np.stack([np.sin(angle), np.cos(angle)], -1)
  unit = np.concatenate([np.eye(dims), -np.eye(dims)])
  return unit[np.arange(heads) % len(unit)]


@dataclasses.dataclass(frozen=True)
class SpatialKernel:
  """One spatial kernel S, everything each path needs of it.

  logits(r_q, r_k, h_p, shift) -> [heads, n, m] on placed features (NaN rows are handled around it).
  features: 'coordinates' (r, [len, c]) or 'table' (per-head projections of a position table).
  directional: whether a bidirectional model with this kernel can tell its grid from its reflection.
  init_bandwidth(heads, low, high, head_dim) -> initial h_p ([heads], or [heads, 2] for before/after).
  init_shift(heads, dims, h_p) -> initial per-head displacement [heads, dims], or None (no shift).
  fold(q_pos, k_pos, h_p, heads) -> q and k features [len, heads, c] whose dot product is S up to a
    per-query constant, where foldable(is_causal, q_pos, k_pos); None: never folded.
  tile(diffs) -> (S, dS/d diff) in the flash kernel, on rows from tile_rows(r, h_p, shift) -> [heads,
    rows, len] (a key's rows the same without the shift); None: not computed in tiles.
  max_dims: most coordinate axes it takes (the asymmetric kernel is 1-D).
  """
  name: str
  logits: Callable
  features: str = "coordinates"
  directional: bool = False
  init_bandwidth: Callable = lambda heads, low, high, head_dim: geometric_bandwidths(heads, low, high)
  init_shift: Callable | None = None
  fold: Callable | None = None
  foldable: Callable = lambda is_causal, q_pos, k_pos: False
  tile: Callable | None = None
  tile_rows: Callable | None = None
  max_dims: int = 3


SPATIAL = {kernel.name: kernel for kernel in (
    SpatialKernel("gaussian", _gaussian, tile=_tile_gaussian,
                  tile_rows=lambda r, h_p, shift: _scaled_rows(r, h_p, None, math.sqrt(2.0))),
    SpatialKernel("laplacian", _laplacian, tile=_tile_laplacian,
                  tile_rows=lambda r, h_p, shift: _scaled_rows(r, h_p, None, 1.0),
                  fold=_fold_causal_laplacian(lambda h_p: h_p),
                  foldable=lambda is_causal, q_pos, k_pos: is_causal and _increasing_sequence(q_pos, k_pos)),
    # Each head's filter tap looks one bandwidth away in its own direction at initialisation.
    SpatialKernel("shifted", _gaussian, directional=True, tile=_tile_gaussian,
                  init_shift=lambda heads, dims, h_p: _directions(heads, dims) * np.asarray(h_p)[:, None],
                  tile_rows=lambda r, h_p, shift: _scaled_rows(r, h_p, shift, math.sqrt(2.0))),
    # Alternate heads start with a short reach before the query and a long one after, and the reverse.
    SpatialKernel("asymmetric", _asymmetric, directional=True, max_dims=1, tile=_tile_asymmetric,
                  init_bandwidth=lambda heads, low, high, head_dim: geometric_bandwidths(heads, low, high)[:, None]
                  * np.where((np.arange(heads) % 2 == 0)[:, None], [[0.5, 2.0]], [[2.0, 0.5]]),
                  tile_rows=lambda r, h_p, shift: jnp.concatenate(
                      [_scaled_rows(r, h_p[:, 0], None, 1.0), _scaled_rows(r, h_p[:, 1], None, 1.0)], 1),
                  fold=_fold_causal_laplacian(lambda h_p: h_p[:, 0]),
                  foldable=lambda is_causal, q_pos, k_pos: is_causal and _increasing_sequence(q_pos, k_pos)),
    # h_p^2 starts at sqrt(head_dim), as h_y^2: TUPE's positional logit scale.
    SpatialKernel("dot", _dot, features="table", directional=True, fold=_fold_dot,
                  foldable=lambda is_causal, q_pos, k_pos: True,
                  init_bandwidth=lambda heads, low, high, head_dim: np.full((heads,), head_dim ** 0.25)),
)}
SPATIAL_KERNELS = tuple(SPATIAL)


def spatial_kernel(name: str) -> SpatialKernel:
  _check_kernel("spatial", name, SPATIAL_KERNELS)
  return SPATIAL[name]


def spatial_logits(q_pos, k_pos, *, h_p, spatial: str = "gaussian", shift=None) -> jnp.ndarray:
  """Spatial-kernel logits S(P_i, P_j) -> [1, heads, q_len, k_len] float32 (broadcasts over batch).

  `q_pos`, `k_pos`: coordinates [len, c], or [len, heads, c] for `dot`; NaN rows: tokens with no place,
  S = 0. h_p: bandwidths [heads] ([heads, 2] before/after for `asymmetric`); shift: [heads, c] for
  `shifted`.
  """
  kernel = spatial_kernel(spatial)
  q_pos, k_pos, h_p = at_least_float32(q_pos), at_least_float32(k_pos), at_least_float32(h_p)
  if kernel.features == "coordinates" and (q_pos.ndim != 2 or k_pos.ndim != 2 or q_pos.shape[-1] > kernel.max_dims):
    raise ValueError(f"spatial={spatial!r} takes coordinates [len, c <= {kernel.max_dims}]; got {q_pos.shape}, "
                     f"{k_pos.shape}")
  if (shift is None) != (kernel.init_shift is None):
    raise ValueError(f"spatial={spatial!r} " + ("takes a per-head shift" if shift is None else "takes no shift"))
  heads = h_p.shape[0]
  if kernel.features == "table":
    q_pos, k_pos = _features_per_head(q_pos, heads), _features_per_head(k_pos, heads)
  q_feat, q_placed = split_placed(q_pos)
  k_feat, k_placed = split_placed(k_pos)
  term = kernel.logits(q_feat, k_feat, h_p, None if shift is None else at_least_float32(shift))
  if kernel.features == "table":
    pair_placed = q_placed.T[:, :, None] & k_placed.T[:, None, :]  # [heads, n, m]
  else:
    pair_placed = (q_placed[:, None] & k_placed[None, :])[None]
  return jnp.where(pair_placed, term, 0.0)[None]


def bilateral_logits(q, k, q_pos, k_pos, *, h_y, h_p, content: str = "gaussian", spatial: str = "gaussian",
                     shift=None) -> jnp.ndarray:
  """BSA logits C(q_i, k_j; h_y) + S(P_i, P_j), no cross terms -> [batch, heads, q_len, k_len] float32,
  up to a per-query constant (see `content_logits`).

  q, k: [batch, len, heads, head_dim]; q_pos, k_pos: position features (see `spatial_logits`) or both
  None for no spatial term; h_y: positive bandwidths [heads]; h_p, shift: see `spatial_logits`.
  """
  logits = content_logits(q, k, h_y=h_y, content=content)
  if (q_pos is None) != (k_pos is None):
    raise ValueError("q_pos and k_pos must both be given or both be None")
  if q_pos is None:
    return logits
  return logits + spatial_logits(q_pos, k_pos, h_p=h_p, spatial=spatial, shift=shift)
