"""Flax Linen modules of BSA/GRC Transformers and the backbone registry."""
from bilateral_jax.models.backbones import (MODELS, CausalLM, MaskTransformer, Segmenter, SequenceClassifier,
                                            VisionTransformer, build_model, sliding_window_logits)
from bilateral_jax.models.config import TransformerConfig
from bilateral_jax.models.transformer import (BilateralAttention, Block, MultiHeadAttention, Transformer,
                                             recorded_bsa_paths)
