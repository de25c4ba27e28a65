"""Test-wide XLA settings, made before jax is imported anywhere: 8 host CPU devices, and no backend
optimisation passes (test shapes are tiny; this halves compile time and changes no float semantics)."""
import os
import tempfile

os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8",
                                    "--xla_backend_optimization_level=0"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["TFDS_DATA_DIR"] = tempfile.mkdtemp(prefix="tfds-")  # built datasets stay out of the home directory
