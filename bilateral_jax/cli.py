"""Shared command-line set-up of train.py and eval.py: the config flag, logging, jax.distributed, and
how a run ends: a user error (a bad setting, missing or malformed data, an unusable checkpoint, a
diverged or pre-empted run) is one line on stderr and exit status 2 (pre-empted: 3); a bug keeps its
traceback. --verbose shows the traceback of every error."""
from __future__ import annotations

import logging
import os
import pathlib
import re
import sys
import traceback

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "default.py"
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 3


def _fail(message, status: int = EXIT_USER_ERROR, prefix: str = "error: ") -> None:
  """Ends the process with `message` as one line on stderr."""
  sys.stdout.flush()
  print(prefix + " ".join(str(message).split()), file=sys.stderr, flush=True)
  os._exit(status)  # noqa: SLF001 - also skips jax.distributed's shutdown barrier


try:  # ml_collections applies --config.<field> overrides here, at definition
  config_flags.DEFINE_config_file("config", str(DEFAULT_CONFIG), "Experiment config file (configs/*.py, or "
                                  "configs/x.py:variant); override fields with --config.<field>=<value>.",
                                  lock_config=True)
except (AttributeError, KeyError) as unknown:
  key = re.search(r'instead of "(\w+)"', str(unknown)) or re.search(r"(\w+)", str(unknown))
  named = [arg.split("=")[0][2:] for arg in sys.argv[1:] if arg.startswith("--config.")
           and key and key.group(1) in arg.split("=")[0].split(".")]
  hint = re.search(r'Did you mean "(\w+)"', str(unknown))
  _fail(f"unknown config field {', '.join(named) or (key.group(1) if key else unknown)}"
        + (f" (did you mean {hint.group(1)}?)" if hint else ""))
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics (default: runs/<config name>).")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for a multi-process run started by hand; with neither this "
                    "nor --multihost the run is single-process.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with the cluster's own settings "
                  "(TPU pods, SLURM, ...).")
flags.DEFINE_bool("verbose", False, "Show the full traceback of every error, and INFO logs of the libraries.")


def set_up(host_devices: int = 0, cpu_only: bool = False) -> str:
  """Logging and jax.distributed; host_devices > 0 makes that many CPU devices (a dry run of a bigger
  mesh); cpu_only: use no local accelerator (compiling for a TPU slice). With libtpu installed on a host
  with no accelerator, and no JAX_PLATFORMS set, jax uses the CPU without probing for a TPU (libtpu would
  print its start-up warnings). -> the work directory."""
  import jax  # noqa: PLC0415 - the device count must be set before jax starts its backends
  from bilateral_jax import parallel  # noqa: PLC0415
  if cpu_only or host_devices:
    jax.config.update("jax_platforms", "cpu")
  parallel.skip_tpu_probe_without_accelerators()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  absl_logging.set_verbosity(absl_logging.INFO if FLAGS.verbose else absl_logging.WARNING)
  if not FLAGS.verbose:
    for noisy in ("absl", "tensorflow_datasets", "orbax", "jax"):
      logging.getLogger(noisy).setLevel(logging.WARNING)
  if host_devices:
    jax.config.update("jax_num_cpu_devices", host_devices)
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


def _user_errors() -> tuple[type, ...]:
  from bilateral_jax import checkpointing, runs, trainer  # noqa: PLC0415 - keeps --help fast
  return (checkpointing.CheckpointError, checkpointing.CheckpointMismatch, trainer.TrainingDiverged,
          trainer.ResumeRefused, runs.WorkdirInUse)


def _raised_by_project(error: BaseException) -> bool:
  """Whether the project's own code raised it on purpose (a checked setting or data file), rather than a
  library failing inside it."""
  frames = traceback.extract_tb(error.__traceback__)
  if not frames:
    return False
  origin = pathlib.Path(frames[-1].filename).resolve()
  return ROOT in origin.parents and ".venv" not in origin.parts and "site-packages" not in origin.parts


def run(main) -> None:
  """app.run(main), ending user errors with one line and exit status 2 (3 when pre-empted)."""

  def guarded(argv):
    from bilateral_jax.trainer import Preempted  # noqa: PLC0415
    try:
      return main(argv)
    except Exception as error:  # noqa: BLE001
      if FLAGS.verbose:
        raise
      if isinstance(error, Preempted):
        _fail(error, EXIT_PREEMPTED, prefix="")
      user = isinstance(error, _user_errors()) or (
          isinstance(error, (ValueError, FileNotFoundError)) and _raised_by_project(error))
      if not user:
        raise
      _fail(str(error))

  app.run(guarded, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag value or an unloadable config file as one line and status 2."""
  try:
    remaining = FLAGS(argv)
  except flags.Error as error:
    _fail(error)
  try:
    FLAGS.config.get("seed")
  except OSError as error:
    _fail(f"cannot load --config {config_flags.get_config_filename(FLAGS['config'])}: "
          + str(error).strip().splitlines()[-1].strip())
  return remaining


def run_config(workdir: str):
  """The config of an existing run: DIR/config.json with the command line's --config.<field> overrides on
  top; `--config FILE` (given explicitly) instead of it; the default config when the run saved none."""
  from bilateral_jax import runs  # noqa: PLC0415
  saved = None if FLAGS["config"].present else runs.load_config(workdir)
  if saved is None:
    return FLAGS.config
  saved.update_from_flattened_dict(config_flags.get_override_values(FLAGS["config"]))
  return saved


def open_run(argv: list[str]):
  """The start of a script that reads a finished or running run (eval.py, generate.py): no positional
  arguments, `set_up` -> (the work directory, its config: `run_config`)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = set_up()
  return workdir, run_config(workdir)


def number(value) -> str:
  """A metric for the console: integers (counts) as integers, the rest with 4 decimals."""
  return str(value) if isinstance(value, int) else f"{value:.4f}"


def define_attack_flags() -> None:
  """The attack flags of eval.py and study.py (`robustness` says what they mean)."""
  flags.DEFINE_list("attacks", [], "Attacks to evaluate: fgsm, pgd, reflect (images and token classifiers: "
                    "the patch grid transposed or the tokens reversed), contamination (language models).")
  flags.DEFINE_list("epsilons", None, "Attack radii in the task's units (images: 1/255; tokens: fractions of the "
                    "mean embedding norm); default: the task's.")
  flags.DEFINE_enum("attack_convention", "normalized", ["normalized", "pixel"],
                    "Images: perturb the normalised input with the model's own predictions as labels, or "
                    "the [0, 1] pixels (clipped) with the true labels.")
  flags.DEFINE_integer("pgd_steps", 20, "PGD steps.")
  flags.DEFINE_float("pgd_step_fraction", 0.15, "PGD step size as a fraction of epsilon.")
  flags.DEFINE_bool("random_start", True, "PGD starts at a uniform random point of the ball.")
  flags.DEFINE_integer("pgd_restarts", 1, "PGD runs from this many random starts; each example keeps the one of "
                       "the highest loss.")
  flags.DEFINE_float("contamination", 0.015, "Fraction of the eligible words swapped (language models).")
  flags.DEFINE_enum("replacement", "oov", ["oov", "random"], "Contamination: a word outside the vocabulary, or "
                    "a random vocabulary word.")


def attack_settings(task, seed: int):
  """-> (attacks, robustness.AttackSettings) from the attack flags; no --attacks: none."""
  from bilateral_jax import robustness  # noqa: PLC0415
  epsilons = task.epsilons if FLAGS.epsilons is None else tuple(float(e) for e in FLAGS.epsilons)
  settings = robustness.AttackSettings(
      epsilons=epsilons, convention=FLAGS.attack_convention, pgd_steps=FLAGS.pgd_steps,
      pgd_step_fraction=FLAGS.pgd_step_fraction, random_start=FLAGS.random_start, pgd_restarts=FLAGS.pgd_restarts,
      contamination=FLAGS.contamination, replacement=FLAGS.replacement, seed=seed)
  return tuple(FLAGS.attacks), settings
