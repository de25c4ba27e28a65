"""Attention as a normalised filter: weights from logits, then a weighted average of the values.

Layout `[batch, length, heads, head_dim]` (that of `jax.nn.dot_product_attention`); weights and logits
`[batch, heads, q_len, k_len]`. Both BSA and the standard-attention baselines go through
`attention_weights` and `filter_values`, so every variant is the same filter with a different kernel.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bilateral_jax.ops.kernels import accumulation_dtype, at_least_float32, bilateral_logits, content_logits


def causal_mask(q_len: int, k_len: int) -> jnp.ndarray:
  """[q_len, k_len] boolean, True where key j <= query i (aligned at the start, as jax.nn)."""
  return jnp.arange(k_len)[None, :] <= jnp.arange(q_len)[:, None]


def attention_weights(logits, *, mask=None, is_causal: bool = False) -> jnp.ndarray:
  """Softmax over keys after masking (True = attend); computed in and returned as float32 (float64 logits
  stay float64).

  Masked pairs get the most negative finite logit, so their weight is exactly 0 (and so is its
  gradient); a row with no key to attend to gets uniform weights rather than NaN, as in jax.nn.
  """
  logits = at_least_float32(logits)
  keep = None if mask is None else jnp.asarray(mask, bool)
  if is_causal:
    causal = causal_mask(*logits.shape[-2:])
    keep = causal if keep is None else keep & causal
  if keep is not None:
    logits = jnp.where(keep, logits, jnp.finfo(logits.dtype).min)
  return jax.nn.softmax(logits, axis=-1)


def filter_values(weights, v) -> jnp.ndarray:
  """u_i = sum_j w_ij v_j: weights [b, h, n, m] (rows sum to 1), v [b, m, h, d] -> [b, n, h, d] in v's
  dtype (the weights rounded to it, the sum accumulated in float32)."""
  out = jnp.einsum("bhnm,bmhd->bnhd", weights.astype(v.dtype), v, preferred_element_type=accumulation_dtype(v))
  return out.astype(v.dtype)


def explicit_bilateral_attention(q, k, v, q_pos, k_pos, *, h_y, h_p, content: str = "gaussian",
                                 spatial: str = "gaussian", shift=None, mask=None,
                                 is_causal: bool = False) -> jnp.ndarray:
  """Bilateral Self-Attention with explicit logits (the `xla` path, every other path's reference):
  softmax(C + S) v -> [batch, q_len, heads, head_dim] (logits and softmax in float32, the output in v's
  dtype). `ops.bilateral_attention` is the entry point that checks its inputs and picks a path.

  See `bilateral_logits` for the kernels and position features; `mask` is boolean, broadcastable to
  [batch, heads, q_len, k_len], True = attend.
  """
  logits = bilateral_logits(q, k, q_pos, k_pos, h_y=h_y, h_p=h_p, content=content, spatial=spatial, shift=shift)
  return filter_values(attention_weights(logits, mask=mask, is_causal=is_causal), v)


def standard_logits(q, k, *, bias=None) -> jnp.ndarray:
  """q_i . k_j / sqrt(head_dim) (+ bias, e.g. ALiBi) -> [batch, heads, q_len, k_len]."""
  heads, head_dim = q.shape[-2], q.shape[-1]
  logits = content_logits(q, k, h_y=jnp.full((heads,), head_dim ** 0.25), content="dot")
  return logits if bias is None else logits + bias


def standard_attention(q, k, v, *, bias=None, mask=None, is_causal: bool = False) -> jnp.ndarray:
  """Scaled dot-product attention softmax(q k^T / sqrt(d) + bias) v -> [batch, q_len, heads, head_dim]."""
  logits = standard_logits(q, k, bias=bias)
  return filter_values(attention_weights(logits, mask=mask, is_causal=is_causal), v)
