"""Shared command-line set-up of train.py and eval.py: the config flag, logging and jax.distributed."""
from __future__ import annotations

import logging

import jax
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.", required=True)
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for a multi-process run started by hand; with neither this "
                    "nor --multihost the run is single-process.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with the cluster's own settings "
                  "(TPU pods, SLURM, ...).")


def set_up() -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  absl_logging.set_verbosity(absl_logging.WARNING)
  if FLAGS.coordinator_address:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; GPUs/TPUs have their own
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.multihost:
    jax.distributed.initialize()
