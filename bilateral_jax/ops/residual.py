"""The Generalized Residual Connection (docs/method.md section 3): boosting brings the observation Y_0 back."""
from __future__ import annotations

import jax.numpy as jnp


def generalized_residual(y, fy, y0, t):
  """`convex` GRC: (1 - t) * (y + fy) + t * y0. t = 0 is the standard residual y + fy.

  y, fy, y0: [batch, length, dim]; t: scalar or [dim] (per channel), in (0, 1). The result keeps the
  residual stream's dtype (a float32 t does not promote a bfloat16 stream).
  """
  t = jnp.asarray(t, y.dtype)
  return (1.0 - t) * (y + fy) + t * y0


def boosted_values(v, v0, t):
  """`boost` GRC values: (1 - t) V(Y_l) + t (V(Y_0) - V(Y_l)), fed to the attention filter A_l.

  v, v0: [batch, length, heads, head_dim]; t: scalar or [heads, head_dim]. t = 0 gives the plain values;
  the result keeps v's dtype.
  """
  t = jnp.asarray(t, v.dtype)
  return (1.0 - t) * v + t * (v0 - v)
