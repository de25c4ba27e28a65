"""BSA as one dot product: for kernels whose spatial term is low-rank, the spatial features are appended
to q and k, so the whole BSA logit goes through `jax.nn.dot_product_attention` (XLA, or cuDNN on GPU)
without an explicit N x N bias.

  content dot:       q/h_y^2 . k
  content gaussian:  [q/h_y^2, 1] . [k, -|k|^2/(2 h_y^2)]      (the -|q|^2/(2 h_y^2) row term cancels)
  spatial dot:       [P_q/h_p^2] . [P_k]                       (place-less rows: zero features, S = 0)
  spatial laplacian, causal, 1-D increasing coordinates:  [1/h_p] . [r_j]   (S = -(r_i - r_j)/h_p; the
                     -r_i/h_p row term cancels)

The Gaussian spatial kernel is not folded: its expansion through position polynomials cancels
catastrophically in low precision (see the design notes); `foldable` says when this path applies.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bilateral_jax.ops.flash import flash_bilateral_attention
from bilateral_jax.ops.kernels import _features_per_head, _split_placed


def foldable(spatial: str | None, is_causal: bool, q_pos=None, k_pos=None) -> bool:
  """Whether `folded_bilateral_attention` computes this case exactly. The causal Laplacian needs the same
  strictly increasing 1-D coordinates for queries and keys (sequence positions); that is checked when
  they are concrete and taken on trust inside jit."""
  if spatial in (None, "none", "dot"):
    return True
  if spatial != "laplacian" or not is_causal or q_pos is None or q_pos.shape[-1] != 1:
    return False
  try:
    q_pos, k_pos = np.asarray(q_pos), np.asarray(k_pos)
  except jax.errors.TracerArrayConversionError:
    return True
  return q_pos.shape == k_pos.shape and np.array_equal(q_pos, k_pos) and bool(np.all(np.diff(q_pos[:, 0]) > 0))


def _head_scale(x) -> jnp.ndarray:
  return jnp.asarray(x)[None, None, :, None]  # [heads] -> [1, 1, heads, 1], against [b, n, h, d]


def folded_bilateral_attention(q, k, v, q_pos, k_pos, *, h_y, h_p, content: str = "gaussian",
                               spatial: str | None = "gaussian", mask=None, is_causal: bool = False,
                               implementation: str | None = None) -> jnp.ndarray:
  """Equals `bilateral_attention` (same arguments) where `foldable`; [batch, q_len, heads, head_dim].

  `implementation` goes to `jax.nn.dot_product_attention` (None, 'xla', 'cudnn'), or is 'pallas': the
  folded q and k then go through the flash kernel (`ops.flash`), memory linear in the length (key-only
  masks).
  """
  if not foldable(spatial, is_causal, q_pos, k_pos):
    raise ValueError(f"spatial={spatial!r} (causal={is_causal}) cannot be folded into q and k; use "
                     "bilateral_attention")
  batch, heads, head_dim = q.shape[0], q.shape[2], q.shape[3]
  inv_hy2 = 1.0 / jnp.square(_head_scale(h_y)).astype(q.dtype)
  q_parts, k_parts = [q * inv_hy2], [k]
  if content == "gaussian":
    q_parts.append(jnp.ones(q.shape[:3] + (1,), q.dtype))
    k_parts.append(-0.5 * jnp.sum(k * k, axis=-1, keepdims=True) * inv_hy2)
  if spatial == "dot" and q_pos is not None:
    inv_hp2 = 1.0 / jnp.square(_head_scale(h_p)).astype(q.dtype)
    q_feat, _ = _split_placed(_features_per_head(jnp.asarray(q_pos), heads))  # [n, h, c]
    k_feat, _ = _split_placed(_features_per_head(jnp.asarray(k_pos), heads))
    q_parts.append(jnp.broadcast_to(q_feat[None].astype(q.dtype), (batch,) + q_feat.shape) * inv_hp2)
    k_parts.append(jnp.broadcast_to(k_feat[None].astype(k.dtype), (batch,) + k_feat.shape))
  elif spatial == "laplacian":
    inv_hp = (1.0 / _head_scale(h_p)).astype(q.dtype)
    q_parts.append(jnp.broadcast_to(inv_hp, q.shape[:3] + (1,)))
    k_parts.append(jnp.broadcast_to(jnp.asarray(k_pos, k.dtype)[None, :, None, :], k.shape[:3] + (1,)))
  q_folded, k_folded = jnp.concatenate(q_parts, -1), jnp.concatenate(k_parts, -1)
  if implementation == "pallas":
    return flash_bilateral_attention(q_folded, k_folded, v, None, None, h_y=jnp.ones((heads,)), h_p=None,
                                     content="dot", spatial=None, mask=mask, is_causal=is_causal)
  width = q_folded.shape[-1]
  if implementation == "cudnn":
    width = -(-width // 8) * 8  # cuDNN wants head dims in multiples of 8
  pad = lambda x: jnp.pad(x, [(0, 0)] * 3 + [(0, width - x.shape[-1])])
  out = jax.nn.dot_product_attention(pad(q_folded), pad(k_folded), pad(v), mask=mask, is_causal=is_causal,
                                     scale=1.0, implementation=implementation)
  return out[..., :head_dim]
