"""The training loop: one jitted step over a device mesh, Orbax resume, evaluation and metrics.

`train_and_evaluate(config, workdir)` is what `train.py` runs; `evaluate_checkpoint` is what `eval.py`
runs. Both work the same on one CPU, several devices, or several processes (`jax.distributed`).
"""
from __future__ import annotations

import collections
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

from bilateral_jax import checkpointing, parallel, robustness, tasks
from bilateral_jax import workdir as workdir_lib
from bilateral_jax.checkpointing import Checkpointer, abstract_with_shardings
from bilateral_jax.data import augment, pipeline, sources
from bilateral_jax.metric_writer import MetricWriter
from bilateral_jax.models import TransformerConfig, build_model, recorded_bsa_paths, sliding_window_logits
from bilateral_jax.ops import dispatch

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
  computed and what the backward pass recomputes are not part of it)."""
  settings = config.model.to_dict()
  settings["transformer"].pop("attention_implementation", None)
  settings["transformer"].pop("remat", None)
  if not settings["transformer"].get("drop_path_rate"):  # checkpoints from before stochastic depth restore
    settings["transformer"].pop("drop_path_rate", None)
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


def resolve_from_data(config: ml_collections.ConfigDict, info: sources.DatasetInfo) -> ml_collections.ConfigDict:
  """Fills model sizes the data decides (`vocab_size: 0` = the dataset's vocabulary) and checks the
  given ones against the data."""
  config = config.copy_and_resolve_references()
  for field, value in info.model_sizes().items():
    if field not in config.model:
      continue
    if config.model[field] == 0:
      with config.unlocked():
        config.model[field] = value
    elif config.model[field] != value:
      raise ValueError(f"config.model.{field}={config.model[field]} but dataset {config.data.name!r} has "
                       f"{value}; set --config.model.{field}={value} (or 0 to take it from the data)")
  return config


def check_settings(config: ml_collections.ConfigDict, devices=None) -> None:
  """Every setting that does not need the data, checked before any data is built (`devices`: those the
  step is compiled for, default jax's)."""
  tc, opt = config.train, config.optimizer
  metrics = tasks.get(config.model.name).metrics
  checks = [
      (tc.best_mode in ("max", "min"), f"train.best_mode={tc.best_mode!r} is not one of: max, min"),
      (tc.best_metric in metrics, f"train.best_metric={tc.best_metric!r} is not one of: {', '.join(metrics)}"),
      (bool(config.eval.splits) and set(config.eval.splits) <= set(sources.SPLITS),
       f"eval.splits={tuple(config.eval.splits)} must be a non-empty subset of {sources.SPLITS}"),
      (min(tc.num_steps, tc.log_every, tc.eval_every, tc.checkpoint_every, tc.keep_checkpoints,
           tc.grad_accum_steps, tc.batch_size, config.eval.batch_size) >= 1,
       "train.num_steps, log_every, eval_every, checkpoint_every, keep_checkpoints, grad_accum_steps, "
       "batch_size and eval.batch_size must be positive"),
      (tc.profile_steps >= 0, f"train.profile_steps={tc.profile_steps} must be >= 0"),
      (opt.schedule in SCHEDULES, f"optimizer.schedule={opt.schedule!r} is not one of: {', '.join(SCHEDULES)}"),
      (opt.learning_rate > 0, f"optimizer.learning_rate={opt.learning_rate} must be positive"),
      (0 <= opt.b1 < 1 and 0 <= opt.b2 < 1, f"optimizer.b1={opt.b1} and b2={opt.b2} must lie in [0, 1)"),
      (opt.weight_decay >= 0 and opt.clip_norm >= 0 and opt.warmup_steps >= 0,
       "optimizer.weight_decay, clip_norm and warmup_steps must be >= 0"),
      (0 <= opt.final_learning_rate_fraction <= 1,
       f"optimizer.final_learning_rate_fraction={opt.final_learning_rate_fraction} must lie in [0, 1]"),
      (isinstance(config.train.get("input_workers", -1), int) and config.train.get("input_workers", -1) >= -1,
       f"train.input_workers={config.train.get('input_workers')!r} must be an integer >= -1 (-1: sized to the host)"),
      (isinstance(fsdp_min_size(config), int) and fsdp_min_size(config) >= 0,
       f"mesh.fsdp_min_size={fsdp_min_size(config)!r} must be an integer >= 0 (elements)"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)
  TransformerConfig(**config.model.transformer.to_dict())
  mesh_size = parallel.mesh_size(config.mesh.data, config.mesh.fsdp, devices)
  if tc.batch_size % (mesh_size * tc.grad_accum_steps):
    raise ValueError(f"train.batch_size {tc.batch_size} must be divisible by devices ({mesh_size}) x "
                     f"grad_accum_steps ({tc.grad_accum_steps})")


def input_workers(config: ml_collections.ConfigDict) -> int:
  """train.input_workers, -1 (also for runs saved before it existed) sized to the host."""
  workers = config.train.get("input_workers", -1)
  return pipeline.default_workers() if workers == -1 else workers


def fsdp_min_size(config: ml_collections.ConfigDict) -> int:
  """mesh.fsdp_min_size; the default for the configs of runs saved before it existed."""
  return config.mesh.get("fsdp_min_size", parallel.FSDP_MIN_SIZE)


ERASING_STREAM = 0x65726173  # folded into a train step's key for random erasing's noise: the other draws stay as they are


def example_batch(source, batch_size: int, transform=None) -> dict[str, np.ndarray]:
  """Zeros shaped as a batch of `source` after the (training) `transform`."""
  example = source[0] if transform is None else transform(source[0], np.random.default_rng(0))
  return {name: np.zeros((batch_size,) + np.shape(value), np.asarray(value).dtype)
          for name, value in example.items()}


@dataclasses.dataclass
class Experiment:
  """Everything a run builds from its config once: model, optimizer, mesh, shardings, jitted steps.

  `info_split` is the split whose source decides the data-given sizes and input shapes: `train` to
  train; eval.py passes the first split it evaluates, so it reads only the splits it evaluates.
  `devices`: those the steps are compiled for (default jax's; a `parallel.tpu_slice` to compile for a
  slice from any host). `placeholder`: build from the config alone, with one placeholder example of the
  data's shapes (`sources.placeholder_split`; `assumed` says which data-given sizes were assumed), so
  that nothing of the dataset needs to be present.
  """
  config: ml_collections.ConfigDict
  info_split: str = "train"
  devices: list | None = None
  placeholder: bool = False

  def __post_init__(self):
    check_settings(self.config, self.devices)
    if self.placeholder:
      self.info_source, self.assumed = sources.placeholder_split(self.config, self.info_split)
    else:
      self.info_source, self.assumed = sources.shared_split(self.config.data, self.info_split), {}
    self.info = self.info_source.info
    self.config = config = resolve_from_data(self.config, self.info)
    self.task = task = tasks.get(config.model.name)
    self.train_transform, self.eval_transform = task.transforms(config, self.info)
    self.mixes = bool(config.augment.mixup_alpha or config.augment.cutmix_alpha or config.augment.label_smoothing)
    if self.mixes and not task.mixes:
      raise ValueError("augment.mixup_alpha, cutmix_alpha and label_smoothing apply to classifiers, not "
                       f"{config.model.name!r}")
    self.model = make_model(config)
    self.sliding_window = tasks.segmentation_inference(config) == "sliding_window"
    self.tx, self.schedule = make_optimizer(config)
    self.mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp, self.devices)
    self.platform = self.mesh.devices.flat[0].platform
    # Evaluation pads its last batch with weight-0 rows anyway: round the batch up to the devices.
    self.eval_batch_size = -(-config.eval.batch_size // self.mesh.size) * self.mesh.size
    example = example_batch(self.info_source, 1, self.train_transform)
    inputs = np.asarray(self.device_batch({"inputs": example["inputs"]})["inputs"])  # what the model takes
    self.identity = model_settings(config) | {"inputs": [list(inputs.shape[1:]), str(inputs.dtype)]}
    self.tokens_per_example = inputs.shape[-1] if task.inputs == "token_stream" else None
    init = lambda rng: self._initial_state(rng, inputs)
    with recorded_bsa_paths() as self.bsa_paths, dispatch.compiling_for(self.platform):  # for the summary
      abstract = jax.eval_shape(init, jax.random.key(0))
    self.state_sharding = parallel.fsdp_sharding(self.mesh, abstract, fsdp_min_size(config))
    self.abstract_state = abstract_with_shardings(abstract, self.state_sharding)
    self.optimizer_structure = str(jax.tree.structure(abstract.opt_state))  # a resume must match it
    self.init = jax.jit(init, out_shardings=self.state_sharding)
    self.init_optimizer = jax.jit(self.tx.init, in_shardings=(self.state_sharding.params,),
                                  out_shardings=self.state_sharding.opt_state)
    batch_sharding = parallel.batch_sharding(self.mesh)
    replicated = parallel.replicated(self.mesh)
    self.train_step = jax.jit(self._train_step, in_shardings=(self.state_sharding, batch_sharding),
                              out_shardings=(self.state_sharding, replicated), donate_argnums=0)
    self.eval_step = jax.jit(self._eval_step, in_shardings=(self.state_sharding.params, batch_sharding),
                             out_shardings=replicated)
    self.abstract_batch = {name: jax.ShapeDtypeStruct((config.train.batch_size,) + value.shape[1:], value.dtype,
                                                      sharding=batch_sharding) for name, value in example.items()}

  def checkpointer(self, workdir: str, read_only: bool = False) -> Checkpointer:
    return Checkpointer(workdir, self.identity, keep=self.config.train.keep_checkpoints, read_only=read_only)

  def compile_train_step(self):
    """-> (the compiled train step, seconds it took, XLA's FLOPs per step and device or None, bytes of
    memory per device or None: {arguments, outputs, temporaries, generated_code, total})."""
    return compile_step(self.train_step, self.platform, self.abstract_state, self.abstract_batch)

  def compile_eval_step(self):
    """`compile_train_step` for the eval step, at the eval batch."""
    batch = {name: jax.ShapeDtypeStruct((self.eval_batch_size,) + value.shape[1:], value.dtype, sharding=value.sharding)
             for name, value in self.abstract_batch.items()}
    return compile_step(self.eval_step, self.platform, self.abstract_state.params, batch)

  def _initial_state(self, rng, inputs):
    params = self.model.init(rng, inputs)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

  def device_batch(self, batch, rng=None):
    """A batch as the model takes it, on the device: images normalised (`augment.normalise`, random
    erasing drawn from `rng`); other inputs as they are."""
    return augment.normalise(batch, self.info.image_stats, rng) if self.task.inputs == "images" else batch

  def _sums(self, params, batch, rng):
    segment = lambda images: self.model.apply({"params": params}, images, deterministic=rng is None,
                                              rngs=None if rng is None else {"dropout": rng})
    if self.sliding_window and rng is None:
      logits = sliding_window_logits(segment, batch["inputs"], batch["size"], window=self.info.image_size,
                                     stride=self.config.eval.window_stride)
    else:
      logits = segment(batch["inputs"])
    return self.task.sums(logits, batch)

  def _train_step(self, state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.key(self.config.seed), state.step)
    batch = self.device_batch(batch, jax.random.fold_in(rng, ERASING_STREAM))
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
                "learning_rate": self.schedule(state.step)} | parameter_summaries(params)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _eval_step(self, params, batch):
    return self._sums(params, self.device_batch(batch), None)

  def attack_step(self, attack: str, settings: robustness.AttackSettings):
    """jit: (params, batch, epsilon, rng) -> the task's sums on the batch attacked by `attack` at epsilon,
    with `robustness.success_sums` (compiled once per batch shape; epsilon is traced)."""

    def step(params, batch, epsilon, rng):
      batch = self.device_batch(batch)
      logits, _ = robustness.attacked_logits(self.model, params, batch, attack=attack, epsilon=epsilon,
                                             input_kind=self.task.inputs, settings=settings,
                                             image_stats=self.info.image_stats, rng=rng)
      clean = self.model.apply({"params": params}, batch["inputs"])
      return self.task.sums(logits, batch) | robustness.success_sums(clean, logits, batch)

    replicated = parallel.replicated(self.mesh)
    return jax.jit(step, in_shardings=(self.state_sharding.params, parallel.batch_sharding(self.mesh), replicated,
                                       replicated), out_shardings=replicated)

  def evaluate(self, params, split: str, source=None, step=None) -> dict[str, float]:
    """Metrics of `split` (the whole split, once, in order; `source` if given) under `params`, by
    `step(params, batch) -> sums` (default: the clean eval step)."""
    source = sources.shared_split(self.config.data, split) if source is None else source
    step = step or self.eval_step
    batches = pipeline.eval_batches(source, global_batch=self.eval_batch_size,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    transform=self.eval_transform)
    totals: dict[str, float] = {}
    for local in batches:
      sums = jax.device_get(step(params, parallel.global_batch(local, self.mesh)))
      for name, value in sums.items():
        totals[name] = totals.get(name, 0.0) + np.asarray(value, np.float64)
    return tasks.finalize(totals, self.task)


def compile_step(step, platform: str, *abstract_args):
  """Lowers and compiles a jitted step for its arguments' devices (their `platform`) -> (compiled, seconds,
  FLOPs per device or None, memory bytes per device or None)."""
  start = time.perf_counter()
  with dispatch.compiling_for(platform):
    compiled = step.lower(*abstract_args).compile()
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost["flops"]) if cost and cost.get("flops", -1) >= 0 else None
  analysis = compiled.memory_analysis()
  if analysis is None:
    return compiled, seconds, flops, None
  memory = {name: int(getattr(analysis, f"{kind}_size_in_bytes", 0)) for name, kind in (
      ("arguments", "argument"), ("outputs", "output"), ("temporaries", "temp"), ("generated_code", "generated_code"))}
  return compiled, seconds, flops, memory | {"total": sum(memory.values())}


def parameter_summaries(params) -> dict[str, jax.Array]:
  """Learned BSA bandwidths h_y, h_p [heads] and GRC t (mean over channels) per layer, as small arrays
  computed inside the step (so they are replicated whatever the parameters' sharding)."""
  out = {}
  for path, value in flax.traverse_util.flatten_dict(params, sep="/").items():
    layer = next((part for part in path.split("/") if part.startswith("block_")), None)
    name = path.rsplit("/", 1)[-1]
    if name in ("log_h_y", "log_h_p"):
      out[f"{name[4:]}/{layer}"] = jnp.exp(value.astype(jnp.float32)).reshape(-1)
    elif name.startswith("grc_theta_"):
      out[f"t_{name[len('grc_theta_'):]}/{layer}"] = jnp.mean(jax.nn.sigmoid(value.astype(jnp.float32)))
  return out


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


def _lock(workdir: str) -> workdir_lib.Lock:
  """Process 0 takes the workdir's lock; every process learns whether it did."""
  lock = workdir_lib.Lock(workdir)
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except workdir_lib.WorkdirInUse as refused:
      error = refused
  if jax.process_count() > 1 and not bool(multihost_utils.broadcast_one_to_all(np.int32(error is None))):
    raise error or workdir_lib.WorkdirInUse(f"{workdir} is in use by another run (process 0 could not lock it)")
  if error:
    raise error
  return lock


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, fresh_optimizer: bool = False,
                       dry_run: bool = False) -> dict[str, dict[str, float]]:
  """Trains to `train.num_steps`, resuming from the latest checkpoint in `workdir` that restores; returns
  the final evaluation metrics by split. fresh_optimizer: resume the parameters with a new optimiser
  state (needed when the optimiser's state changes structure, e.g. clip_norm switched on or off).
  dry_run: compile the train step from the config alone (no data is built or read), print the start-up
  summary and return {} (nothing is written)."""
  experiment = Experiment(config, placeholder=dry_run)
  if dry_run:
    _print_summary(experiment, workdir, *experiment.compile_train_step()[1:], {})
    return {}
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


def compile_for_slice(config: ml_collections.ConfigDict, topology: str) -> dict:
  """The train and eval steps of `config` compiled by libtpu for the TPU slice `topology` (`v5e:2x2`) on
  this host, from the config alone (no dataset; `assumed` lists the data-given sizes taken as assumed) ->
  {topology, chips, device_kind, mesh, bytes_per_chip (the train step's arguments, outputs, temporaries,
  generated_code, total), eval_bytes_per_chip, chip_bytes, fits, flops_per_chip, compile_seconds,
  attention_path, assumed}."""
  devices = parallel.tpu_slice(topology)
  experiment = Experiment(config, devices=devices, placeholder=True)
  _, train_seconds, flops, train_memory = experiment.compile_train_step()
  _, eval_seconds, _, eval_memory = experiment.compile_eval_step()
  capacity = parallel.device_bytes(devices)
  needed = max(train_memory["total"], eval_memory["total"])
  return {"topology": topology, "chips": len(devices), "device_kind": devices[0].device_kind,
          "mesh": dict(experiment.mesh.shape), "bytes_per_chip": train_memory, "eval_bytes_per_chip": eval_memory,
          "chip_bytes": capacity, "fits": None if capacity is None else needed <= capacity, "flops_per_chip": flops,
          "compile_seconds": {"train": round(train_seconds, 1), "eval": round(eval_seconds, 1)},
          "attention_path": attention_summary(experiment.model.config.attention, experiment.bsa_paths)
          .removeprefix("attention: "), "assumed": experiment.assumed}


def slice_summary(report: dict) -> str:
  """compile_for_slice's report for the console."""
  readable = parallel.readable_bytes
  memory, capacity = report["bytes_per_chip"], report["chip_bytes"]
  fits = ("capacity unknown" if capacity is None else
          f"{'fits' if report['fits'] else 'does NOT fit'} in {readable(capacity)} per chip")
  lines = [f"slice: {report['topology']} ({report['chips']} x {report['device_kind']}), mesh "
           + " ".join(f"{axis}={size}" for axis, size in report["mesh"].items()),
           f"attention: {report['attention_path']}",
           "train step per chip: " + ", ".join(f"{name} {readable(memory[name])}" for name in
                                                ("arguments", "temporaries", "outputs", "total"))
           + f"; eval step total {readable(report['eval_bytes_per_chip']['total'])}: {fits}",
           (f"{report['flops_per_chip'] / 1e12:.3g} TFLOP per train step and chip; " if report["flops_per_chip"] else "")
           + f"compiled in {report['compile_seconds']['train']} s (train), {report['compile_seconds']['eval']} s (eval)"]
  lines += [f"assumed: {field}: {why}" for field, why in report["assumed"].items()]
  return "\n".join(lines)


def _resume(experiment: Experiment, checkpointer: Checkpointer, workdir: str, fresh_optimizer: bool):
  """-> (state, data iterator state or None, progress, step) from the newest checkpoint that restores,
  after refusing what would silently corrupt the run."""
  config = experiment.config
  saved_config = workdir_lib.load_config(workdir)
  changed = workdir_lib.changes(saved_config, config) if saved_config is not None else {}
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
  batches = pipeline.train_batches(experiment.info_source, global_batch=tc.batch_size, seed=config.seed,
                                   process_index=jax.process_index(), process_count=jax.process_count(),
                                   transform=experiment.train_transform, repeats=config.augment.repeats,
                                   workers=input_workers(config))
  eval_sources = {split: sources.shared_split(config.data, split) for split in config.eval.splits}
  state, data_state, progress, step = _resume(experiment, checkpointer, workdir, fresh_optimizer)
  if data_state is not None:
    batches.set_state(data_state)
  progress |= {"batch_size": tc.batch_size, "optimizer": experiment.optimizer_structure}
  if jax.process_index() == 0:
    workdir_lib.save_config(config, workdir)
  train_step, compile_seconds, flops, memory = experiment.compile_train_step()
  _print_summary(experiment, workdir, compile_seconds, flops, memory, eval_sources)

  writer = MetricWriter(workdir, resume_step=step, config=config)
  preemption = _Preemption()
  bar = _ProgressBar(step, tc.num_steps)
  final: dict[str, dict[str, float]] = {}
  profile = range(step + 2, step + 2 + tc.profile_steps)  # after the first step: no compilation in the trace
  last_log, last_time = step, time.perf_counter()
  try:
    while step < tc.num_steps:
      if step + 1 == profile.start and profile:
        jax.profiler.start_trace(str(workdir_lib.path(workdir) / "profile"))
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


def restore_params(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
                   best: bool = False) -> tuple[Experiment, int, Any]:
  """-> (the Experiment of `config` on its first eval split, the step, its parameters) of a checkpoint of
  `workdir` (the newest that restores, `step`, or the best), opened read-only."""
  experiment = Experiment(config, info_split=config.eval.splits[0])
  checkpointer = experiment.checkpointer(workdir, read_only=True)
  try:
    step, params, _, _, _ = checkpointer.restore(experiment.abstract_state.params, step=step, best=best)
  finally:
    checkpointer.close()
  return experiment, step, params


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
                        best: bool = False, attacks: tuple[str, ...] = (),
                        attack_settings: robustness.AttackSettings | None = None) -> tuple[int, dict, dict]:
  """Restores the parameters of a checkpoint of `workdir` (the newest that restores, `step`, or the best)
  read-only, so it can run beside a training -> (step, metrics by split, {split: attack results} (see
  `robustness.evaluate`), empty without attacks)."""
  experiment, step, params = restore_params(config, workdir, step, best)
  splits = experiment.config.eval.splits
  results = {split: experiment.evaluate(params, split) for split in splits}
  attacked = {split: robustness.evaluate(experiment, params, split, attacks, attack_settings)
              for split in splits} if attacks else {}
  return step, results, attacked


def parameter_counts(params) -> dict[str, int]:
  """Parameters per top-level module, and `total`."""
  counts = {name: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(subtree)) for name, subtree in params.items()}
  return counts | {"total": sum(counts.values())}


def attention_summary(attention: str, bsa_paths: dict[str, str]) -> str:
  """'attention: bilateral via folded (layers 0-3)': the path of each run of layers of each stack (the
  stack named unless it is `transformer`); other attentions compute explicit logits."""
  if not bsa_paths:
    return f"attention: {attention} (explicit logits, all layers)"
  runs = []  # [stack, path, first layer, last layer], in call order
  for name, path in bsa_paths.items():
    stack, layer = name.split("/attention")[0].rsplit("/block_", 1)
    if runs and runs[-1][:2] == [stack, path] and runs[-1][3] == int(layer) - 1:
      runs[-1][3] = int(layer)
    else:
      runs.append([stack, path, int(layer), int(layer)])
  return "attention: " + ", ".join(
      ("" if stack == "transformer" else f"{stack}: ") + f"{attention} via {path} "
      + (f"(layer {first})" if first == last else f"(layers {first}-{last})") for stack, path, first, last in runs)


def _print_summary(experiment: Experiment, workdir: str, compile_seconds: float, flops, memory,
                   eval_sources: dict) -> None:
  if jax.process_index() != 0:
    return
  config, mesh = experiment.config, experiment.mesh
  counts = parameter_counts(experiment.abstract_state.params)
  total = counts.pop("total")
  sizes = {"train": len(experiment.info_source)} | {split: len(source) for split, source in eval_sources.items()}
  data = ("data: " + ", ".join(f"{split} {size:,}" for split, size in sizes.items()) + f" examples ({config.data.name})"
          if not experiment.placeholder else f"data: {config.data.name} not read (built from the config alone"
          + "".join(f"; assumed {field}: {why}" for field, why in experiment.assumed.items()) + ")")
  lines = [
      f"devices: {jax.device_count()} {jax.devices()[0].platform} in {jax.process_count()} process(es); "
      f"mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']}",
      f"parameters: {total:,} (" + ", ".join(f"{name} {count:,}" for name, count in counts.items()) + ")",
      attention_summary(experiment.model.config.attention, experiment.bsa_paths),
      data,
      f"train step: compiled in {compile_seconds:.1f} s"
      + (f"; {flops / 1e9:.3g} GFLOP per step and device (XLA cost analysis)" if flops else "")
      + (f"; {memory['total'] / 2**20:.1f} MiB of device memory per device (arguments, outputs, temporaries)"
         if memory else ""),
      f"workdir: {workdir_lib.path(workdir)}",
  ]
  if mesh.shape["fsdp"] > 1:
    fsdp, unshardable = parallel.fsdp_report(experiment.abstract_state.params, mesh.shape["fsdp"],
                                             fsdp_min_size(config))
    lines.insert(2, fsdp)
    if unshardable:
      logging.warning(unshardable)
  stack = experiment.model.config
  if config.model.name != "lm" and not stack.sees_direction:
    lines.append(f"note: attention={stack.attention!r} spatial={stack.spatial!r} sees no direction: this bidirectional "
                 "model is exactly invariant to the isometries of its token grid (reversal, transposition; "
                 "method.md section 2 'Direction')")
  print("\n".join(lines), flush=True)


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
