"""Flax Linen modules of BSA/GRC Transformers and the backbone registry."""
from bilateral_jax.models.backbones import (MODELS, CausalLM, SequenceClassifier, VisionTransformer,
                                            build_model)
from bilateral_jax.models.config import TransformerConfig
from bilateral_jax.models.transformer import Block, MultiHeadAttention, Transformer
