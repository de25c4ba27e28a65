"""The paper's measurements (method.md section 4) as pure jax functions.

- `softmax_lipschitz(z)`: the tight local Lipschitz constant of softmax at z, the spectral norm of its
  Jacobian diag(s) - s s^T (s = softmax(z)); `lipschitz_study` is the model-free study of the paper's
  Figure 2 (against N, with the fit a / sqrt(N) + b, and E||softmax(c + eta) - softmax(c)||).
- `token_uniformity(y)`: mean pairwise cosine similarity of the tokens of each example.
- `snr_db(clean, noisy)`: 20 log10(||Y(U)|| / ||Y(U + eta) - Y(U)||).
- `hidden_states(model, params, inputs, noise)`: Y_0 .. Y_L of a model, with `noise` added to the input
  of its Transformer stack (the token or patch embeddings U), for SNR across depth.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BISECTION_STEPS = 64


def softmax_lipschitz(z: jax.Array) -> jax.Array:
  """z [..., N] -> [...]: the largest eigenvalue of J = diag(s) - s s^T (J is symmetric positive
  semi-definite, so it is the spectral norm). J is a rank-one downdate of diag(s): its largest eigenvalue
  is the root of 1 = sum_i s_i^2 / (s_i - lambda) between the two largest s_i (f increases there from
  -inf to +inf), found by bisection in O(N) memory, so N = 10^4 needs no N x N matrix."""
  s = jax.nn.softmax(z.astype(jnp.float32), axis=-1)
  top2 = jax.lax.top_k(s, 2)[0]
  low, high = top2[..., 1], top2[..., 0]

  def secular(lam):
    return jnp.sum(s**2 / (s - lam[..., None]), axis=-1) - 1.0

  def halve(_, bounds):
    low, high = bounds
    middle = 0.5 * (low + high)
    positive = secular(middle) > 0
    return jnp.where(positive, low, middle), jnp.where(positive, middle, high)

  low, high = jax.lax.fori_loop(0, BISECTION_STEPS, halve, (low, high))
  return 0.5 * (low + high)


def lipschitz_study(lengths, *, samples: int = 1000, seed: int = 0, noise_scale: float = 1.0,
                    chunk: int = 100) -> dict:
  """For each N in `lengths`: the mean over `samples` draws z ~ N(0, I_N) of `softmax_lipschitz(z)`, and
  the mean of ||softmax(c + eta) - softmax(c)|| (c, eta/noise_scale ~ N(0, I_N)); the least-squares fit
  lipschitz ~ a / sqrt(N) + b. -> {N, lipschitz, perturbation, fit_a, fit_b} (lists, floats)."""

  @jax.jit
  def measure(key, n_dummy):
    z_key, c_key, eta_key = jax.random.split(key, 3)
    z = jax.random.normal(z_key, n_dummy.shape)
    c = jax.random.normal(c_key, n_dummy.shape)
    eta = noise_scale * jax.random.normal(eta_key, n_dummy.shape)
    change = jnp.linalg.norm(jax.nn.softmax(c + eta) - jax.nn.softmax(c), axis=-1)
    return jnp.sum(softmax_lipschitz(z)), jnp.sum(change)

  lipschitz, perturbation = [], []
  key = jax.random.key(seed)
  for n in lengths:
    totals = np.zeros(2)
    for start in range(0, samples, chunk):
      size = min(chunk, samples - start)
      key, sub = jax.random.split(key)
      totals += np.asarray(measure(sub, jnp.zeros((size, int(n)))), np.float64)
    lipschitz.append(totals[0] / samples)
    perturbation.append(totals[1] / samples)
  design = np.stack([1.0 / np.sqrt(np.asarray(lengths, np.float64)), np.ones(len(lengths))], axis=1)
  (fit_a, fit_b), *_ = np.linalg.lstsq(design, np.asarray(lipschitz), rcond=None)
  return {"N": [int(n) for n in lengths], "lipschitz": lipschitz, "perturbation": perturbation,
          "fit_a": float(fit_a), "fit_b": float(fit_b)}


def token_uniformity(y: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """y [b, n, d] (mask [b, n], 1 = a real token) -> [b]: the mean cosine similarity over pairs i != j."""
  y = y.astype(jnp.float32)
  mask = jnp.ones(y.shape[:2], jnp.float32) if mask is None else mask.astype(jnp.float32)
  unit = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
  cosine = jnp.einsum("bid,bjd->bij", unit, unit)
  pairs = mask[:, :, None] * mask[:, None, :] * (1.0 - jnp.eye(y.shape[1]))
  return jnp.sum(cosine * pairs, axis=(1, 2)) / jnp.maximum(jnp.sum(pairs, axis=(1, 2)), 1.0)


def snr_db(clean: jax.Array, noisy: jax.Array) -> jax.Array:
  """20 log10(||clean|| / ||noisy - clean||), norms over the whole array."""
  clean, noisy = clean.astype(jnp.float32), noisy.astype(jnp.float32)
  return 20.0 * jnp.log10(jnp.linalg.norm(clean) / jnp.maximum(jnp.linalg.norm(noisy - clean), 1e-30))


def hidden_states(model: nn.Module, params, inputs, noise=None) -> list[jax.Array]:
  """Y_0 .. Y_L [b, n, d] of `model` on `inputs`; `noise` (shaped as the stack's input) is added to the
  input of its Transformer stack."""
  from bilateral_jax.models.transformer import Transformer  # noqa: PLC0415

  def add_noise(next_fun, args, kwargs, context):
    if noise is not None and isinstance(context.module, Transformer) and context.method_name == "__call__":
      args = (args[0] + noise.astype(args[0].dtype),) + args[1:]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(add_noise):
    _, state = model.apply({"params": params}, inputs, mutable=["intermediates"])
  found = [value for path, value in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
           if "hidden_states" in jax.tree_util.keystr(path)]
  return found


def stack_input(model: nn.Module, params, inputs) -> jax.Array:
  """The input U of the model's Transformer stack (the embeddings), for shaping noise."""
  from bilateral_jax.models.transformer import Transformer  # noqa: PLC0415
  captured = []

  def capture(next_fun, args, kwargs, context):
    if isinstance(context.module, Transformer) and context.method_name == "__call__":
      captured.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    model.apply({"params": params}, inputs)
  return captured[0]
