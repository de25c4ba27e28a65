"""Content (range) and spatial kernels of Bilateral Self-Attention, as attention logits.

Layout: queries/keys `[batch, length, heads, head_dim]`; logits `[batch, heads, q_len, k_len]`.
Formulas (method.md section 2), per head with bandwidths `h_y`, `h_p` of shape `[heads]`:

  content  gaussian: -||q_i - k_j||^2 / (2 h_y^2)      dot: q_i . k_j / h_y^2
  spatial  gaussian: -||P_i - P_j||^2 / (2 h_p^2)      laplacian: -||P_i - P_j|| / h_p
           dot:       P_i . P_j / h_p^2

Position features `P` are `[len, c]` (coordinates, shared by all heads) or, for `dot`, per-head projected
features `[len, heads, c]`. A row containing NaN marks a token with no place (a CLS or summary token):
every pair that involves it gets a spatial term of exactly 0, and no NaN reaches values or gradients.
"""
from __future__ import annotations

import jax.numpy as jnp

CONTENT_KERNELS = ("gaussian", "dot")
SPATIAL_KERNELS = ("gaussian", "laplacian", "dot")


def _check_kernel(kind: str, name: str, known: tuple[str, ...]) -> None:
  if name not in known:
    raise ValueError(f"unknown {kind} kernel {name!r}; known: {', '.join(known)}")


def _per_head(bandwidth, dtype) -> jnp.ndarray:
  """[heads] -> [1, heads, 1, 1], broadcastable against logits."""
  return jnp.asarray(bandwidth, dtype)[None, :, None, None]


def content_logits(q, k, *, h_y, content: str = "gaussian") -> jnp.ndarray:
  """Range-kernel logits C(q_i, k_j; h_y): q [b, n, h, d], k [b, m, h, d] -> [b, h, n, m]."""
  _check_kernel("content", content, CONTENT_KERNELS)
  inv_h2 = 1.0 / jnp.square(_per_head(h_y, q.dtype))
  qk = jnp.einsum("bnhd,bmhd->bhnm", q, k)
  if content == "dot":
    return qk * inv_h2
  q_sq = jnp.einsum("bnhd,bnhd->bhn", q, q)[..., :, None]
  k_sq = jnp.einsum("bmhd,bmhd->bhm", k, k)[..., None, :]
  return -0.5 * (q_sq + k_sq - 2.0 * qk) * inv_h2


def _split_placed(features):
  """(finite features with placeless rows zeroed, placed mask) for [len, ..., c] -> [len, ...]."""
  placed = ~jnp.any(jnp.isnan(features), axis=-1)
  return jnp.where(placed[..., None], features, 0.0), placed


def _features_per_head(features, heads: int) -> jnp.ndarray:
  """[len, c] (shared) or [len, heads, c] -> [len, heads, c]."""
  if features.ndim == 2:
    features = features[:, None, :]
  return jnp.broadcast_to(features, (features.shape[0], heads, features.shape[-1]))


def spatial_logits(q_pos, k_pos, *, h_p, spatial: str = "gaussian") -> jnp.ndarray:
  """Spatial-kernel logits S(P_i, P_j; h_p) -> [1, heads, q_len, k_len] (broadcasts over batch).

  `q_pos`, `k_pos`: [len, c], or [len, heads, c] for `dot`. NaN rows: tokens with no place, S = 0.
  """
  _check_kernel("spatial", spatial, SPATIAL_KERNELS)
  q_pos, k_pos = jnp.asarray(q_pos), jnp.asarray(k_pos)
  h_p = _per_head(h_p, q_pos.dtype)
  if spatial == "dot":
    heads = h_p.shape[1]
    q_feat, q_placed = _split_placed(_features_per_head(q_pos, heads))
    k_feat, k_placed = _split_placed(_features_per_head(k_pos, heads))
    term = jnp.einsum("nhc,mhc->hnm", q_feat, k_feat)[None] / jnp.square(h_p)
    pair_placed = (q_placed.T[:, :, None] & k_placed.T[:, None, :])[None]
    return jnp.where(pair_placed, term, 0.0)
  if q_pos.ndim != 2 or k_pos.ndim != 2:
    raise ValueError(f"spatial={spatial!r} takes coordinates [len, c]; got {q_pos.shape}, {k_pos.shape}")
  q_coord, q_placed = _split_placed(q_pos)
  k_coord, k_placed = _split_placed(k_pos)
  sq_dist = jnp.sum(jnp.square(q_coord[:, None, :] - k_coord[None, :, :]), axis=-1)  # [n, m], exact
  if spatial == "gaussian":
    term = -0.5 * sq_dist[None, None] / jnp.square(h_p)
  else:  # laplacian; the double where keeps the gradient of sqrt finite at distance 0
    nonzero = sq_dist > 0
    dist = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq_dist, 1.0)), 0.0)
    term = -dist[None, None] / h_p
  return jnp.where((q_placed[:, None] & k_placed[None, :])[None, None], term, 0.0)


def bilateral_logits(q, k, q_pos, k_pos, *, h_y, h_p, content: str = "gaussian",
                     spatial: str = "gaussian") -> jnp.ndarray:
  """BSA logits C(q_i, k_j; h_y) + S(P_i, P_j; h_p), no cross terms -> [batch, heads, q_len, k_len].

  q, k: [batch, len, heads, head_dim]; q_pos, k_pos: position features (see `spatial_logits`) or both
  None for no spatial term; h_y, h_p: positive bandwidths [heads].
  """
  logits = content_logits(q, k, h_y=h_y, content=content)
  if (q_pos is None) != (k_pos is None):
    raise ValueError("q_pos and k_pos must both be given or both be None")
  if q_pos is None:
    return logits
  return logits + spatial_logits(q_pos, k_pos, h_p=h_p, spatial=spatial).astype(logits.dtype)
