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
from bilateral_jax.models.config import TransformerConfig
from bilateral_jax.ops import dispatch, target


class MultiHeadAttention(nn.Module):
  """Self-attention over x [batch, len, dim] -> [batch, len, dim].

  coords [len, c]: token places (NaN rows: no place). pos_embed [len, dim]: the position table rows, for
  spatial `dot`. mask: boolean, broadcastable to [batch, heads, len, len], True = attend.
  boost: (x0, t) for the `boost` GRC form: values (1 - t) V(x) + t (V(x0) - V(x)).
  """
  config: TransformerConfig

  @nn.compact
  def __call__(self, x, *, coords, pos_embed=None, mask=None, is_causal=False, boost=None):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    heads, head_dim = cfg.num_heads, cfg.head_dim

    query, key, value = (nn.DenseGeneral((heads, head_dim), dtype=dtype, name=name)
                         for name in ("query", "key", "value"))
    q, k, v = query(x), key(x), value(x)
    if boost is not None:
      x0, t = boost
      v = ops.boosted_values(v, value(x0), t)

    out_projection = nn.DenseGeneral(x.shape[-1], axis=(-2, -1), dtype=dtype, name="out")
    if cfg.attention == "bilateral":
      h_y = jnp.exp(self.param("log_h_y", nn.initializers.constant(cfg.initial_log_h_y), (heads,)))
      q_pos, k_pos, spatial_params = self._spatial_features(coords, pos_embed)
      spatial = None if q_pos is None else cfg.spatial
      path = self.bsa_path(spatial, q_pos, k_pos, mask, is_causal)
      if path != "xla" and not self.is_mutable_collection("intermediates"):  # weights to sow: explicit path
        return out_projection(dispatch.PATHS[path](q, k, v, q_pos, k_pos, h_y=h_y, content=cfg.content,
                                                   spatial=spatial, mask=mask, is_causal=is_causal,
                                                   **spatial_params))
      logits = ops.bilateral_logits(q, k, q_pos, k_pos, h_y=h_y, content=cfg.content, spatial=cfg.spatial,
                                    **spatial_params)
    elif cfg.attention == "alibi":
      logits = ops.standard_logits(q, k, bias=ops.alibi_bias(coords, coords, ops.alibi_slopes(heads)))
    elif cfg.attention == "rope":
      logits = ops.standard_logits(ops.apply_rope(q, coords), ops.apply_rope(k, coords))
    else:
      logits = ops.standard_logits(q, k)

    weights = ops.attention_weights(logits, mask=mask, is_causal=is_causal)
    self.sow("intermediates", "attention_weights", weights)
    return out_projection(ops.filter_values(weights, v))

  def bsa_path(self, spatial, q_pos, k_pos, mask, is_causal) -> str:
    """The `ops.dispatch` path of this call (a method, so that `recorded_bsa_paths` sees it)."""
    return dispatch.choose_path(self.config.attention_implementation, target.target_platform(), spatial=spatial,
                                q_pos=q_pos, k_pos=k_pos, mask=mask, is_causal=is_causal)

  def _spatial_features(self, coords, pos_embed):
    """(q_pos, k_pos, {h_p, shift}) for the BSA spatial kernel; (None, None, {h_p: None}) for `none`.

    Bandwidths are learned through their log, initialised as the kernel's spec says; a `shifted`
    kernel's displacement is learned as shift / h_p (a head's tap in units of its own bandwidth).
    """
    cfg = self.config
    if cfg.spatial == "none":
      return None, None, {"h_p": None}
    kernel = ops.spatial_kernel(cfg.spatial)
    low, high = cfg.spatial_bandwidth_range
    initial = kernel.init_bandwidth(cfg.num_heads, low, high, cfg.head_dim)
    h_p = jnp.exp(self.param("log_h_p", lambda *_: jnp.log(jnp.asarray(initial, jnp.float32))))
    params = {"h_p": h_p, "shift": None}
    if kernel.init_shift is not None:
      unit_shift = kernel.init_shift(cfg.num_heads, coords.shape[-1], initial) / initial[:, None]
      params["shift"] = self.param("shift_per_h_p", lambda *_: jnp.asarray(unit_shift, jnp.float32)) * h_p[:, None]
    if kernel.features == "coordinates":
      return coords, coords, params
    features = [nn.DenseGeneral((cfg.num_heads, cfg.head_dim), use_bias=False, name=name)(pos_embed)
                for name in ("pos_query", "pos_key")]
    return features[0], features[1], params


@contextlib.contextmanager
def recorded_bsa_paths():
  """Yields {attention module path: its BSA path}, filled as BSA layers are traced (init included) inside
  the `with`, e.g. {"transformer/block_0/attention": "folded"}; layers in call order."""
  paths = {}

  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, MultiHeadAttention) and context.method_name == "bsa_path":
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
  def __call__(self, y, y0, *, coords, pos_embed, mask):
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
                       boost=(h0, t.reshape(cfg.num_heads, cfg.head_dim) if t.ndim else t))
        t = None  # boosting happened inside the filter; the residual itself is the standard one
      else:
        fy = attention(h, coords=coords, pos_embed=pos_embed, mask=mask, is_causal=is_causal)
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


class Transformer(nn.Module):
  """The stack: token embeddings x [batch, len, dim] at coords [len, c] -> [batch, len, dim].

  mask: boolean padding mask [batch, len] (True = real token) or None. Y_0 is x plus the position table
  for the additive baseline, x itself otherwise; it is kept for every layer's GRC. y0_noise [batch, len,
  dim] (the SNR diagnostics): added to Y_0, after the position table.
  """
  config: TransformerConfig

  def _table(self, shape):
    """A position table [..., rows, dim]: learned, or Vaswani et al.'s sinusoids."""
    if self.config.position_table == "learned":
      return self.param("position_table", nn.initializers.normal(0.02), shape)
    return jnp.broadcast_to(ops.sinusoidal_table(*shape[-2:]), shape)

  @nn.compact
  def __call__(self, x, *, coords, mask=None, is_causal=False, deterministic=True, y0_noise=None):
    cfg = self.config
    length = x.shape[1]
    if length > cfg.max_length:
      raise ValueError(f"sequence length {length} exceeds max_length {cfg.max_length}")
    pos_embed = None
    if cfg.additive_positions:  # rows by token index, the standard baseline's table
      pos_embed = self._table((cfg.max_length, cfg.model_dim))[:length]
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
      y = block(y, y0, coords=coords, pos_embed=pos_embed, mask=attention_mask)
      self.sow("intermediates", "hidden_states", y)
    if cfg.norm == "pre":
      y = nn.LayerNorm(dtype=jnp.dtype(cfg.dtype), name="norm_final")(y)
    return y
