"""BSA as one dot product: for kernels whose spatial term is low-rank (`SpatialKernel.fold`), the spatial
features are appended to q and k, so the whole BSA logit goes through `jax.nn.dot_product_attention`
without an explicit N x N bias.

  content dot:       q/h_y^2 . k
  content gaussian:  [q/h_y^2, 1] . [k, -|k|^2/(2 h_y^2)]      (the -|q|^2/(2 h_y^2) row term cancels)
  spatial dot:       [P_q/h_p^2] . [P_k]                       (place-less rows: zero features, S = 0)
  spatial laplacian (and asymmetric), causal, 1-D increasing coordinates:  [1/h_p] . [r_j]
                     (S = -(r_i - r_j)/h_p; the -r_i/h_p row term cancels)

The Gaussian spatial kernels are not folded: their expansion through position polynomials cancels
catastrophically in low precision (see the design notes); `foldable` says when this path applies.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bilateral_jax.ops import target
from bilateral_jax.ops.flash import flash_bilateral_attention
from bilateral_jax.ops.kernels import spatial_kernel


def foldable(spatial: str | None, is_causal: bool, q_pos=None, k_pos=None) -> bool:
  """Whether `folded_bilateral_attention` computes this case exactly (the kernel's `foldable`)."""
  if spatial in (None, "none") or q_pos is None:
    return True
  kernel = spatial_kernel(spatial)
  return kernel.fold is not None and kernel.foldable(is_causal, q_pos, k_pos)


def cudnn_applies(dtype, width: int, mask) -> bool:
  """Whether the folded path runs on cuDNN: a GPU target, half precision, a folded head of at most 128
  (padded to a multiple of 8), no mask array (its rows with no key to attend differ from the explicit
  ops')."""
  return (target.target_platform() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
          and -(-width // 8) * 8 <= 128 and mask is None)


def _head_scale(x) -> jnp.ndarray:
  return jnp.asarray(x)[None, None, :, None]  # [heads] -> [1, 1, heads, 1], against [b, n, h, d]


def folded_bilateral_attention(q, k, v, q_pos, k_pos, *, h_y, h_p, content: str = "gaussian",
                               spatial: str | None = "gaussian", shift=None, mask=None, is_causal: bool = False,
                               backend: str | None = None) -> jnp.ndarray:
  """Equals `explicit_bilateral_attention` (same arguments) where `foldable`; [batch, q_len, heads, head_dim].

  `backend`: what attends with the folded q and k: 'xla' or 'cudnn' (`jax.nn.dot_product_attention`), or
  'pallas' (the flash kernel, `ops.flash`: memory linear in the length, key-only masks). None: cuDNN where
  it applies (`cudnn_applies`: a GPU target, bf16/fp16, a folded head <= 128 wide, no mask), else XLA's
  (which builds the [batch, heads, q_len, k_len] logits).
  """
  if not foldable(spatial, is_causal, q_pos, k_pos):
    raise ValueError(f"spatial={spatial!r} (causal={is_causal}) cannot be folded into q and k; use "
                     "ops.bilateral_attention")
  batch, heads, head_dim = q.shape[0], q.shape[2], q.shape[3]
  inv_hy2 = 1.0 / jnp.square(_head_scale(h_y)).astype(q.dtype)
  q_parts, k_parts = [q * inv_hy2], [k]
  if content == "gaussian":
    q_parts.append(jnp.ones(q.shape[:3] + (1,), q.dtype))
    k_parts.append(-0.5 * jnp.sum(k * k, axis=-1, keepdims=True) * inv_hy2)
  if spatial not in (None, "none") and q_pos is not None:
    q_feat, k_feat = spatial_kernel(spatial).fold(q_pos, k_pos, jnp.asarray(h_p, jnp.float32), heads)
    q_parts.append(jnp.broadcast_to(q_feat[None].astype(q.dtype), (batch,) + q_feat.shape))
    k_parts.append(jnp.broadcast_to(k_feat[None].astype(k.dtype), (batch,) + k_feat.shape))
  q_folded, k_folded = jnp.concatenate(q_parts, -1), jnp.concatenate(k_parts, -1)
  if backend == "pallas":
    return flash_bilateral_attention(q_folded, k_folded, v, None, None, h_y=jnp.ones((heads,)), h_p=None,
                                     content="dot", spatial=None, mask=mask, is_causal=is_causal)
  width = q_folded.shape[-1]
  if backend is None:
    backend = "cudnn" if cudnn_applies(q.dtype, width, mask) else "xla"
  if backend == "cudnn":
    width = -(-width // 8) * 8  # cuDNN wants head dims in multiples of 8
  pad = lambda x: jnp.pad(x, [(0, 0)] * 3 + [(0, width - x.shape[-1])])
  out = jax.nn.dot_product_attention(pad(q_folded), pad(k_folded), pad(v), mask=mask, is_causal=is_causal,
                                     scale=1.0, implementation=backend)
  return out[..., :head_dim]
