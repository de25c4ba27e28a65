"""Linen modules: multi-head attention (standard, ALiBi, RoPE, bilateral), the block with a standard or
generalized residual, and the stack. The math lives in `bilateral_jax.ops`; these modules hold parameters.

Per-layer hidden states (`hidden_states`, Y_0 .. Y_L) and attention weights (`attention_weights`) are sown
into the `intermediates` collection: pass `mutable=["intermediates"]` to `apply` to get them; otherwise
sowing is a no-op and costs nothing.
"""
from __future__ import annotations

import contextlib
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilateral_jax import ops
from bilateral_jax.models.config import BILATERAL_SPATIAL, TransformerConfig, _choose
from bilateral_jax.ops import dispatch, target
from bilateral_jax.ops.kernels import CONTENT_KERNELS


class BilateralAttention(nn.Module):
  """Bilateral Self-Attention of projected q, k, v [batch, len, heads, head_dim] -> [batch, q_len, heads,
  head_dim], holding BSA's own parameters: the content bandwidths log h_y [heads] (h_y^2 starts at
  sqrt(head_dim)) and the spatial kernel's log h_p (initialised geometrically over `bandwidth_range`, first
  head most local), a `shifted` kernel's displacement, and for `dot` (TUPE) the projections of position-table
  rows to per-head features. The q, k, v projections are the caller's, so it drops into one's own model.

  q_pos, k_pos (default q_pos): the spatial kernel's inputs, coordinates [len, c] (NaN rows: no place) or,
  for `dot`, position-table rows [len, dim]; not read with spatial `none`. mask: `ops.MASK_LAYOUTS`.
  attention_path: the `ops.bilateral_attention` path (`auto` decides for the compile target; a path that
  does not apply is an error). Attention weights are sown into `intermediates` when that collection is
  mutable, which only the `xla` path can do: requesting them on another path is an error, never a switch.
  """
  num_heads: int
  head_dim: int
  content: str = "gaussian"
  spatial: str = "gaussian"
  bandwidth_range: tuple[float, float] = (1.0, 64.0)
  attention_path: str = "auto"  # not `path`: that is flax's Module.path

  @nn.compact
  def __call__(self, q, k, v, q_pos=None, k_pos=None, *, mask=None, is_causal=False):
    self._check(q, k, v, q_pos)
    heads, head_dim = self.num_heads, self.head_dim
    h_y = jnp.exp(self.param("log_h_y", nn.initializers.constant(0.25 * math.log(head_dim)), (heads,)))
    spatial = self.spatial
    k_pos = q_pos if k_pos is None else k_pos
    spatial_params = {"h_p": None}
    if spatial == "none":
      q_pos = k_pos = None
    else:
      q_pos, k_pos, spatial_params = self._spatial_features(q_pos, k_pos)
    path = self.choose_path(spatial, q_pos, k_pos, mask, is_causal)
    if not self.is_mutable_collection("intermediates"):
      return ops.bilateral_attention(q, k, v, q_pos, k_pos, h_y=h_y, content=self.content, spatial=spatial,
                                     mask=mask, is_causal=is_causal, path=path, **spatial_params)
    if path != "xla":
      raise ValueError(f"attention weights were requested (`intermediates` mutable) but BSA's {path!r} path "
                       "does not form them; ask for attention_path='xla'")
    logits = ops.bilateral_logits(q, k, q_pos, k_pos, h_y=h_y, content=self.content, spatial=spatial,
                                  **spatial_params)
    weights = ops.attention_weights(logits, mask=mask, is_causal=is_causal)
    self.sow("intermediates", "attention_weights", weights)
    return ops.filter_values(weights, v)

  def choose_path(self, spatial, q_pos, k_pos, mask, is_causal) -> str:
    """The `ops.dispatch` path of this call (a method, so that `recorded_bsa_paths` sees it)."""
    return dispatch.choose_path(self.attention_path, target.target_platform(), spatial=spatial, q_pos=q_pos,
                                k_pos=k_pos, mask=mask, is_causal=is_causal)

  def _check(self, q, k, v, q_pos):
    _choose("content", self.content, CONTENT_KERNELS)
    _choose("spatial", self.spatial, BILATERAL_SPATIAL)
    want = (self.num_heads, self.head_dim)
    if q.shape[-2:] != want or k.shape[-2:] != want or v.shape[-2] != self.num_heads:
      raise ValueError(f"BilateralAttention(num_heads={self.num_heads}, head_dim={self.head_dim}) got q, k, v of "
                       f"shapes {q.shape}, {k.shape}, {v.shape}: they must end in (heads, head_dim)")
    if self.spatial != "none" and q_pos is None:
      raise ValueError(f"spatial={self.spatial!r} needs the tokens' positions (q_pos); spatial='none' has none")

  def _spatial_features(self, q_pos, k_pos):
    """(q_pos, k_pos, {h_p, shift}) for the spatial kernel. Bandwidths are learned through their log; a
    `shifted` kernel's displacement is learned as shift / h_p (a head's tap in units of its own bandwidth)."""
    heads, head_dim = self.num_heads, self.head_dim
    kernel = ops.spatial_kernel(self.spatial)
    initial = kernel.init_bandwidth(heads, *self.bandwidth_range, head_dim)
    h_p = jnp.exp(self.param("log_h_p", lambda *_: jnp.log(jnp.asarray(initial, jnp.float32))))
    params = {"h_p": h_p, "shift": None}
    if kernel.init_shift is not None:
      unit_shift = kernel.init_shift(heads, q_pos.shape[-1], initial) / initial[:, None]
      params["shift"] = self.param("shift_per_h_p", lambda *_: jnp.asarray(unit_shift, jnp.float32)) * h_p[:, None]
    if kernel.features == "coordinates":
      return q_pos, k_pos, params
    q_features, k_features = (nn.DenseGeneral((heads, head_dim), use_bias=False, name=name)(rows)
                              for name, rows in (("pos_query", q_pos), ("pos_key", k_pos)))
    return q_features, k_features, params


class MultiHeadAttention(nn.Module):
  """Self-attention over x [batch, len, model_dim] -> [batch, len, model_dim]: the q, k, v projections,
  then BSA (`BilateralAttention`) or a baseline's logits (standard, ALiBi, RoPE), then the output one.

  coords [len, c]: token places (NaN rows: no place). pos_embed [len, dim]: the position table rows, for
  spatial `dot`. mask: boolean, broadcastable to [batch, heads, len, len], True = attend.
  boost: (x0, t) for the `boost` GRC form: values (1 - t) V(x) + t (V(x0) - V(x)).
  cache_index: decoding (causal only; the `cache` collection mutable): x's tokens sit at positions
  cache_index.. and their keys, values and key positions are written into this layer's cache of max_length
  slots there; each query attends to the cached keys up to itself.
  """
  config: TransformerConfig

  @nn.compact
  def __call__(self, x, *, coords, pos_embed=None, mask=None, is_causal=False, boost=None, cache_index=None):
    cfg = self.config
    if x.shape[-1] != cfg.model_dim:
      raise ValueError(f"MultiHeadAttention of model_dim {cfg.model_dim} got an input of width {x.shape[-1]}")
    dtype = jnp.dtype(cfg.dtype)
    heads, head_dim = cfg.num_heads, cfg.head_dim
    query, key, value = (nn.DenseGeneral((heads, head_dim), dtype=dtype, name=name)
                         for name in ("query", "key", "value"))
    q, k, v = query(x), key(x), value(x)
    if boost is not None:
      x0, t = boost
      v = ops.boosted_values(v, value(x0), t)
    if cfg.attention == "rope":
      q, k = ops.apply_rope(q, coords, cfg.rope_base), ops.apply_rope(k, coords, cfg.rope_base)
    bsa_positions = None if cfg.spatial == "none" else pos_embed if cfg.uses_position_table else coords
    q_pos = {"bilateral": bsa_positions, "alibi": coords}.get(cfg.attention)
    k_pos = q_pos
    if cache_index is not None:
      k, v, k_pos, mask = self._cached(k, v, q_pos, mask, is_causal, cache_index)
      is_causal = False  # in the cache's mask
    if cfg.attention == "bilateral":
      bsa = BilateralAttention(heads, head_dim, cfg.content, cfg.spatial, cfg.spatial_bandwidth_range,
                               cfg.attention_path, name="bilateral")
      out = bsa(q, k, v, q_pos, k_pos, mask=mask, is_causal=is_causal)
    else:
      bias = ops.alibi_bias(q_pos, k_pos, ops.alibi_slopes(heads)) if cfg.attention == "alibi" else None
      weights = ops.attention_weights(ops.standard_logits(q, k, bias=bias), mask=mask, is_causal=is_causal)
      self.sow("intermediates", "attention_weights", weights)
      out = ops.filter_values(weights, v)
    return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), dtype=dtype, name="out")(out)

  def _cached(self, k, v, k_pos, mask, is_causal, index):
    """Writes k, v [b, n, h, d] and the keys' positions [n, ...] into the cache at `index` -> (the cached
    keys, values [b, max_length, h, d], key positions [max_length, ...], and the mask [1, 1, n, max_length] of
    the keys each query attends to: those cached up to itself)."""
    if not is_causal or mask is not None:
      raise ValueError("a key-value cache is for causal decoding without a padding mask")
    slots = self.config.max_length

    def write(name, value, axis):
      shape = value.shape[:axis] + (slots,) + value.shape[axis + 1:]
      cached = self.variable("cache", name, jnp.zeros, shape, value.dtype)
      cached.value = jax.lax.dynamic_update_slice_in_dim(cached.value, value, index, axis)
      return cached.value

    attend = jnp.arange(slots)[None, :] <= index + jnp.arange(k.shape[1])[:, None]
    k, v = write("cached_key", k, 1), write("cached_value", v, 1)
    k_pos = None if k_pos is None else write("cached_key_positions", jnp.asarray(k_pos), 0)
    return k, v, k_pos, attend[None, None]


@contextlib.contextmanager
def recorded_bsa_paths():
  """Yields {BilateralAttention module path: its BSA path}, filled as BSA layers are traced (init included)
  inside the `with`, e.g. {"transformer/block_0/attention/bilateral": "folded"}; layers in call order."""
  paths = {}

  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, BilateralAttention) and context.method_name == "choose_path":
      paths["/".join(context.module.path)] = out
    return out

  with nn.intercept_methods(intercept):
    yield paths


class Mlp(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x):
    dtype = jnp.dtype(self.config.dtype)
    h = nn.gelu(nn.Dense(self.config.mlp_dim, dtype=dtype, name="fc1")(x))
    return nn.Dense(x.shape[-1], dtype=dtype, name="fc2")(h)


class Block(nn.Module):
  """One layer: y [batch, len, dim], y0 (the stack input) -> y [batch, len, dim].

  Each sublayer's residual is standard (y + F(y)) or, if listed in `grc_sublayers`, generalized with its
  own learnable t = sigmoid(theta) (a scalar, or one per channel; for `boost`, the channels of the value
  space, heads x head_dim). drop_path: this layer's stochastic-depth rate, applied to each branch F(y).
  is_causal and deterministic are attributes, not call arguments, so that `nn.remat` sees no Python bools.
  """
  config: TransformerConfig
  drop_path: float = 0.0
  is_causal: bool = False
  deterministic: bool = True

  def _t(self, name):
    cfg = self.config
    shape = (cfg.model_dim,) if cfg.grc_per_channel else ()
    theta_init = nn.initializers.constant(math.log(cfg.grc_t_init / (1.0 - cfg.grc_t_init)))
    return jax.nn.sigmoid(self.param(name, theta_init, shape))

  @nn.compact
  def __call__(self, y, y0, *, coords, pos_embed, mask, cache_index=None):
    cfg, is_causal, deterministic = self.config, self.is_causal, self.deterministic
    dtype = jnp.dtype(cfg.dtype)
    drop = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)
    # One keep-or-drop draw per example (broadcast over tokens and channels), scaled by 1 / keep.
    drop_branch = nn.Dropout(self.drop_path, broadcast_dims=(1, 2), deterministic=deterministic)
    grc = set(cfg.grc_sublayers) if cfg.residual == "grc" else set()
    attention = MultiHeadAttention(cfg, name="attention")
    mlp = Mlp(cfg, name="mlp")

    for sublayer in ("attention", "mlp"):
      norm = nn.LayerNorm(dtype=dtype, name=f"norm_{sublayer}")
      h = norm(y) if cfg.norm == "pre" else y
      t = self._t(f"grc_theta_{sublayer}") if sublayer in grc else None
      if sublayer == "mlp":
        fy = mlp(h)
      elif t is not None and cfg.grc_form == "boost":
        h0 = norm(y0) if cfg.norm == "pre" else y0
        fy = attention(h, coords=coords, pos_embed=pos_embed, mask=mask, is_causal=is_causal,
                       boost=(h0, t.reshape(cfg.num_heads, cfg.head_dim) if t.ndim else t), cache_index=cache_index)
        t = None  # boosting happened inside the filter; the residual itself is the standard one
      else:
        fy = attention(h, coords=coords, pos_embed=pos_embed, mask=mask, is_causal=is_causal, cache_index=cache_index)
      fy = drop_branch(drop(fy))
      y = y + fy if t is None else ops.generalized_residual(y, fy, y0, t)
      if cfg.norm == "post":
        y = norm(y)
    return y


REMAT_POLICIES = {"full": jax.checkpoint_policies.nothing_saveable, "dots": jax.checkpoint_policies.dots_saveable,
                  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def remat_block(remat: str) -> type[Block]:
  """Block, or Block under `nn.remat` with the policy `remat` names (TransformerConfig.remat); the
  parameter tree is the same either way."""
  if remat == "none":
    return Block
  return nn.remat(Block, policy=REMAT_POLICIES[remat])


def _concrete(index, traced: int) -> int:
  """A position as a Python int, or `traced` when it is only known at run time (under jit)."""
  try:
    return int(index)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
    return traced


class Transformer(nn.Module):
  """The stack: token embeddings x [batch, len, dim] at coords [len, c] -> [batch, len, dim].

  mask: boolean padding mask [batch, len] (True = real token) or None. Y_0 is x plus the position table
  for the additive baseline, x itself otherwise; it is kept for every layer's GRC. y0_noise [batch, len,
  dim] (the SNR diagnostics): added to Y_0, after the position table. cache_index: causal decoding with a
  key-value cache (`MultiHeadAttention`): x's tokens sit at positions cache_index.. of the sequence.
  """
  config: TransformerConfig

  def _table(self, shape):
    """A position table [..., rows, dim]: learned, or Vaswani et al.'s sinusoids."""
    if self.config.position_table == "learned":
      return self.param("position_table", nn.initializers.normal(0.02), shape)
    return jnp.broadcast_to(ops.sinusoidal_table(*shape[-2:]), shape)

  @nn.compact
  def __call__(self, x, *, coords, mask=None, is_causal=False, deterministic=True, y0_noise=None, cache_index=None):
    cfg = self.config
    length = x.shape[1]
    if length > cfg.max_length:
      raise ValueError(f"sequence length {length} exceeds max_length {cfg.max_length}")
    if cache_index is not None and _concrete(cache_index, 0) + length > cfg.max_length:  # traced: the caller's
      raise ValueError(f"decoding {length} tokens at position {cache_index} overflows the cache of max_length "
                       f"{cfg.max_length}")
    pos_embed = None
    if cfg.additive_positions:  # rows by token index, the standard baseline's table
      table = self._table((cfg.max_length, cfg.model_dim))
      pos_embed = table[:length] if cache_index is None else jax.lax.dynamic_slice_in_dim(table, cache_index, length)
    elif cfg.uses_position_table:  # BSA `dot`: rows by coordinates, one table per axis
      axes = coords.shape[-1]
      if cfg.model_dim % axes or (cfg.position_table == "sinusoidal" and cfg.model_dim // axes % 2):
        raise ValueError(f"model_dim {cfg.model_dim} does not split into {axes} position tables")
      tables = self._table((axes, cfg.max_length, cfg.model_dim // axes))
      placeless = self.param("placeless_position", nn.initializers.normal(0.02), (cfg.model_dim,))
      pos_embed = nn.LayerNorm(name="position_norm")(ops.coordinate_table(tables, coords, placeless))  # as TUPE
    y0 = x + pos_embed if cfg.additive_positions else x
    y0 = y0 if y0_noise is None else y0 + y0_noise.astype(y0.dtype)
    y0 = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)(y0.astype(jnp.dtype(cfg.dtype)))
    attention_mask = None if mask is None else mask[:, None, None, :]
    self.sow("intermediates", "hidden_states", y0)
    y = y0
    block_type = remat_block(cfg.remat)
    for layer in range(cfg.num_layers):
      block = block_type(cfg, cfg.drop_path(layer), is_causal=is_causal, deterministic=deterministic,
                         name=f"block_{layer}")
      y = block(y, y0, coords=coords, pos_embed=pos_embed, mask=attention_mask, cache_index=cache_index)
      self.sow("intermediates", "hidden_states", y)
    if cfg.norm == "pre":
      y = nn.LayerNorm(dtype=jnp.dtype(cfg.dtype), name="norm_final")(y)
    return y
