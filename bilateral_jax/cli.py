"""Shared command-line set-up of train.py and eval.py: the config flag, logging and jax.distributed."""
from __future__ import annotations

import logging
import pathlib

import jax
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"
config_flags.DEFINE_config_file("config", str(DEFAULT_CONFIG), "Experiment config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics (default: runs/<config name>).")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for a multi-process run started by hand; with neither this "
                    "nor --multihost the run is single-process.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with the cluster's own settings "
                  "(TPU pods, SLURM, ...).")


def set_up() -> str:
  """Logging and jax.distributed; -> the work directory."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  absl_logging.set_verbosity(absl_logging.WARNING)
  if FLAGS.coordinator_address:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; GPUs/TPUs have their own
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.multihost:
    jax.distributed.initialize()
  return FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS["config"]))


def default_workdir(config_argument: str) -> str:
  """runs/<config name>, or runs/<config name>_<variant> for `configs/x.py:variant`."""
  path, _, variant = config_argument.partition(":")
  return str(pathlib.Path("runs") / (pathlib.Path(path).stem + (f"_{variant}" if variant else "")))
