"""Pure-jax math of BSA and GRC: the public functional API (no Flax)."""
from bilateral_jax.ops.adaptive import (AdaptiveSoftmax, adaptive_embed, adaptive_log_probs,
                                        adaptive_target_log_probs, cluster_bounds, cluster_dims)
from bilateral_jax.ops.attention import (attention_weights, causal_mask, explicit_bilateral_attention,
                                         filter_values, standard_attention, standard_logits)
from bilateral_jax.ops.dispatch import MASK_LAYOUTS, bilateral_attention
from bilateral_jax.ops.kernels import (CONTENT_KERNELS, SPATIAL, SPATIAL_KERNELS, SpatialKernel,
                                       bilateral_logits, content_logits, geometric_bandwidths, spatial_kernel,
                                       spatial_logits)
from bilateral_jax.ops.positions import (alibi_bias, alibi_slopes, apply_rope, coordinate_table,
                                         grid_coordinates, prepend_placeless, sequence_coordinates,
                                         sinusoidal_table)
from bilateral_jax.ops.residual import boosted_values, generalized_residual
