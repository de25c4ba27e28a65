"""bilateral_jax: Bilateral Self-Attention and the Generalized Residual Connection in JAX/Flax."""
