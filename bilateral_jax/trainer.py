"""The training loop: the jitted train step of an `experiments.Experiment` over its device mesh, Orbax
resume, pre-emption, evaluation and metrics.

`train_and_evaluate(config, workdir)` is what `train.py` runs; `evaluate_checkpoint` is what `eval.py`
runs. Both work the same on one CPU, several devices, or several processes (`jax.distributed`).
"""
from __future__ import annotations

import collections
import logging
import math
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from bilateral_jax import checkpointing, console, parallel, robustness, runs, storage
from bilateral_jax.checkpointing import Checkpointer
from bilateral_jax.data import core, pipeline, sources
from bilateral_jax.experiments import LENGTHS, Experiment, at_eval_length, check_settings, input_workers
from bilateral_jax.metric_writer import MetricWriter
from bilateral_jax.steps import TrainState


class TrainingDiverged(RuntimeError):
  """The training loss stopped being finite."""


def to_host(metrics: dict) -> dict:
  """Device metrics -> Python floats (scalars) and lists of floats (per-head summaries)."""
  host = jax.device_get(metrics)
  return {name: (float(value) if np.ndim(value) == 0 else np.round(np.asarray(value, np.float64), 5).tolist())
          for name, value in host.items()}


class Preempted(RuntimeError):
  """SIGTERM (or the cluster's preemption notice) stopped the run after saving."""


class ResumeRefused(ValueError):
  """The workdir's checkpoint cannot continue under the config given now."""


class _Preemption:
  """Whether to save and stop now. One process: SIGTERM sets a flag the loop reads. Several processes:
  JAX's preemption service (started by jax.distributed) takes the notice on any host and names one
  step at which every host stops, so they all save the same step."""

  def __init__(self):
    self.multiprocess = jax.process_count() > 1
    self.requested = False
    if not self.multiprocess:
      self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def reached(self, step: int) -> bool:
    """Call once per step, on every process."""
    if self.multiprocess:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self):
    if not self.multiprocess:
      signal.signal(signal.SIGTERM, self.previous)


def _non_finite(metrics: dict) -> list[str]:
  values = lambda v: v if isinstance(v, list) else [v]
  return [name for name, value in metrics.items()
          if any(isinstance(x, float) and not math.isfinite(x) for x in values(value))]


def _check_finite(step: int, metrics: dict, checkpointer: Checkpointer, what: str) -> None:
  bad = _non_finite(metrics)
  if bad:
    checkpointer.wait()
    latest = checkpointer.latest_step()
    kept = f"the last good checkpoint (step {latest}) is kept" if latest is not None else "no checkpoint was saved"
    raise TrainingDiverged(
        f"non-finite {what} at step {step} ({', '.join(bad)}); training stopped and {kept}. Lower "
        "optimizer.learning_rate or set optimizer.clip_norm (with --fresh_optimizer), then rerun to resume.")


def _lock(workdir: str) -> runs.Lock:
  """Process 0 takes the workdir's lock; every process learns whether it did."""
  lock = runs.Lock(workdir)
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except runs.WorkdirInUse as refused:
      error = refused
  if jax.process_count() > 1 and not bool(multihost_utils.broadcast_one_to_all(np.int32(error is None))):
    raise error or runs.WorkdirInUse(f"{workdir} is in use by another run (process 0 could not lock it)")
  if error:
    raise error
  return lock


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       fresh_optimizer: bool = False) -> dict[str, dict[str, float]]:
  """Trains to `train.num_steps`, resuming from the latest checkpoint in `workdir` that restores; returns
  the final evaluation metrics by split. fresh_optimizer: resume the parameters with a new optimiser
  state (needed when the optimiser's state changes structure, e.g. clip_norm switched on or off)."""
  check_settings(config)  # before any data is built
  experiment = Experiment(config, sources.describe_split(config.data, "train"))
  lock = _lock(workdir)
  try:
    checkpointer = experiment.checkpointer(workdir)
    try:
      return _train(experiment, checkpointer, workdir, fresh_optimizer)
    finally:
      checkpointer.wait()
      checkpointer.close()
  finally:
    lock.release()


def compile_only(config: ml_collections.ConfigDict, workdir: str) -> None:
  """`train.py --dry_run`: compiles the train step from the config alone and prints the start-up summary;
  no data is built or read and nothing is written."""
  experiment = Experiment(config, sources.describe(config))
  console.print_summary(experiment, workdir, *experiment.compile_train_step()[1:], sizes=None)


def _resume(experiment: Experiment, checkpointer: Checkpointer, workdir: str, fresh_optimizer: bool):
  """-> (state, data iterator state or None, progress, step) from the newest checkpoint that restores,
  after refusing what would silently corrupt the run."""
  config = experiment.config
  saved_config = runs.load_config(workdir)
  changed = runs.changes(saved_config, config) if saved_config is not None else {}
  optimizer = experiment.optimizer_structure
  if checkpointer.latest_step() is None:
    state = experiment.init(jax.random.key(config.seed))
    if config.train.init_from:
      state = state.replace(params=initialise_from(experiment, state.params, config.train.init_from))
    return state, None, {"best": None}, 0
  step, params, _, data_state, progress = checkpointer.restore(experiment.abstract_state.params)
  if changed:
    print("resuming with changed settings: " + "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()),
          flush=True)
  if progress.get("batch_size", config.train.batch_size) != config.train.batch_size:
    raise ResumeRefused(f"train.batch_size is {config.train.batch_size} but the checkpoint of step {step} in "
                        f"{workdir} was trained with {progress['batch_size']} (the data position counts batches); "
                        f"use --config.train.batch_size={progress['batch_size']} or a new --workdir")
  if step > config.train.num_steps:
    raise ResumeRefused(f"train.num_steps={config.train.num_steps} is below the checkpoint's step {step} in "
                        f"{workdir}; raise it, or use eval.py to evaluate the checkpoint")
  if progress.get("optimizer", optimizer) != optimizer and not fresh_optimizer:
    fields = [k for k in changed if k.startswith("optimizer.")]
    raise ResumeRefused(f"the optimiser state of step {step} in {workdir} has another structure than this config's "
                        f"({', '.join(fields) or 'optimizer settings'} changed); rerun with --fresh_optimizer "
                        "to continue the parameters with a new optimiser state, or use a new --workdir")
  if fresh_optimizer:
    opt_state = experiment.init_optimizer(params)
    print(f"resumed the parameters of step {step} with a fresh optimiser state", flush=True)
  else:
    opt_state = checkpointer.restore_optimizer(step, experiment.abstract_state.opt_state)
  step_array = jax.jit(lambda: jnp.asarray(step, jnp.int32), out_shardings=experiment.state_sharding.step)()
  state = TrainState(step=step_array, params=params, opt_state=opt_state)
  print(f"resumed from step {step} in {workdir}", flush=True)
  return state, data_state, progress, step


def initialise_from(experiment: Experiment, params, workdir: str):
  """`params` with every leaf whose path and shape match one of `workdir`'s checkpoint (its best, else its
  newest) replaced by that checkpoint's value (e.g. a ViT's encoder in a Segmenter); prints what was
  restored and what stays newly initialised."""
  path, restored, report = checkpointing.restore_matching(workdir, experiment.abstract_state.params,
                                                          parallel.replicated(experiment.mesh))
  if not restored:
    raise ValueError(f"train.init_from={workdir!r}: no parameter of {path} matches this model's (paths and "
                     f"shapes); the checkpoint holds: {', '.join(report['unused'][:8])}")
  flat = flax.traverse_util.flatten_dict(params, sep="/") | restored
  if jax.process_index() == 0:
    by_module = lambda names: ", ".join(f"{module} ({count} arrays)" for module, count in
                                        collections.Counter(name.split("/")[0] for name in names).items())
    values = sum(int(np.prod(value.shape)) for value in restored.values())
    lines = [f"initialised from {path}: {len(restored)} of {len(flat)} parameter arrays ({values:,} values)"]
    if report["not_found"]:
      lines.append(f"  newly initialised, not in the checkpoint: {by_module(report['not_found'])}")
    lines += [f"  newly initialised, shape differs: {name} (checkpoint {a}, here {b})"
              for name, (a, b) in report["shape_differs"].items()]
    if report["unused"]:
      lines.append(f"  not used from the checkpoint: {by_module(report['unused'])}")
    print("\n".join(lines), flush=True)
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def _train(experiment: Experiment, checkpointer: Checkpointer, workdir: str, fresh_optimizer: bool):
  config = experiment.config
  tc = config.train
  train_source = sources.shared_split(config.data, "train")
  batches = pipeline.train_batches(train_source, global_batch=tc.batch_size, seed=config.seed,
                                   process_index=jax.process_index(), process_count=jax.process_count(),
                                   transform=experiment.train_transform, repeats=config.augment.repeats,
                                   workers=input_workers(config))
  eval_sources = {split: sources.shared_split(config.data, split) for split in config.eval.splits}
  state, data_state, progress, step = _resume(experiment, checkpointer, workdir, fresh_optimizer)
  if data_state is not None:
    batches.set_state(data_state)
  progress |= {"batch_size": tc.batch_size, "optimizer": experiment.optimizer_structure}
  if jax.process_index() == 0:
    runs.save_config(config, workdir)
  train_step, compile_seconds, flops, memory = experiment.compile_train_step()
  sizes = {"train": len(train_source)} | {split: len(source) for split, source in eval_sources.items()}
  console.print_summary(experiment, workdir, compile_seconds, flops, memory, sizes)

  writer = MetricWriter(workdir, resume_step=step, config=config)
  preemption = _Preemption()
  bar = console.ProgressBar(step, tc.num_steps)
  final: dict[str, dict[str, float]] = {}
  profile = range(step + 2, step + 2 + tc.profile_steps)  # after the first step: no compilation in the trace
  last_log, last_time = step, time.perf_counter()
  try:
    while step < tc.num_steps:
      if step + 1 == profile.start and profile:
        jax.profiler.start_trace(str(storage.path(workdir) / "profile"))
      state, metrics = train_step(state, parallel.global_batch(next(batches), experiment.mesh))
      step += 1
      if step + 1 == profile.stop and profile:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
      last = step == tc.num_steps
      stopping = preemption.reached(step)  # read once: a signal may arrive anywhere below
      save_now = last or step % tc.checkpoint_every == 0 or stopping
      evaluate_now = last or step % tc.eval_every == 0
      if step % tc.log_every == 0 or save_now or evaluate_now:
        host = to_host(metrics)
        _check_finite(step, host, checkpointer, "training metrics")
        steps_per_s = (step - last_log) / max(time.perf_counter() - last_time, 1e-9)
        host |= {"steps_per_s": steps_per_s, "examples_per_s": steps_per_s * tc.batch_size}
        if experiment.tokens_per_example:
          host["tokens_per_s"] = host["examples_per_s"] * experiment.tokens_per_example
        writer.write(step, "train", host)
        bar.update(step, host)
      if evaluate_now:
        for split, source in eval_sources.items():
          final[split] = experiment.evaluate(state.params, split, source)
          _check_finite(step, final[split], checkpointer, f"{split} metrics")
          writer.write(step, split, final[split])
        value = final[config.eval.splits[0]][tc.best_metric]
        sign = 1 if tc.best_mode == "max" else -1
        if progress["best"] is None or sign * value > sign * progress["best"]:
          progress["best"] = value
          checkpointer.save(step, state.params, state.opt_state, batches.get_state(), progress, best=True)
        writer.plot()
      if save_now:
        checkpointer.save(step, state.params, state.opt_state, batches.get_state(), progress)
      if step % tc.log_every == 0 or save_now or evaluate_now:
        last_log, last_time = step, time.perf_counter()  # evaluation and saving do not count as steps
      if stopping:
        checkpointer.wait()
        raise Preempted(f"pre-empted at step {step}: checkpoint saved in {workdir}; resume with the same command")
    if not final:  # the run was already complete: nothing left to train
      final = {split: experiment.evaluate(state.params, split, source) for split, source in eval_sources.items()}
  finally:
    bar.close()
    preemption.restore()
    writer.close()
  return final


def restore_params(config: ml_collections.ConfigDict, workdir: str, data: core.Description, *,
                   step: int | None = None, best: bool = False, tolerated: tuple[str, ...] = ()
                   ) -> tuple[Experiment, int, Any]:
  """-> (the Experiment of `config` and `data`, the step, its parameters) of a checkpoint of `workdir` (the
  newest that restores, `step`, or the best), opened read-only. With `data` described from the config
  alone (`sources.describe`; a run's saved config holds the data-given sizes) nothing of the dataset is read:
  the model and parameters are the run's, for one's own inputs. tolerated: `Checkpointer`'s."""
  experiment = Experiment(config, data)
  checkpointer = experiment.checkpointer(workdir, read_only=True, tolerated=tolerated)
  try:
    step, params, _, _, _ = checkpointer.restore(experiment.abstract_state.params, step=step, best=best)
  finally:
    checkpointer.close()
  return experiment, step, params


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
                        best: bool = False, attacks: tuple[str, ...] = (),
                        attack_settings: robustness.AttackSettings | None = None,
                        eval_length: int | None = None) -> tuple[int, dict, dict]:
  """Restores the parameters of a checkpoint of `workdir` (the newest that restores, `step`, or the best)
  read-only, so it can run beside a training -> (step, metrics by split, {split: attack results} (see
  `robustness.evaluate`), empty without attacks). eval_length: a language model's eval text scored in
  windows of that many tokens (`experiments.at_eval_length`)."""
  tolerated = ()
  if eval_length is not None:
    config, tolerated = at_eval_length(config, eval_length), LENGTHS
  check_settings(config)  # before any data is built
  data = sources.describe_eval(config)
  experiment, step, params = restore_params(config, workdir, data, step=step, best=best, tolerated=tolerated)
  splits = experiment.config.eval.splits
  results = {split: experiment.evaluate(params, split) for split in splits}
  attacked = {split: robustness.evaluate(experiment, params, split, attacks, attack_settings)
              for split in splits} if attacks else {}
  return step, results, attacked
