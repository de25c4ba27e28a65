"""The three backbones of the paper's experiments, and the registry that builds them by name."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilateral_jax import ops
from bilateral_jax.models.config import TransformerConfig
from bilateral_jax.models.transformer import Transformer

POOLINGS = ("mean", "cls")


class CausalLM(nn.Module):
  """Causal language model: tokens [batch, len] int -> next-token logits [batch, len, vocab]."""
  config: TransformerConfig
  vocab_size: int
  tie_embeddings: bool = True

  @nn.compact
  def __call__(self, tokens, *, deterministic=True):
    embed = nn.Embed(self.vocab_size, self.config.model_dim, embedding_init=nn.initializers.normal(0.02),
                     name="embed")
    coords = ops.sequence_coordinates(tokens.shape[1])
    y = Transformer(self.config, name="transformer")(embed(tokens), coords=coords, is_causal=True,
                                                     deterministic=deterministic)
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
    x = self.embed(tokens)
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


class Segmenter(nn.Module):
  """Semantic segmentation with a ViT encoder and a linear head (Segmenter's linear decoder):
  images [batch, height, width, channels] -> per-pixel logits [batch, height, width, classes].

  Each patch token is classified, and the patch-grid logits are resized bilinearly to the image size.
  """
  config: TransformerConfig
  num_classes: int
  patch_size: int = 16

  @nn.compact
  def __call__(self, images, *, deterministic=True):
    x, coords = PatchEmbedding(self.config.model_dim, self.patch_size, name="patches")(images)
    y = Transformer(self.config, name="transformer")(x, coords=coords, deterministic=deterministic)
    logits = nn.Dense(self.num_classes, name="head")(y.astype(jnp.float32))
    batch, height, width = images.shape[:3]
    grid = logits.reshape(batch, height // self.patch_size, width // self.patch_size, self.num_classes)
    return jax.image.resize(grid, (batch, height, width, self.num_classes), method="bilinear")


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
