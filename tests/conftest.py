"""Test-wide XLA settings, made before jax is imported anywhere: 8 host CPU devices, and no backend
optimisation passes (test shapes are tiny; this halves compile time and changes no float semantics).

`make test` runs `pytest -n auto tests`, each worker with these 8 devices. A model that several tests read
is trained once per worker (session fixtures such as `trained_tiny_run`), and compiled programs are shared
through one persistent compilation cache for the session and the processes it starts. No test waits on
the clock: each waits for an event (a checkpoint on disk, a log line, a server's answer) and fails saying
which did not happen."""
import os
import tempfile

os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8",
                                    "--xla_backend_optimization_level=0"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["TFDS_DATA_DIR"] = tempfile.mkdtemp(prefix="tfds-")  # built datasets stay out of the home directory
# One persistent compilation cache for the session's workers and the processes they start: the many runs of
# the same tiny configs compile their steps once (set by the first conftest to run, inherited after).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import pytest  # noqa: E402  (after the XLA settings above)


@pytest.fixture(scope="session")
def trained_tiny_run(tmp_path_factory):
  """The default config at test size (`tests.test_training.tiny_config`, keeping 5 checkpoints), trained once
  per test worker -> (config, workdir): steps 1-6, checkpoints at 3 and 6. Read it; copy it before changing it."""
  from bilateral_jax import trainer
  from tests.test_training import tiny_config
  config = tiny_config(**{"train.keep_checkpoints": 5})
  workdir = tmp_path_factory.mktemp("tiny_run") / "run"
  trainer.train_and_evaluate(config, str(workdir))
  return config, workdir
