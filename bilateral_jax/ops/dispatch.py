"""Which exact BSA path computes a call: `xla` (explicit logits, `bilateral_attention`), `folded` (one
`jax.nn.dot_product_attention` on q and k extended by low-rank spatial features) or `pallas` (the flash
kernel: Gaussian/Laplacian spatial terms inside the tiles, other foldable kernels on the folded q and k;
memory linear in the length). All three give the same numbers within dtype tolerance; they differ in speed
and memory.
"""
from __future__ import annotations

import contextlib
import contextvars

import jax

from bilateral_jax.ops.attention import bilateral_attention
from bilateral_jax.ops.flash import flash_applies, flash_bilateral_attention
from bilateral_jax.ops.folded import foldable, folded_bilateral_attention


def pallas_attention(q, k, v, q_pos, k_pos, *, spatial, mask=None, is_causal=False, **kwargs):
  """The flash kernel: in-tile spatial terms where `flash_applies`, else on the folded q and k."""
  if flash_applies(spatial, q_pos, mask):
    return flash_bilateral_attention(q, k, v, q_pos, k_pos, spatial=spatial, mask=mask, is_causal=is_causal, **kwargs)
  return folded_bilateral_attention(q, k, v, q_pos, k_pos, spatial=spatial, mask=mask, is_causal=is_causal,
                                    implementation="pallas", **kwargs)


_COMPILE_TARGET = contextvars.ContextVar("bsa_compile_target", default=None)


@contextlib.contextmanager
def compiling_for(platform: str):
  """Traces inside choose their path for `platform` ('cpu', 'gpu', 'tpu'), the devices the step is compiled
  for (a TPU slice compiled from a CPU host), instead of this host's default backend."""
  token = _COMPILE_TARGET.set(platform)
  try:
    yield
  finally:
    _COMPILE_TARGET.reset(token)


def target_platform() -> str:
  """The platform the traced computation is compiled for: `compiling_for`'s, else jax's default backend."""
  return _COMPILE_TARGET.get() or jax.default_backend()


PATHS = {"xla": bilateral_attention, "folded": folded_bilateral_attention, "pallas": pallas_attention}
IMPLEMENTATIONS = ("auto",) + tuple(PATHS)


def applies(path: str, *, spatial, q_pos, k_pos, mask, is_causal) -> bool:
  if path == "folded":
    return foldable(spatial, is_causal, q_pos, k_pos)
  if path == "pallas":  # a key-only mask, and kernels computed in the tiles or foldable
    return flash_applies(spatial, q_pos, mask) or (flash_applies(None, None, mask) and
                                                   foldable(spatial, is_causal, q_pos, k_pos))
  return True


def choose_path(requested: str, backend: str, *, spatial, q_pos, k_pos, mask, is_causal) -> str:
  """The path for `requested` (one of IMPLEMENTATIONS) on `backend` ('cpu', 'gpu', 'tpu').

  `auto` takes the path measured fastest (benchmarks/attention.py): on CPU the explicit logits; on GPU and
  TPU the folded path where it applies, else the explicit logits. `pallas` is taken only on request until
  it has been measured on a GPU. A requested path that does not apply is an error, never a silent switch.
  """
  if requested not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {requested!r}; known: {', '.join(IMPLEMENTATIONS)}")
  case = dict(spatial=spatial, q_pos=q_pos, k_pos=k_pos, mask=mask, is_causal=is_causal)
  if requested == "pallas" and backend == "tpu":
    raise ValueError("attention_implementation='pallas' has no TPU kernel (Triton on GPU, the interpreter on "
                     "CPU); use 'auto' or 'folded'")
  if requested != "auto":
    if not applies(requested, **case):
      raise ValueError(f"attention_implementation={requested!r} does not apply to spatial={spatial!r} "
                       f"(causal={is_causal}, mask shape {getattr(mask, 'shape', None)}); use 'auto' or 'xla'")
    return requested
  if backend != "cpu" and applies("folded", **case):
    return "folded"
  return "xla"
