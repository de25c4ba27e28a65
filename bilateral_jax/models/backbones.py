"""The three backbones of the paper's experiments, and the registry that builds them by name."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from bilateral_jax import ops
from bilateral_jax.models.config import TransformerConfig
from bilateral_jax.models.transformer import Transformer

POOLINGS = ("mean", "cls")


@flax.struct.dataclass
class AdaptiveOutput:
  """A causal LM's output with an adaptive softmax: the final hidden states [batch, len, dim] and the
  softmax's arrays, which score targets without [batch, len, vocab] logits (`tasks.language_modeling`)."""
  hidden: jax.Array
  softmax: ops.AdaptiveSoftmax
  chunk: int = flax.struct.field(pytree_node=False, default=32)

  def target_log_probs(self, targets):
    """targets [batch, len] -> (log p(target) [batch, len], the most probable id [batch, len])."""
    return ops.adaptive_target_log_probs(self.hidden, targets, self.softmax, chunk=self.chunk)

  def log_probs(self):
    """[batch, len, vocab]: log p of every word (materialised: small vocabularies only)."""
    return ops.adaptive_log_probs(self.hidden, self.softmax)


def token_scale(config: TransformerConfig, adaptive: bool = False) -> float:
  """What token embeddings are multiplied by before the stack: sqrt(model_dim) for adaptive input
  embeddings (Transformer-XL's and lmtool-fwms' scale) and where a sinusoidal table is added to them (as
  Vaswani et al. build it: embeddings of std 0.02 would be drowned by sinusoids of amplitude 1), else 1."""
  sinusoids = config.additive_positions and config.position_table == "sinusoidal"
  return math.sqrt(config.model_dim) if adaptive or sinusoids else 1.0


class CausalLM(nn.Module):
  """Causal language model: tokens [batch, len] int -> next-token logits [batch, len, vocab].

  adaptive_cutoffs (non-empty): adaptive input embeddings, scaled by sqrt(model_dim), and an adaptive
  softmax tied to them (`ops.adaptive`; Transformer-XL's and lmtool-fwms' `--adaptive`); the final hidden
  states are dropped out (`dropout_rate`) as there, and the output is an `AdaptiveOutput` instead of
  logits. Cutoffs at or beyond the vocabulary are dropped; ids must be ordered by frequency
  (`data.vocabulary_order='frequency'`). adaptive_div_val: cluster i has width model_dim // div_val**i; 1
  is one table [vocab, dim] (`embed`, as without cutoffs) and no projections; above 1 every cluster has a
  table and a projection, the tails' projections tied between input and output, the head's its own (as
  lmtool ties them for WikiText-103). tie_embeddings=False: separate output tables and tail projections.
  adaptive_chunk: positions of each sequence scored at once (memory: local batch x chunk x vocab logits).
  cache_index: decoding with a key-value cache (the `cache` collection mutable; `bilateral_jax.sampling`):
  `tokens` sit at positions cache_index.. of the sequence, after those already cached; cache_index + len
  <= max_length (checked unless traced under jit: the cache's writes would be clamped).
  """
  config: TransformerConfig
  vocab_size: int
  tie_embeddings: bool = True
  adaptive_cutoffs: tuple[int, ...] = ()
  adaptive_div_val: int = 1
  adaptive_chunk: int = 32

  def _stack(self, x, deterministic, cache_index):
    """The Transformer on token embeddings x [batch, len, dim] at positions 0.. or cache_index.."""
    coords = ops.sequence_coordinates(x.shape[1])
    if cache_index is not None:
      coords = coords + jnp.asarray(cache_index, jnp.float32)
    return Transformer(self.config, name="transformer")(x, coords=coords, is_causal=True, deterministic=deterministic,
                                                        cache_index=cache_index)

  def _adaptive(self, tokens, deterministic, cache_index):
    dim, div_val = self.config.model_dim, self.adaptive_div_val
    bounds = ops.cluster_bounds(self.adaptive_cutoffs, self.vocab_size)
    sizes = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
    dims = ops.cluster_dims(dim, div_val, len(sizes))
    normal, zeros = nn.initializers.normal, nn.initializers.zeros
    slices = lambda table: tuple(table[start:end] for start, end in zip(bounds[:-1], bounds[1:]))
    if div_val == 1:
      embed = nn.Embed(self.vocab_size, dim, embedding_init=normal(0.02), name="embed")
      x = embed(tokens)
      table = embed.embedding if self.tie_embeddings else self.param("output_embedding", normal(0.02),
                                                                    (self.vocab_size, dim))
      tables, projections = slices(table), (None,) * len(sizes)
    else:
      embeds = [nn.Embed(size, d, embedding_init=normal(0.02), name=f"embed_{i}")
                for i, (size, d) in enumerate(zip(sizes, dims))]
      in_projections = tuple(self.param(f"projection_{i}", normal(0.01), (d, dim)) for i, d in enumerate(dims))
      x = ops.adaptive_embed(tokens, tuple(e.embedding for e in embeds), in_projections)
      tables = tuple(e.embedding if self.tie_embeddings else self.param(f"output_table_{i}", normal(0.02), (size, d))
                     for i, (e, size, d) in enumerate(zip(embeds, sizes, dims)))
      projections = (self.param("head_projection", normal(0.01), (dims[0], dim)),) + tuple(
          in_projections[i] if self.tie_embeddings else self.param(f"output_projection_{i}", normal(0.01), (d, dim))
          for i, d in enumerate(dims) if i)
    y = self._stack(x * token_scale(self.config, adaptive=True), deterministic, cache_index)
    y = nn.Dropout(self.config.dropout_rate, deterministic=deterministic)(y.astype(jnp.float32))
    softmax = ops.AdaptiveSoftmax(
        tables=tables, bias=slices(self.param("output_bias", zeros, (self.vocab_size,))), projections=projections,
        cluster_weight=self.param("cluster_weight", normal(0.02), (len(sizes) - 1, dims[0])),
        cluster_bias=self.param("cluster_bias", zeros, (len(sizes) - 1,)))
    return AdaptiveOutput(hidden=y, softmax=softmax, chunk=self.adaptive_chunk)

  @nn.compact
  def __call__(self, tokens, *, deterministic=True, cache_index=None):
    if self.adaptive_cutoffs:
      return self._adaptive(tokens, deterministic, cache_index)
    embed = nn.Embed(self.vocab_size, self.config.model_dim, embedding_init=nn.initializers.normal(0.02),
                     name="embed")
    y = self._stack(embed(tokens) * token_scale(self.config), deterministic, cache_index)
    if self.tie_embeddings:
      return embed.attend(y.astype(jnp.float32))
    return nn.Dense(self.vocab_size, name="head")(y.astype(jnp.float32))


INTERACTIONS = ("concat", "nli")


class SequenceClassifier(nn.Module):
  """LRA-style classifier: tokens [batch, len] (0 = padding) -> logits [batch, classes].

  pooling: `mean` over real tokens, or `cls`, a prepended summary token with no place (no spatial term).
  head_hidden: widths of the ReLU layers between the pooled features and the logits (LRA's
    `classifier_head`: (mlp_dim,); its `classifier_head_dual`: (mlp_dim, mlp_dim // 2)).
  two_tower: tokens [batch, 2, len] (LRA Retrieval): both documents share the encoder; the head sees
    `interaction` of the pooled u, v: `concat` [u, v] (LRA's code) or `nli` [u, v, u * v, u - v].
  """
  config: TransformerConfig
  vocab_size: int
  num_classes: int
  pooling: str = "mean"
  head_hidden: tuple[int, ...] = ()
  two_tower: bool = False
  interaction: str = "nli"

  def setup(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling={self.pooling!r} is not one of: {', '.join(POOLINGS)}")
    if self.interaction not in INTERACTIONS:
      raise ValueError(f"interaction={self.interaction!r} is not one of: {', '.join(INTERACTIONS)}")
    self.embed = nn.Embed(self.vocab_size, self.config.model_dim,
                          embedding_init=nn.initializers.normal(0.02))
    self.transformer = Transformer(self.config)
    if self.pooling == "cls":
      self.cls_token = self.param("cls_token", nn.initializers.zeros, (1, 1, self.config.model_dim))
    self.hidden = [nn.Dense(width) for width in self.head_hidden]
    self.head = nn.Dense(self.num_classes)

  def encode(self, tokens, deterministic=True):
    """tokens [batch, len] -> pooled features [batch, dim]."""
    mask = tokens != 0
    x = self.embed(tokens) * token_scale(self.config)
    coords = ops.sequence_coordinates(tokens.shape[1])
    if self.pooling == "cls":
      x = jnp.concatenate([jnp.broadcast_to(self.cls_token, (x.shape[0], 1, x.shape[-1])), x], axis=1)
      coords = ops.prepend_placeless(coords, 1)
      mask = jnp.concatenate([jnp.ones_like(mask[:, :1]), mask], axis=1)
    y = self.transformer(x, coords=coords, mask=mask, deterministic=deterministic).astype(jnp.float32)
    if self.pooling == "cls":
      return y[:, 0]
    weights = mask[..., None].astype(y.dtype)
    return jnp.sum(y * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)

  def __call__(self, tokens, *, deterministic=True):
    if not self.two_tower:
      features = self.encode(tokens, deterministic)
    else:
      if tokens.ndim != 3 or tokens.shape[1] != 2:
        raise ValueError(f"two_tower takes tokens [batch, 2, len], got {tokens.shape}")
      batch = tokens.shape[0]
      pooled = self.encode(tokens.reshape(2 * batch, -1), deterministic).reshape(batch, 2, -1)
      u, v = pooled[:, 0], pooled[:, 1]
      features = jnp.concatenate([u, v] + ([u * v, u - v] if self.interaction == "nli" else []), axis=-1)
    for layer in self.hidden:
      features = nn.relu(layer(features))
    return self.head(features)


class PatchEmbedding(nn.Module):
  """images [batch, height, width, channels] -> patch tokens [batch, rows * cols, dim] and their (row, col)
  coordinates [rows * cols, 2] on the patch grid."""
  dim: int
  patch_size: int

  @nn.compact
  def __call__(self, images):
    p = self.patch_size
    if images.shape[1] % p or images.shape[2] % p:
      raise ValueError(f"image size {images.shape[1:3]} is not divisible by patch_size {p}")
    patches = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", name="patch_embed")(images)
    rows, cols = patches.shape[1:3]
    return patches.reshape(patches.shape[0], rows * cols, -1), ops.grid_coordinates(rows, cols)


class VisionTransformer(nn.Module):
  """ViT/DeiT classifier: images [batch, height, width, channels] -> logits [batch, classes].

  Patches carry their (row, col) on the patch grid; the CLS token has no place.
  """
  config: TransformerConfig
  num_classes: int
  patch_size: int = 4
  pooling: str = "cls"

  @nn.compact
  def __call__(self, images, *, deterministic=True):
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling={self.pooling!r} is not one of: {', '.join(POOLINGS)}")
    x, coords = PatchEmbedding(self.config.model_dim, self.patch_size, name="patches")(images)
    if self.pooling == "cls":
      cls = self.param("cls_token", nn.initializers.zeros, (1, 1, x.shape[-1]))
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)
      coords = ops.prepend_placeless(coords, 1)
    y = Transformer(self.config, name="transformer")(x, coords=coords, deterministic=deterministic)
    pooled = y[:, 0] if self.pooling == "cls" else jnp.mean(y, axis=1)
    return nn.Dense(self.num_classes, name="head")(pooled.astype(jnp.float32))


class MaskTransformer(nn.Module):
  """Segmenter's mask-transformer decoder: patch features [batch, patches, dim_enc] at coords [patches, c]
  -> class masks [batch, patches, classes].

  Learned class embeddings [classes, dim] are processed jointly with the projected patch tokens by the
  decoder stack (`config`; the class embeddings have no place); each mask is the scalar product of the
  L2-normalised (projected) patch and class embeddings, then LayerNorm over the classes.
  """
  config: TransformerConfig
  num_classes: int

  @nn.compact
  def __call__(self, features, *, coords, deterministic=True):
    dim, classes = self.config.model_dim, self.num_classes
    x = nn.Dense(dim, name="project_patches_in")(features)
    class_embeddings = self.param("class_embeddings", nn.initializers.normal(0.02), (1, classes, dim))
    x = jnp.concatenate([jnp.broadcast_to(class_embeddings, (x.shape[0], classes, dim)).astype(x.dtype), x], 1)
    y = Transformer(self.config, name="transformer")(x, coords=ops.prepend_placeless(coords, classes),
                                                     deterministic=deterministic).astype(jnp.float32)
    scaled_normal = nn.initializers.normal(dim ** -0.5)
    patches = y[:, classes:] @ self.param("project_patches", scaled_normal, (dim, dim))
    class_features = y[:, :classes] @ self.param("project_classes", scaled_normal, (dim, dim))
    normalise = lambda v: v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    masks = jnp.einsum("bnd,bkd->bnk", normalise(patches), normalise(class_features))
    return nn.LayerNorm(name="mask_norm")(masks)


DECODERS = ("linear", "mask_transformer")


class Segmenter(nn.Module):
  """Semantic segmentation with a ViT encoder (Segmenter): images [batch, height, width, channels] ->
  per-pixel logits [batch, height, width, classes], the patch-grid logits resized bilinearly.

  decoder: `linear` (each patch token classified by one Dense layer) or `mask_transformer`
  (`MaskTransformer`: `decoder_layers` layers of the encoder's stack settings with dropout
  `decoder_dropout` and no stochastic depth, as Segmenter's; positions added to the encoder's input are
  not added again).
  """
  config: TransformerConfig
  num_classes: int
  patch_size: int = 16
  decoder: str = "linear"
  decoder_layers: int = 2
  decoder_dropout: float = 0.1

  @nn.compact
  def __call__(self, images, *, deterministic=True):
    if self.decoder not in DECODERS:
      raise ValueError(f"decoder={self.decoder!r} is not one of: {', '.join(DECODERS)}")
    x, coords = PatchEmbedding(self.config.model_dim, self.patch_size, name="patches")(images)
    y = Transformer(self.config, name="transformer")(x, coords=coords, deterministic=deterministic)
    if self.decoder == "linear":
      logits = nn.Dense(self.num_classes, name="head")(y.astype(jnp.float32))
    else:
      cfg = self.config
      stack = dataclasses.replace(cfg, num_layers=self.decoder_layers, max_length=cfg.max_length + self.num_classes,
                                  position_table="none" if cfg.additive_positions else cfg.position_table,
                                  dropout_rate=self.decoder_dropout, drop_path_rate=0.0)
      logits = MaskTransformer(stack, self.num_classes, name="decoder")(y, coords=coords, deterministic=deterministic)
    batch, height, width = images.shape[:3]
    grid = logits.reshape(batch, height // self.patch_size, width // self.patch_size, self.num_classes)
    return jax.image.resize(grid, (batch, height, width, self.num_classes), method="bilinear")


def sliding_window_logits(segment: Callable[[jnp.ndarray], jnp.ndarray], images, sizes, *, window: int,
                          stride: int) -> jnp.ndarray:
  """Segmenter's sliding-window inference: images [batch, H, W, c] whose content is the top-left
  sizes [batch, 2] (height, width; the rest is padding) -> logits [batch, H, W, classes], the mean over the
  windows covering each pixel (0 where no window reaches).

  Windows are window x window, with top-left corners at 0, stride, 2 stride, ... while the window stays
  inside the content, and a last one aligned to the content's far edge (Segmenter's anchors); content
  smaller than a window gets one window at 0. `segment` maps windows [n, window, window, c] to logits
  [n, window, window, classes]; all windows of the batch go through it at once. Every image gets as many
  windows as the largest content needs; the spare ones repeat the last window and are weighted 0.
  """
  batch, height, width = images.shape[:3]
  if min(height, width) < window:
    raise ValueError(f"images {height} x {width} are smaller than the {window} x {window} window")
  per_axis = [1 + max(0, -(-(extent - window) // stride)) for extent in (height, width)]

  def anchors(extent, count):  # extent [batch] -> corners [batch, count], weights [batch, count]
    k = jnp.arange(count)
    last = jnp.maximum(extent - window, 0)
    used = k <= -(-last // stride)[:, None]  # windows before the last one, and the last one
    return jnp.minimum(k * stride, last[:, None]), used

  rows, row_used = anchors(sizes[:, 0], per_axis[0])
  cols, col_used = anchors(sizes[:, 1], per_axis[1])
  corners = jnp.stack(jnp.broadcast_arrays(rows[:, :, None], cols[:, None, :]), -1).reshape(batch, -1, 2)
  used = (row_used[:, :, None] & col_used[:, None, :]).reshape(batch, -1).astype(jnp.float32)
  crop = lambda image, corner: jax.lax.dynamic_slice(image, (corner[0], corner[1], 0),
                                                     (window, window, image.shape[-1]))
  crops = jax.vmap(jax.vmap(crop, in_axes=(None, 0)))(images, corners)  # [batch, windows, window, window, c]
  logits = segment(crops.reshape((-1,) + crops.shape[2:])).astype(jnp.float32)
  logits = logits.reshape(crops.shape[:2] + logits.shape[1:])

  def merge(window_logits, image_corners, weights):  # one image: sums of logits and window counts
    def add(total, item):
      piece, corner, weight = item
      start = (corner[0], corner[1], 0)
      update = jnp.concatenate([piece, jnp.ones(piece.shape[:2] + (1,), piece.dtype)], -1) * weight
      current = jax.lax.dynamic_slice(total, start, update.shape)
      return jax.lax.dynamic_update_slice(total, current + update, start), None

    total = jnp.zeros((height, width, window_logits.shape[-1] + 1), jnp.float32)
    total, _ = jax.lax.scan(add, total, (window_logits, image_corners, weights))
    return total[..., :-1] / jnp.maximum(total[..., -1:], 1.0)

  return jax.vmap(merge)(logits, corners, used)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lm": CausalLM,
    "classifier": SequenceClassifier,
    "vit": VisionTransformer,
    "segmenter": Segmenter,
}


def build_model(name: str, transformer: dict[str, Any] | TransformerConfig, **kwargs) -> nn.Module:
  """Builds the backbone registered as `name` with the given stack settings and backbone fields."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
  config = transformer if isinstance(transformer, TransformerConfig) else TransformerConfig(**transformer)
  return MODELS[name](config, **kwargs)
