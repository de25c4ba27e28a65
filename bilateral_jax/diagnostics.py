"""The paper's measurements (docs/method.md section 4) as pure jax functions.

- `softmax_lipschitz(z)`: the tight local Lipschitz constant of softmax at z, the spectral norm of its
  Jacobian diag(s) - s s^T (s = softmax(z)); `lipschitz_study` is the model-free study of the paper's
  Figure 2 (against N, with the fit a / sqrt(N) + b, and E||softmax(c + eta) - softmax(c)||).
- `stacks(model, params, inputs, y0_noise)`: each Transformer stack of a model (the Segmenter has two: its
  encoder and its mask-transformer decoder) with its Y_0 .. Y_L, attention weights, coordinates and real
  tokens (no padding, no CLS or class tokens); `y0_noise` is added to the first stack's Y_0, after any
  additive position table.
- `token_uniformity(y, real)`: mean pairwise cosine similarity of the real tokens of each example.
- `snr_db(clean, noisy, real)`: 20 log10(||Y - mean|| / ||Y(Y_0 + eta) - Y||), centred over the real tokens.
- `depth_profile`: SNR and token uniformity per layer of each stack (docs/method.md section 4).
- `attention_maps(stack)`: each layer's attention averaged over heads and examples;
  `mean_attention_distance` (over real query rows) and `attention_grid` (a query's attention on the patch
  grid) summarise them.
- `cross_term_share(model, params, inputs)`: the share of the first layer's logit variance carried by the
  token-position cross terms (`logit_terms` splits the logits); 0 by construction without additive positions.
- `long_range_stability(attentions, lengths)`: model-free, the relative change of a random stack's
  attention output under a small input perturbation against the length N (`relative_sensitivity`);
  `attention_sensitivity(model, params, inputs)`: the same of a trained model on its own inputs, and
  `sensitivity_at_lengths` of a language model on its eval text in windows of each length.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bilateral_jax import experiments, ops
from bilateral_jax.data import sources
from bilateral_jax.models.config import TransformerConfig
from bilateral_jax.models.transformer import Block, MultiHeadAttention, Transformer

BISECTION_STEPS = 64
LAYER_NORM_EPSILON = 1e-6  # flax.linen.LayerNorm's default, which the stack uses


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
  """y [b, n, d] (mask [b, n], 1 = a real token) -> [b]: the mean cosine similarity over pairs i != j of
  the tokens standardised over their channels (a LayerNorm without scale and shift: pre-LN's raw stream
  and post-LN's normalised one on the same footing)."""
  y = y.astype(jnp.float32)
  mask = jnp.ones(y.shape[:2], jnp.float32) if mask is None else mask.astype(jnp.float32)
  y = y - jnp.mean(y, axis=-1, keepdims=True)  # the per-token scale cancels in the cosine
  unit = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
  cosine = jnp.einsum("bid,bjd->bij", unit, unit)
  pairs = mask[:, :, None] * mask[:, None, :] * (1.0 - jnp.eye(y.shape[1]))
  return jnp.sum(cosine * pairs, axis=(1, 2)) / jnp.maximum(jnp.sum(pairs, axis=(1, 2)), 1.0)


def snr_db(clean: jax.Array, noisy: jax.Array, real: jax.Array | None = None) -> jax.Array:
  """clean, noisy [b, n, d], real [b, n] (the tokens counted; default all) -> 20 log10(||clean - mean|| /
  ||noisy - clean||): clean centred over each example's real tokens, norms over all real tokens."""
  clean, noisy = clean.astype(jnp.float32), noisy.astype(jnp.float32)
  weight = (jnp.ones(clean.shape[:2]) if real is None else real.astype(jnp.float32))[..., None]
  mean = jnp.sum(clean * weight, axis=1, keepdims=True) / jnp.maximum(jnp.sum(weight, axis=1, keepdims=True), 1.0)
  signal = jnp.sqrt(jnp.sum(weight * jnp.square(clean - mean)))
  noise = jnp.sqrt(jnp.sum(weight * jnp.square(noisy - clean)))
  return 20.0 * jnp.log10(signal / jnp.maximum(noise, 1e-30))


@dataclasses.dataclass
class Call:
  """One call of an intercepted module: its (bound) module, arguments, variables and output."""
  module: nn.Module
  args: tuple
  kwargs: dict
  variables: Any
  output: Any = None


def explicit(model: nn.Module) -> nn.Module:
  """`model` with BSA on its explicit-logits path (the only one that forms the attention weights the
  diagnostics read) and no remat (a rematerialised block is called inside jax.checkpoint's trace: its
  arguments would be tracers). The same parameters and numbers."""
  return model.clone(config=dataclasses.replace(model.config, remat="none", attention_path="xla"))


def _apply(model: nn.Module, params, inputs, module_type, **kwargs) -> tuple[Any, list[Call]]:
  """model.apply with the `intermediates` collection -> (intermediates, the calls of `module_type` modules
  in call order)."""
  model = explicit(model)
  calls = []

  def intercept(next_fun, args, kwargs, context):
    if not (isinstance(context.module, module_type) and context.method_name == "__call__"):
      return next_fun(*args, **kwargs)
    call = Call(context.module, args, kwargs, context.module.variables)
    calls.append(call)
    call.output = next_fun(*args, **kwargs)
    return call.output

  with nn.intercept_methods(intercept):
    _, state = model.apply({"params": params}, inputs, mutable=["intermediates"], **kwargs)
  return state["intermediates"], calls


@dataclasses.dataclass
class Stack:
  """One Transformer stack's call inside a model. name: its module path ("transformer"; the Segmenter's
  decoder "decoder/transformer"); hidden: Y_0 .. Y_L [b, n, d]; attention: each layer's weights
  [b, heads, n, n]; coords [n, c] (NaN rows: no place); real [b, n]: the real tokens, those the padding
  mask keeps that have a place (no padding, no CLS, no class tokens)."""
  name: str
  hidden: list[jax.Array]
  attention: list[jax.Array]
  coords: jax.Array
  real: jax.Array


def _real_tokens(kwargs: dict, batch: int) -> jax.Array:
  """[batch, n]: the real tokens of a Transformer stack's call with keyword arguments `kwargs`: those
  with a place (coordinates not NaN) that the padding mask keeps."""
  coords = kwargs["coords"]
  real = jnp.broadcast_to(~jnp.any(jnp.isnan(coords), axis=-1), (batch, coords.shape[0]))
  return real if kwargs.get("mask") is None else real & kwargs["mask"]


def stacks(model: nn.Module, params, inputs, y0_noise=None) -> list[Stack]:
  """The Transformer stacks of `model` on `inputs`, in call order; y0_noise [b, n, d] is added to the
  first stack's Y_0 (after its additive position table, if any)."""
  calls = []

  def intercept(next_fun, args, kwargs, context):
    if isinstance(context.module, Transformer) and context.method_name == "__call__":
      if not calls and y0_noise is not None:
        kwargs = kwargs | {"y0_noise": y0_noise}
      calls.append((context.module.path, args[0].shape[0], kwargs))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(intercept):
    _, state = explicit(model).apply({"params": params}, inputs, mutable=["intermediates"])
  out = []
  for path, batch, kwargs in calls:
    sown = state["intermediates"]
    for name in path:
      sown = sown[name]
    coords = kwargs["coords"]
    real = _real_tokens(kwargs, batch)
    layers = sorted((int(key[len("block_"):]) for key in sown if key.startswith("block_")))
    attention = [sown_attention_weights(sown[f"block_{layer}"]["attention"]) for layer in layers]
    out.append(Stack("/".join(path), list(sown["hidden_states"]), attention, coords, real))
  return out


def sown_attention_weights(attention: dict) -> jax.Array:
  """The weights [b, heads, n, n] a `MultiHeadAttention`'s intermediates hold: its own, or for BSA its
  `BilateralAttention`'s."""
  return attention.get("bilateral", attention)["attention_weights"][0]


def stack_input(model: nn.Module, params, inputs) -> jax.Array:
  """The input U [b, n, d] of the model's Transformer stack (the embeddings), for shaping noise."""
  return _apply(model, params, inputs, Transformer)[1][0].args[0]


def eval_inputs(experiment, examples: int) -> np.ndarray:
  """The first `examples` inputs of an `experiments.Experiment`'s first eval split (through its eval transform),
  as the model takes them (`Experiment.device_batch`)."""
  source = sources.shared_split(experiment.config.data, experiment.config.eval.splits[0])
  transform = experiment.eval_transform or (lambda example, rng: example)
  inputs = np.stack([transform(source[i], None)["inputs"] for i in range(min(examples, len(source)))])
  if experiment.sliding_window:  # the first window of each image's canvas
    inputs = inputs[:, :experiment.info.image_size, :experiment.info.image_size]
  return np.asarray(experiment.device_batch({"inputs": inputs})["inputs"])


def depth_profile(model: nn.Module, params, inputs, *, noise: float, seed: int = 0) -> dict:
  """SNR (dB) and token uniformity of Y_0 .. Y_L on `inputs`, over real tokens only (`Stack.real`), with
  Gaussian noise of `noise` x the RMS of the first stack's Y_0 (its real tokens, after any additive
  position table) added to that Y_0 -> {noise, stack, layer, snr_db, token_uniformity, read_layer,
  readout_snr_db} of the first stack; each later stack (the Segmenter's mask-transformer decoder, fed by
  the first) adds its own {stack, layer, snr_db, token_uniformity} under the first part of its module path
  (`decoder`).

  What the readout reads (docs/method.md section 4): with CLS pooling (`model.pooling`), read_layer is
  L - 1 (the last block's other tokens feed nothing) and readout_snr_db the SNR of the CLS token of Y_L,
  centred over the examples; otherwise read_layer is L and readout_snr_db None."""
  clean = stacks(model, params, inputs)
  y0, real = np.asarray(clean[0].hidden[0], np.float64), np.asarray(clean[0].real)
  rms = float(np.sqrt(np.mean(np.square(y0[real]))))
  noisy = stacks(model, params, inputs, noise * rms * jax.random.normal(jax.random.key(seed), y0.shape))

  def profile(clean_stack: Stack, noisy_stack: Stack) -> dict:
    real = clean_stack.real
    return {"stack": clean_stack.name, "layer": list(range(len(clean_stack.hidden))),
            "snr_db": [float(snr_db(c, n, real)) for c, n in zip(clean_stack.hidden, noisy_stack.hidden)],
            "token_uniformity": [float(np.mean(token_uniformity(c, real))) for c in clean_stack.hidden]}

  result = {"noise": noise} | profile(clean[0], noisy[0])
  last = len(clean[0].hidden) - 1
  result |= {"read_layer": last, "readout_snr_db": None}
  if getattr(model, "pooling", None) == "cls":
    readout = lambda stack: stack.hidden[-1][:, :1]  # [b, 1, d]: the CLS token, first (backbones)
    result |= {"read_layer": last - 1,
               "readout_snr_db": float(snr_db(jnp.swapaxes(readout(clean[0]), 0, 1),
                                              jnp.swapaxes(readout(noisy[0]), 0, 1)))}
  for clean_stack, noisy_stack in zip(clean[1:], noisy[1:]):
    result[clean_stack.name.split("/")[0]] = profile(clean_stack, noisy_stack)
  return result


def stack_coordinates(model: nn.Module, params, inputs) -> jax.Array:
  """The coordinates [n, c] of the stack's tokens (NaN rows: no place, e.g. a CLS token)."""
  return _apply(model, params, inputs, Transformer)[1][0].kwargs["coords"]


def attention_maps(stack: Stack) -> list[jax.Array]:
  """[n, n] per layer of `stack` (first to last): its attention weights [b, heads, n, n] averaged over
  heads and examples; rows sum to 1."""
  return [jnp.mean(weights, axis=(0, 1)) for weights in stack.attention]


def mean_attention_distance(weights: jax.Array, coords: jax.Array, queries: jax.Array | None = None) -> jax.Array:
  """weights [..., n, n] (rows sum to 1), coords [n, c] (NaN rows: no place), queries (boolean,
  broadcastable to [..., n]: the query rows counted, e.g. real tokens [b, 1, n] for weights
  [b, heads, n, n]; default all) -> []: the mean over counted placed queries i (and the leading axes) of
  sum_j A_ij ||r_i - r_j|| over placed keys j, in coordinate units (tokens, patches)."""
  placed = ~jnp.any(jnp.isnan(coords), axis=-1)
  r = jnp.where(placed[:, None], coords, 0.0)
  distance = jnp.sqrt(jnp.sum(jnp.square(r[:, None] - r[None]), axis=-1)) * (placed[:, None] & placed[None])
  counted = jnp.broadcast_to(placed if queries is None else queries & placed, weights.shape[:-1])
  per_query = jnp.sum(weights * distance, axis=-1)
  return jnp.sum(per_query * counted) / jnp.maximum(jnp.sum(counted), 1)


def attention_grid(attention, coords) -> np.ndarray:
  """attention [n, n], coords [n, 2] of patches ((row, col); NaN rows: no place) -> [rows, cols]: the
  attention of the placeless (CLS) query rows, or of all rows when every token has a place, to each patch."""
  attention, coords = np.asarray(attention), np.asarray(coords)
  placed = ~np.isnan(coords).any(axis=-1)
  queries = attention[~placed] if not placed.all() else attention
  cells = coords[placed].astype(int)
  grid = np.zeros(tuple(cells.max(axis=0) + 1), attention.dtype)
  grid[cells[:, 0], cells[:, 1]] = queries.mean(axis=0)[placed]
  return grid


def logit_terms(x: jax.Array, p: jax.Array, block_params, *, pre_norm: bool = True):
  """A standard-attention Block's logits on y0 = x + p split by source: x [b, n, d] the tokens, p [n, d]
  the position table rows, block_params the Block's params -> (content, position, cross), each
  [b, heads, n, n], summing to the logits. The pre-norm LayerNorm is split linearly: its centring and scale
  act on x and p alike (the 1/std of x + p is shared), its bias and the projections' biases join the content
  side where they meet content and the position side where they meet position; cross = q(x).k(p) + q(p).k(x)."""
  x, p = x.astype(jnp.float32), jnp.broadcast_to(p.astype(jnp.float32), x.shape)
  if pre_norm:
    norm = block_params["norm_attention"]
    scale = norm["scale"] * jax.lax.rsqrt(jnp.var(x + p, axis=-1, keepdims=True) + LAYER_NORM_EPSILON)
    (hx, hp), h0 = [(v - jnp.mean(v, axis=-1, keepdims=True)) * scale for v in (x, p)], norm["bias"]
  else:
    hx, hp, h0 = x, p, jnp.zeros(x.shape[-1])

  def project(name):
    dense = block_params["attention"][name]
    linear = lambda h: jnp.einsum("...d,dhk->...hk", h, dense["kernel"])
    return linear(hx), linear(hp), jnp.broadcast_to(linear(h0) + dense["bias"], hx.shape[:2] + dense["bias"].shape)

  (qx, qp, q0), (kx, kp, k0) = project("query"), project("key")
  content = ops.standard_logits(qx + q0, kx + k0)
  cross = ops.standard_logits(qx, kp) + ops.standard_logits(qp, kx)
  return content, ops.standard_logits(qx + qp + q0, kx + kp + k0) - content - cross, cross


def logit_term_shares(x, p, block_params, *, pre_norm: bool = True, keep=None) -> dict[str, float]:
  """Shares of the logit variance over keys (what softmax sees: a row's constant cancels) of the `logit_terms`:
  within-row sums of squares about the row mean over the kept pairs (keep: boolean, broadcastable to
  [b, heads, n, n]), each over their total -> {content, position, cross}."""
  terms = logit_terms(x, p, block_params, pre_norm=pre_norm)
  keep = jnp.broadcast_to(jnp.ones((), bool) if keep is None else keep, terms[0].shape).astype(jnp.float32)
  count = jnp.maximum(jnp.sum(keep, axis=-1, keepdims=True), 1.0)
  squares = [jnp.sum(keep * jnp.square(t - jnp.sum(t * keep, axis=-1, keepdims=True) / count)) for t in terms]
  total = sum(squares)
  return {name: float(value / total) for name, value in zip(("content", "position", "cross"), squares)}


def cross_term_share(model: nn.Module, params, inputs) -> dict:
  """Method.md section 4's cross-term share at the model's first layer on `inputs` -> {cross_share,
  content_share, position_share, note}: `logit_term_shares` with the layer's own masks (padding, causal)
  when the stack adds a position table to the tokens; otherwise cross_share is 0.0 by construction (BSA,
  ALiBi, no positions) or None (RoPE: the logits do not split into additive terms)."""
  _, (stack, block, *_) = _apply(model, params, inputs, (Transformer, Block))
  config = stack.module.config
  if config.attention == "bilateral" and config.additive_positions:
    return {"cross_share": None, "note": f"BSA's {config.content!r} content kernel on tokens plus a position table: "
                                        "not split into the standard logits' terms"}
  if not config.additive_positions:
    if config.attention == "rope":
      return {"cross_share": None, "note": "rope rotates q and k by position: no additive split of the logits"}
    return {"cross_share": 0.0, "note": f"attention={config.attention!r} adds no position table to the tokens: "
                                        "no cross terms by construction"}
  mask, n = block.kwargs["mask"], block.args[0].shape[1]
  keep = jnp.ones((1, 1, n, n), bool) if mask is None else mask & jnp.swapaxes(mask, -1, -2)
  keep = keep & ops.causal_mask(n, n) if block.module.is_causal else keep
  shares = logit_term_shares(stack.args[0], block.kwargs["pos_embed"], block.variables["params"],
                             pre_norm=config.norm == "pre", keep=keep)
  return {"cross_share": shares["cross"], "content_share": shares["content"],
          "position_share": shares["position"],
          "note": "shares of the within-row (over keys) sum of squares of the first layer's logits"}


LONG_RANGE_STACK = dict(num_layers=2, num_heads=4, model_dim=64, mlp_dim=128, residual="standard")
LONG_RANGE_ATTENTIONS = {  # the standard baseline with a sinusoidal table: at initialisation a learned one is ~0
    "standard": dict(attention="standard", position_table="sinusoidal"),
    "alibi": dict(attention="alibi", position_table="none"),
    "bilateral": dict(attention="bilateral", position_table="none"),
}


def _norms(a: jax.Array) -> jax.Array:
  """[b, ...] -> [b]: the norm of each example."""
  return jnp.sqrt(jnp.sum(jnp.square(a.reshape(a.shape[0], -1).astype(jnp.float32)), axis=-1))


def relative_sensitivity(f, x: jax.Array, d: jax.Array, fx: jax.Array | None = None) -> jax.Array:
  """x, d [b, ...] -> [b]: (||f(x + d) - f(x)|| / ||f(x)||) / (||d|| / ||x||), norms per example (fx: f(x)
  when already computed)."""
  fx = f(x) if fx is None else fx
  return _norms(f(x + d) - fx) / _norms(fx) * _norms(x) / _norms(d)


def perturbation(key: jax.Array, x: jax.Array, relative_size: float, real: jax.Array | None = None) -> jax.Array:
  """x [b, n, d] -> d [b, n, d]: Gaussian, zero outside the real tokens (real [b, n]; default all), scaled
  per example so that ||d|| = relative_size ||x||."""
  d = jax.random.normal(key, x.shape, jnp.float32)
  if real is not None:
    d, x = d * real[..., None], x * real[..., None]
  return d * (relative_size * _norms(x) / _norms(d))[:, None, None]


def _attention_output(model: Transformer, params, x, coords) -> jax.Array:
  """The last block's attention sublayer output [b, n, d] of the stack `model` on x [b, n, d]."""
  return _apply(model, params, x, MultiHeadAttention, coords=coords)[1][-1].output


def _first_stack_attention(model: nn.Module, params, inputs, y0_noise) -> tuple[jax.Array, jax.Array, jax.Array]:
  """-> (Y_0 [b, n, d] with y0_noise added, real [b, n], the last block's attention sublayer output [b, n, d])
  of the model's first Transformer stack. Nothing is sown (no n x n weights kept)."""
  seen = {"stacks": 0, "inside": False}

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    if isinstance(module, Transformer):
      seen["stacks"] += 1
      if seen["stacks"] > 1:
        return next_fun(*args, **kwargs)
      kwargs = kwargs | {"y0_noise": y0_noise}
      seen["real"], seen["inside"] = _real_tokens(kwargs, args[0].shape[0]), True
      try:
        return next_fun(*args, **kwargs)
      finally:
        seen["inside"] = False
    output = next_fun(*args, **kwargs)
    if seen["inside"] and isinstance(module, Block):
      seen.setdefault("y0", args[1])
    elif seen["inside"] and isinstance(module, MultiHeadAttention):
      seen["attention"] = output
    return output

  with nn.intercept_methods(intercept):
    model.apply({"params": params}, inputs)
  return seen["y0"], seen["real"], seen["attention"]


def attention_sensitivity(model: nn.Module, params, inputs, *, relative_size: float = 1e-3, seed: int = 0,
                          batch: int = 8) -> float:
  """A trained model's long-range stability (docs/method.md section 4): the mean over `inputs` of the
  `relative_sensitivity` of its first stack's last attention sublayer output, over the real tokens, to a
  `perturbation` of that stack's Y_0 (after any additive position table) of relative size `relative_size`,
  drawn per batch of `batch` examples from `seed`. Computed in float32 whatever the model's dtype (a
  perturbation of 1e-3 is below bfloat16's resolution), on the model's own attention path."""
  model = model.clone(config=dataclasses.replace(model.config, remat="none", dtype="float32"))
  run = jax.jit(functools.partial(_first_stack_attention, model))
  ratios = []
  for start in range(0, len(inputs), batch):
    x = inputs[start:start + batch]
    shape = jax.eval_shape(run, params, x, None)[0].shape
    y0, real, clean = run(params, x, jnp.zeros(shape, jnp.float32))
    keep = real[..., None].astype(jnp.float32)
    d = perturbation(jax.random.fold_in(jax.random.key(seed), start), y0, relative_size, real)
    ratios.append(relative_sensitivity(lambda v: run(params, x, v - y0 * keep)[2] * keep, y0 * keep, d,
                                       fx=clean * keep))
  return float(np.mean(np.concatenate(ratios)))


def sensitivity_at_lengths(config, params, lengths, *, examples: int, seed: int = 0) -> list[float]:
  """A trained language model's `attention_sensitivity` on the first `examples` windows of its first eval
  split, at each of `lengths` tokens (`experiments.at_eval_length`: the same parameters at every length)."""
  out = []
  for length in lengths:
    at = experiments.at_eval_length(config, int(length))
    experiment = experiments.Experiment(at, sources.describe_eval(at))
    inputs = eval_inputs(experiment, examples)
    out.append(attention_sensitivity(experiment.model, params, inputs, seed=seed))
  return out


def long_range_stability(attentions=tuple(LONG_RANGE_ATTENTIONS), lengths=(64, 128, 256, 512, 1024), *,
                         seeds: int = 2, samples: int = 2, relative_size: float = 1e-3, seed: int = 0,
                         **stack) -> dict:
  """Model-free: for each attention kind (`LONG_RANGE_ATTENTIONS`) a stack (`LONG_RANGE_STACK`, updated by
  `stack`) at `seeds` random initialisations, and for each N `samples` inputs x ~ N(0, I) [N, model_dim]
  (the same for every kind) with a `perturbation` d: the mean `relative_sensitivity` of the last block's
  attention output. -> {N: [...], kind: [...] per kind}. `attention_sensitivity` measures a trained model
  alike, but perturbs its Y_0 (after any added table) on its own inputs."""
  lengths = [int(n) for n in lengths]
  result = {"N": lengths}
  for kind in attentions:
    config = TransformerConfig(**(LONG_RANGE_STACK | {"max_length": max(lengths)} | LONG_RANGE_ATTENTIONS[kind]
                                  | stack))
    model = Transformer(config)
    output = jax.jit(functools.partial(_attention_output, model))
    start = (jnp.zeros((1, 1, config.model_dim)), ops.sequence_coordinates(1))
    inits = [model.init(key, start[0], coords=start[1])["params"]
             for key in jax.random.split(jax.random.key(seed), seeds)]
    ratios = []
    for n in lengths:
      x_key, d_key = jax.random.split(jax.random.fold_in(jax.random.key(seed + 1), n))
      x = jax.random.normal(x_key, (samples, n, config.model_dim))
      d = perturbation(d_key, x, relative_size)
      coords = ops.sequence_coordinates(n)
      ratios.append(float(np.mean([relative_sensitivity(lambda v, p=params: output(p, v, coords), x, d)
                                   for params in inits])))
    result[kind] = ratios
  return result
