"""Which exact BSA path computes a call: `xla` (explicit logits, `bilateral_attention`), `folded` (one
`jax.nn.dot_product_attention` on q and k extended by low-rank spatial features) or `pallas` (the flash
kernel: Gaussian/Laplacian spatial terms inside the tiles, other foldable kernels on the folded q and k;
memory linear in the length). All three give the same numbers within dtype tolerance; they differ in speed
and memory.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bilateral_jax.ops import target
from bilateral_jax.ops.attention import explicit_bilateral_attention
from bilateral_jax.ops.flash import flash_applies, flash_bilateral_attention
from bilateral_jax.ops.folded import foldable, folded_bilateral_attention
from bilateral_jax.ops.kernels import at_least_float32, spatial_kernel


def pallas_attention(q, k, v, q_pos, k_pos, *, spatial, mask=None, is_causal=False, **kwargs):
  """The flash kernel: in-tile spatial terms where `flash_applies`, else on the folded q and k."""
  if flash_applies(spatial, q_pos, mask):
    return flash_bilateral_attention(q, k, v, q_pos, k_pos, spatial=spatial, mask=mask, is_causal=is_causal, **kwargs)
  return folded_bilateral_attention(q, k, v, q_pos, k_pos, spatial=spatial, mask=mask, is_causal=is_causal,
                                    backend="pallas", **kwargs)


PATHS = {"xla": explicit_bilateral_attention, "folded": folded_bilateral_attention, "pallas": pallas_attention}
ATTENTION_PATHS = ("auto",) + tuple(PATHS)  # what a caller may request


def applies(path: str, *, spatial, q_pos, k_pos, mask, is_causal) -> bool:
  if path == "folded":
    return foldable(spatial, is_causal, q_pos, k_pos)
  if path == "pallas":  # a key-only mask, and kernels computed in the tiles or foldable
    return flash_applies(spatial, q_pos, mask) or (flash_applies(None, None, mask) and
                                                   foldable(spatial, is_causal, q_pos, k_pos))
  return True


def choose_path(requested: str, platform: str, *, spatial, q_pos, k_pos, mask, is_causal) -> str:
  """The path for `requested` (one of ATTENTION_PATHS) on `platform` ('cpu', 'gpu', 'tpu').

  `auto`: on TPU the flash kernel (Mosaic) wherever it applies, the only path whose memory is linear in
  the length (per-chip temporaries compiled by libtpu, docs/results.md); elsewhere the path measured fastest
  (benchmarks/attention.py): on CPU the explicit logits, on GPU the folded path where it applies, else the
  explicit logits (the Triton kernel is taken only on request until it has been measured on a GPU). A
  requested path that does not apply is an error, never a silent switch.
  """
  if requested not in ATTENTION_PATHS:
    raise ValueError(f"attention_path={requested!r} is not one of: {', '.join(ATTENTION_PATHS)}")
  case = dict(spatial=spatial, q_pos=q_pos, k_pos=k_pos, mask=mask, is_causal=is_causal)
  if requested != "auto":
    if not applies(requested, **case):
      raise ValueError(f"attention_path={requested!r} does not apply to spatial={spatial!r} "
                       f"(causal={is_causal}, mask shape {getattr(mask, 'shape', None)}); use 'auto' or 'xla'")
    return requested
  if platform == "tpu" and applies("pallas", **case):
    return "pallas"
  if platform != "cpu" and applies("folded", **case):
    return "folded"
  return "xla"


MASK_LAYOUTS = "[batch or 1, heads or 1, q_len or 1, k_len or 1] (a key padding mask: mask[:, None, None, :])"


def check_mask(mask, batch: int, heads: int, q_len: int, k_len: int) -> None:
  """A boolean mask must broadcast to [batch, heads, q_len, k_len] with every axis in place: any other
  rank is ambiguous (a [b, n] key mask with b == n would broadcast as a query x key mask)."""
  if mask is None:
    return
  full = (batch, heads, q_len, k_len)
  if jnp.ndim(mask) != 4 or any(size not in (1, want) for size, want in zip(jnp.shape(mask), full)):
    raise ValueError(f"mask of shape {jnp.shape(mask)} does not fit attention of shape {full}: give it as "
                     f"{MASK_LAYOUTS}")


def _per_head(x, heads: int, pair: bool = False):
  """A bandwidth given as a scalar (or [2] for a pair) -> [heads] ([heads, 2])."""
  x = at_least_float32(x)
  return jnp.broadcast_to(x, (heads, 2) if pair else (heads,)) if x.ndim <= (1 if pair else 0) else x


def bilateral_attention(q, k, v, q_pos, k_pos, *, h_y, h_p, content: str = "gaussian", spatial: str = "gaussian",
                        shift=None, mask=None, is_causal: bool = False, path: str = "auto") -> jnp.ndarray:
  """Bilateral Self-Attention softmax(C + S) v, the public entry point: every path gives the explicit op's
  numbers (`explicit_bilateral_attention`) or refuses, under `jit` too.

  q, k, v: [batch, len, heads, head_dim], or unbatched [len, heads, head_dim] (as `jax.nn`); q_pos, k_pos:
  coordinates [len, c] shared by the batch or per example [batch, len, c] (`dot`: its tables [len, (heads,)
  c], per example [batch, len, heads, c]), or both None; h_y, h_p: scalars or per head ([heads], `asymmetric`
  [heads, 2]); mask: boolean, `MASK_LAYOUTS`, True = attend. path: auto / xla / folded / pallas
  (`choose_path`, for the compile target's platform). -> q's layout, v's dtype.
  """
  if q.ndim == 3:
    mask = None if mask is None else jnp.asarray(mask)[None] if jnp.ndim(mask) == 3 else mask
    run = lambda *a: bilateral_attention(*a, h_y=h_y, h_p=h_p, content=content, spatial=spatial, shift=shift,
                                         mask=mask, is_causal=is_causal, path=path)
    return run(q[None], k[None], v[None], q_pos, k_pos)[0]
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"q, k, v must be [batch, len, heads, head_dim] or [len, heads, head_dim]; got {q.shape}, "
                     f"{k.shape}, {v.shape}")
  batch, n, heads, _ = q.shape
  check_mask(mask, batch, heads, n, k.shape[1])
  spatial = "none" if spatial in (None, "none") or q_pos is None else spatial
  h_y = _per_head(h_y, heads)
  if spatial != "none":
    h_p = _per_head(h_p, heads, pair=spatial == "asymmetric")
    shared_rank = 3 if spatial_kernel(spatial).features == "table" else 2
    if jnp.ndim(q_pos) == shared_rank + 1:
      return _per_example(q, k, v, q_pos, k_pos, h_y=h_y, h_p=h_p, content=content, spatial=spatial, shift=shift,
                          mask=mask, is_causal=is_causal, path=path)
  chosen = choose_path(path, target.target_platform(), spatial=spatial, q_pos=q_pos, k_pos=k_pos, mask=mask,
                       is_causal=is_causal)
  return PATHS[chosen](q, k, v, q_pos, k_pos, h_y=h_y, h_p=h_p, content=content, spatial=spatial, shift=shift,
                     mask=mask, is_causal=is_causal)


def _per_example(q, k, v, q_pos, k_pos, *, mask, **kwargs):
  """Coordinates per example: the attention of each example with its own, mapped over the batch."""
  batch = q.shape[0]
  if jnp.shape(q_pos)[0] != batch or jnp.shape(k_pos)[0] != batch:
    raise ValueError(f"per-example coordinates {jnp.shape(q_pos)}, {jnp.shape(k_pos)} must lead with the batch "
                     f"({batch})")
  if mask is None:
    one = lambda q, k, v, q_pos, k_pos: bilateral_attention(q[None], k[None], v[None], q_pos, k_pos, **kwargs)[0]
    return jax.vmap(one)(q, k, v, jnp.asarray(q_pos), jnp.asarray(k_pos))
  mask = jnp.broadcast_to(mask, (batch,) + jnp.shape(mask)[1:])
  one = lambda q, k, v, q_pos, k_pos, mask: bilateral_attention(q[None], k[None], v[None], q_pos, k_pos,
                                                                mask=mask[None], **kwargs)[0]
  return jax.vmap(one)(q, k, v, jnp.asarray(q_pos), jnp.asarray(k_pos), mask)
