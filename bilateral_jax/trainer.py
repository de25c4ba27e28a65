"""The training loop: one jitted step over a device mesh, Orbax resume, evaluation and metrics.

`train_and_evaluate(config, workdir)` is what `train.py` runs; `evaluate_checkpoint` is what `eval.py`
runs. Both work the same on one CPU, several devices, or several processes (`jax.distributed`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import signal
import sys
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from bilateral_jax import parallel, tasks
from bilateral_jax.checkpointing import Checkpointer, abstract_with_shardings
from bilateral_jax.data import augment, pipeline, sources
from bilateral_jax.metric_writer import MetricWriter
from bilateral_jax.models import build_model

SCHEDULES = ("cosine", "linear", "constant", "rsqrt")


class TrainingDiverged(RuntimeError):
  """The training loss stopped being finite."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def model_settings(config: ml_collections.ConfigDict) -> dict:
  """The model part of the config, as plain data: what a checkpoint must match (how attention is
  computed is not part of it)."""
  settings = config.model.to_dict()
  settings["transformer"].pop("attention_implementation", None)
  return settings


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
  settings = config.model.to_dict()
  return build_model(settings.pop("name"), settings.pop("transformer"), **settings)


def make_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  if opt.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule={opt.schedule!r} is not one of: {', '.join(SCHEDULES)}")
  warmup_steps = max(opt.warmup_steps, 1)
  warmup = optax.linear_schedule(0.0, opt.learning_rate, warmup_steps)
  decay_steps = max(num_steps - opt.warmup_steps, 1)
  final = opt.learning_rate * opt.final_learning_rate_fraction
  decay = {"cosine": optax.cosine_decay_schedule(opt.learning_rate, decay_steps,
                                                 alpha=opt.final_learning_rate_fraction),
           "linear": optax.linear_schedule(opt.learning_rate, final, decay_steps),
           "constant": optax.constant_schedule(opt.learning_rate),
           # LRA's `constant * linear_warmup * rsqrt_decay`, with learning_rate its peak (constant / sqrt(warmup))
           "rsqrt": lambda step: opt.learning_rate * jnp.sqrt(warmup_steps / (jnp.maximum(step, 0) + warmup_steps)),
           }[opt.schedule]
  return optax.join_schedules([warmup, decay], [opt.warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with warm-up and decay, global-norm clipping; no weight decay on vectors (biases, norms,
  bandwidths, GRC thetas)."""
  opt = config.optimizer
  schedule = make_schedule(opt, config.train.num_steps)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  chain = [optax.clip_by_global_norm(opt.clip_norm)] if opt.clip_norm > 0 else []
  chain.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask))
  return optax.chain(*chain), schedule


def resolve_from_data(config: ml_collections.ConfigDict, info: dict) -> ml_collections.ConfigDict:
  """Fills model sizes the data decides (`vocab_size: 0` = the dataset's vocabulary) and checks the
  given ones against the data."""
  config = config.copy_and_resolve_references()
  for field, value in info.items():
    if field not in config.model:
      continue
    if config.model[field] == 0:
      with config.unlocked():
        config.model[field] = value
    elif config.model[field] != value:
      raise ValueError(f"config.model.{field}={config.model[field]} but dataset {config.data.name!r} has "
                       f"{value}; set --config.model.{field}={value} (or 0 to take it from the data)")
  return config


def _check_loop_settings(config: ml_collections.ConfigDict) -> None:
  tc = config.train
  metrics = ("loss", "accuracy") + (("mean_iou",) if config.model.name == "segmenter" else ())
  checks = [
      (tc.best_mode in ("max", "min"), f"train.best_mode={tc.best_mode!r} is not one of: max, min"),
      (tc.best_metric in metrics, f"train.best_metric={tc.best_metric!r} is not one of: {', '.join(metrics)}"),
      (bool(config.eval.splits) and set(config.eval.splits) <= set(sources.SPLITS),
       f"eval.splits={tuple(config.eval.splits)} must be a non-empty subset of {sources.SPLITS}"),
      (min(tc.num_steps, tc.log_every, tc.eval_every, tc.checkpoint_every, tc.keep_checkpoints,
           tc.grad_accum_steps, tc.batch_size, config.eval.batch_size) >= 1,
       "train.num_steps, log_every, eval_every, checkpoint_every, keep_checkpoints, grad_accum_steps, "
       "batch_size and eval.batch_size must be positive"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)


def _refuse_switches(augment_config: ml_collections.ConfigDict, names: tuple[str, ...], why: str) -> None:
  used = [name for name in names if (augment_config[name] > 1 if name == "repeats" else augment_config[name])]
  if used:
    raise ValueError(f"augment.{', augment.'.join(used)} {why}")


def _image_transforms(config: ml_collections.ConfigDict, info: dict):
  """(train, eval) per-example transforms for image datasets (normalisation and `config.augment`)."""
  per_image = ("random_resized_crop", "hflip", "rand_augment_ops", "random_erasing")
  if "image_stats" not in info:
    _refuse_switches(config.augment, per_image + ("cutmix_alpha", "repeats"),
                     f"apply to image datasets, not {config.data.name!r}")
    return None, None
  mean, std = info["image_stats"]
  if "scale_range" in info:  # semantic segmentation: its own crop-and-flip recipe, on image and mask
    _refuse_switches(config.augment, per_image, f"apply to image classification, not segmentation "
                     f"({config.data.name!r} crops, scales and flips image and mask together)")
    return tuple(augment.segmentation_transform(mean, std, size=info["image_size"], scale_range=info["scale_range"],
                                                train=train) for train in (True, False))
  size = dict(size=info["image_size"], crop_fraction=info["crop_fraction"])
  return (augment.image_transform(config.augment, mean, std, train=True, **size),
          augment.image_transform(config.augment, mean, std, train=False, **size))


def example_batch(source, batch_size: int, transform=None) -> dict[str, np.ndarray]:
  example = source[0] if transform is None else transform(source[0], None)
  return {name: np.zeros((batch_size,) + np.shape(value), np.asarray(value).dtype)
          for name, value in example.items()}


@dataclasses.dataclass
class Experiment:
  """Everything a run builds from its config once: model, optimizer, mesh, shardings, jitted steps."""
  config: ml_collections.ConfigDict

  def __post_init__(self):
    self.train_source = sources.load_split(self.config.data, "train")
    self.config = config = resolve_from_data(self.config, self.train_source.info)
    _check_loop_settings(config)
    self.train_transform, self.eval_transform = _image_transforms(config, self.train_source.info)
    self.mixes = bool(config.augment.mixup_alpha or config.augment.cutmix_alpha or config.augment.label_smoothing)
    if self.mixes and config.model.name not in ("classifier", "vit"):
      raise ValueError("augment.mixup_alpha, cutmix_alpha and label_smoothing apply to classifiers, not "
                       f"{config.model.name!r}")
    self.model = make_model(config)
    self.task = tasks.TASKS[config.model.name]
    self.tx, self.schedule = make_optimizer(config)
    self.mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    if config.train.batch_size % (self.mesh.size * config.train.grad_accum_steps):
      raise ValueError(f"train.batch_size {config.train.batch_size} must be divisible by devices "
                       f"({self.mesh.size}) x grad_accum_steps ({config.train.grad_accum_steps})")
    if config.eval.batch_size % self.mesh.size:
      raise ValueError(f"eval.batch_size {config.eval.batch_size} must be divisible by devices ({self.mesh.size})")
    inputs = example_batch(self.train_source, 1, self.eval_transform)["inputs"]
    self.tokens_per_example = inputs.shape[-1] if config.model.name == "lm" else None
    init = lambda rng: self._initial_state(rng, inputs)
    abstract = jax.eval_shape(init, jax.random.key(0))
    self.state_sharding = parallel.fsdp_sharding(self.mesh, abstract)
    self.abstract_state = abstract_with_shardings(abstract, self.state_sharding)
    self.init = jax.jit(init, out_shardings=self.state_sharding)
    batch_sharding = parallel.batch_sharding(self.mesh)
    replicated = parallel.replicated(self.mesh)
    self.train_step = jax.jit(self._train_step, in_shardings=(self.state_sharding, batch_sharding),
                              out_shardings=(self.state_sharding, replicated), donate_argnums=0)
    self.eval_step = jax.jit(self._eval_step, in_shardings=(self.state_sharding, batch_sharding),
                             out_shardings=replicated)

  def _initial_state(self, rng, inputs):
    params = self.model.init(rng, inputs)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

  def _sums(self, params, batch, rng):
    logits = self.model.apply({"params": params}, batch["inputs"], deterministic=rng is None,
                              rngs=None if rng is None else {"dropout": rng})
    return self.task(logits, batch)

  def _train_step(self, state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.key(self.config.seed), state.step)
    if self.mixes:
      aug = self.config.augment
      rng, mix_rng = jax.random.split(rng)
      batch = augment.mix(batch, mix_rng, num_classes=self.config.model.num_classes,
                          mixup_alpha=aug.mixup_alpha, cutmix_alpha=aug.cutmix_alpha,
                          switch_probability=aug.mix_switch_probability, label_smoothing=aug.label_smoothing)
    accum = self.config.train.grad_accum_steps
    grad_fn = jax.grad(lambda p, b, r: (lambda s: (s["loss"], s))(self._sums(p, b, r)), has_aux=True)
    if accum == 1:
      grads, sums = grad_fn(state.params, batch, rng)
    else:
      # Micro-batch m takes rows m, m + accum, ... so that every device holds rows of each micro-batch.
      micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((-1, accum) + x.shape[1:]), 0, 1), batch)

      def accumulate(carry, xs):
        index, micro_batch = xs
        g, s = grad_fn(state.params, micro_batch, jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, carry, (g, s)), None

      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), rng))
      (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum), micro))
    weight = jnp.maximum(sums["weight"], 1e-12)
    grads = jax.tree.map(lambda g: g / weight, grads)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {name: value / weight for name, value in sums.items() if name != "weight" and value.ndim == 0}
    metrics |= {"grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params),
                "learning_rate": self.schedule(state.step)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _eval_step(self, state: TrainState, batch):
    return self._sums(state.params, batch, None)

  def evaluate(self, state: TrainState, split: str, source=None) -> dict[str, float]:
    """Metrics of `split` (the whole split, once, in order) under the current parameters."""
    source = sources.load_split(self.config.data, split) if source is None else source
    batches = pipeline.eval_batches(source, global_batch=self.config.eval.batch_size,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    transform=self.eval_transform)
    totals: dict[str, float] = {}
    for local in batches:
      sums = jax.device_get(self.eval_step(state, parallel.global_batch(local, self.mesh)))
      for name, value in sums.items():
        totals[name] = totals.get(name, 0.0) + np.asarray(value, np.float64)
    return tasks.finalize(totals)


def filter_parameters(params) -> dict[str, list[float]]:
  """Learned BSA bandwidths (per head) and GRC t (per sublayer), per layer, for logging."""
  out = {}
  for path, value in flax.traverse_util.flatten_dict(jax.device_get(params), sep="/").items():
    layer = next((part for part in path.split("/") if part.startswith("block_")), None)
    name = path.rsplit("/", 1)[-1]
    if name in ("log_h_y", "log_h_p"):
      out[f"{name[4:]}/{layer}"] = np.exp(value).round(5).tolist()
    elif name.startswith("grc_theta_"):
      t = 1.0 / (1.0 + np.exp(-np.asarray(value, np.float64)))
      out[f"t_{name[len('grc_theta_'):]}/{layer}"] = float(np.mean(t))
  return out


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


def _check_finite(step: int, metrics: dict, checkpointer: Checkpointer) -> None:
  if not all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)):
    checkpointer.wait()
    raise TrainingDiverged(
        f"non-finite training metrics at step {step}: {metrics}. Training stopped; the last good "
        f"checkpoint (step {checkpointer.latest_step()}) is kept. Lower optimizer.learning_rate or "
        "set optimizer.clip_norm, then rerun to resume from it.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, float]]:
  """Trains to `train.num_steps`, resuming from the latest checkpoint in `workdir`; returns the final
  evaluation metrics by split."""
  experiment = Experiment(config)
  checkpointer = Checkpointer(workdir, model_settings(experiment.config),
                              keep=experiment.config.train.keep_checkpoints)
  try:
    return _train(experiment, checkpointer, workdir)
  finally:
    checkpointer.wait()
    checkpointer.close()


def _train(experiment: Experiment, checkpointer: Checkpointer, workdir: str) -> dict[str, dict[str, float]]:
  config = experiment.config
  tc = config.train
  batches = pipeline.train_batches(experiment.train_source, global_batch=tc.batch_size, seed=config.seed,
                                   process_index=jax.process_index(), process_count=jax.process_count(),
                                   transform=experiment.train_transform, repeats=config.augment.repeats)
  eval_sources = {split: sources.load_split(config.data, split) for split in config.eval.splits}
  progress = {"best": None}
  step = checkpointer.latest_step()
  if step is None:
    state, step = experiment.init(jax.random.key(config.seed)), 0
  else:
    state, data_state, progress = checkpointer.restore(step, experiment.abstract_state)
    batches.set_state(data_state)
    print(f"resumed from step {step} in {workdir}", flush=True)

  writer = MetricWriter(workdir)
  preemption = _Preemption()
  bar = _ProgressBar(step, tc.num_steps)
  final: dict[str, dict[str, float]] = {}
  last_log, last_time = step, time.perf_counter()
  try:
    while step < tc.num_steps:
      state, metrics = experiment.train_step(state, parallel.global_batch(next(batches), experiment.mesh))
      step += 1
      last = step == tc.num_steps
      stopping = preemption.reached(step)  # read once: a signal may arrive anywhere below
      save_now = last or step % tc.checkpoint_every == 0 or stopping
      if step % tc.log_every == 0 or save_now:
        host = {name: float(value) for name, value in jax.device_get(metrics).items()}
        _check_finite(step, host, checkpointer)
        steps_per_s = (step - last_log) / max(time.perf_counter() - last_time, 1e-9)
        host |= {"steps_per_s": steps_per_s, "examples_per_s": steps_per_s * tc.batch_size}
        if experiment.tokens_per_example:
          host["tokens_per_s"] = host["examples_per_s"] * experiment.tokens_per_example
        writer.write(step, "train", host | filter_parameters(state.params))
        bar.update(step, host)
        last_log, last_time = step, time.perf_counter()
      if last or step % tc.eval_every == 0:
        for split, source in eval_sources.items():
          final[split] = experiment.evaluate(state, split, source)
          writer.write(step, split, final[split])
        value = final[config.eval.splits[0]][tc.best_metric]
        sign = 1 if tc.best_mode == "max" else -1
        if progress["best"] is None or sign * value > sign * progress["best"]:
          progress = {"best": value}
          checkpointer.save(step, state, batches.get_state(), progress, best=True)
      if save_now:
        checkpointer.save(step, state, batches.get_state(), progress)
      if stopping:
        logging.warning("pre-empted: checkpoint of step %d saved; rerun the same command to resume", step)
        break
    if not final and step == tc.num_steps:  # the run was already complete: nothing left to train
      final = {split: experiment.evaluate(state, split, source) for split, source in eval_sources.items()}
  finally:
    bar.close()
    preemption.restore()
    writer.close()
  return final


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
                        best: bool = False) -> tuple[int, dict[str, dict[str, float]]]:
  """Restores a checkpoint of `workdir` (latest, `step`, or the best) -> (step, metrics by split)."""
  experiment = Experiment(config)
  config = experiment.config
  checkpointer = Checkpointer(workdir, model_settings(config))
  try:
    step = checkpointer.latest_step(best) if step is None else step
    if step is None:
      raise FileNotFoundError(f"no {'best ' if best else ''}checkpoint in {workdir}")
    state, _, _ = checkpointer.restore(step, experiment.abstract_state, best=best)
    return step, {split: experiment.evaluate(state, split) for split in config.eval.splits}
  finally:
    checkpointer.close()


class _ProgressBar:
  """tqdm on a terminal (loss, steps/s, examples/s, ETA); one plain line per log step otherwise."""

  def __init__(self, start: int, total: int):
    self.interactive = jax.process_index() == 0 and sys.stderr.isatty()
    self.active = jax.process_index() == 0
    self.position, self.total = start, total
    if self.interactive:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

  def update(self, step: int, metrics: dict) -> None:
    if self.interactive:
      throughput = ({"tokens_s": f"{metrics['tokens_per_s']:.0f}"} if "tokens_per_s" in metrics
                    else {"examples_s": f"{metrics['examples_per_s']:.0f}"})
      self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", steps_s=f"{metrics['steps_per_s']:.1f}",
                           **throughput, refresh=False)
      self.bar.update(step - self.position)
    elif self.active:
      remaining = (self.total - step) / max(metrics["steps_per_s"], 1e-9)
      print(f"step {step}/{self.total} loss {metrics['loss']:.4f} accuracy {metrics['accuracy']:.4f} "
            f"{metrics['steps_per_s']:.1f} steps/s {metrics['examples_per_s']:.0f} examples/s "
            + (f"{metrics['tokens_per_s']:.0f} tokens/s " if "tokens_per_s" in metrics else "") +
            f"ETA {remaining:.0f}s", flush=True)
    self.position = step

  def close(self) -> None:
    if self.interactive:
      self.bar.close()
