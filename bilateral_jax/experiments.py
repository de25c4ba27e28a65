"""What a run builds from its config: the checks of its settings, the model, the optimiser, and the
`Experiment` (mesh, shardings, the jitted steps of `steps`, evaluation of a split), and its compilation
for a TPU slice from any host (`compile_for_slice`)."""
from __future__ import annotations

import dataclasses
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bilateral_jax import console, parallel, robustness, steps, tasks
from bilateral_jax.checkpointing import Checkpointer, abstract_with_shardings
from bilateral_jax.data import core, pipeline, sources
from bilateral_jax.models import TransformerConfig, build_model, recorded_bsa_paths
from bilateral_jax.ops import target

SCHEDULES = ("cosine", "linear", "constant", "rsqrt")


def model_settings(config: ml_collections.ConfigDict) -> dict:
  """The model part of the config, as plain data: what a checkpoint must match (how attention is
  computed and what the backward pass recomputes are not part of it)."""
  settings = config.model.to_dict()
  settings["transformer"].pop("attention_path", None)
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


def resolve_from_data(config: ml_collections.ConfigDict, info: core.DatasetInfo) -> ml_collections.ConfigDict:
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


LENGTHS = ("inputs", "transformer.max_length")  # what a checkpoint's identity may differ in at another length


def at_eval_length(config: ml_collections.ConfigDict, length: int) -> ml_collections.ConfigDict:
  """A language model's config that scores its eval text in windows of `length` tokens ("train short, test
  long", Press et al. 2022; `data.eval_stride` still applies) with the parameters it was trained with:
  `data.max_length` set to `length`, the stack's `max_length` raised to it when shorter, `eval.batch_size`
  scaled to the same tokens per batch (at least one window; `Experiment` rounds it up to the devices). Refused (a
  ValueError saying why) for a task that is not a language model, and for a learned position table, whose
  rows end at the trained length."""
  if "perplexity" not in tasks.get(config.model.name).metrics:
    raise ValueError(f"--eval_length: model {config.model.name!r} is not a language model; only a text stream "
                     "can be scored in windows of another length")
  stack = TransformerConfig(**config.model.transformer.to_dict())
  if length < 1:
    raise ValueError(f"--eval_length={length} must be a positive number of tokens")
  if length > stack.max_length and stack.uses_position_table and stack.position_table == "learned":
    raise ValueError(f"--eval_length={length}: this model's learned position table has rows for "
                     f"{stack.max_length} positions only (model.transformer.max_length); score at most that, or "
                     "train a scheme defined at any length (RoPE, ALiBi, BSA's coordinate kernels, sinusoidal, none)")
  config = config.copy_and_resolve_references()
  config.eval.batch_size = max(1, config.eval.batch_size * config.data.max_length // length)
  config.data.max_length = length
  config.model.transformer.max_length = max(length, stack.max_length)
  return config


def check_settings(config: ml_collections.ConfigDict, devices=None) -> None:
  """Every setting that does not need the data, checked before any data is built (`devices`: those the
  step is compiled for, default jax's)."""
  tc, opt = config.train, config.optimizer
  metrics = tasks.get(config.model.name).metrics
  checks = [
      (tc.best_mode in ("max", "min"), f"train.best_mode={tc.best_mode!r} is not one of: max, min"),
      (tc.best_metric in metrics, f"train.best_metric={tc.best_metric!r} is not one of: {', '.join(metrics)}"),
      (bool(config.eval.splits) and set(config.eval.splits) <= set(core.SPLITS),
       f"eval.splits={tuple(config.eval.splits)} must be a non-empty subset of {core.SPLITS}"),
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
      (isinstance(parallel.fsdp_min_size(config), int) and parallel.fsdp_min_size(config) >= 0,
       f"mesh.fsdp_min_size={parallel.fsdp_min_size(config)!r} must be an integer >= 0 (elements)"),
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


def example_batch(example: dict[str, np.ndarray], batch_size: int, transform=None) -> dict[str, np.ndarray]:
  """Zeros shaped as a batch of `example`s after the (training) `transform`."""
  example = example if transform is None else transform(example, np.random.default_rng(0))
  return {name: np.zeros((batch_size,) + np.shape(value), np.asarray(value).dtype)
          for name, value in example.items()}


def initial_state(model: nn.Module, tx: optax.GradientTransformation, rng, inputs) -> steps.TrainState:
  params = model.init(rng, inputs)["params"]
  return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


@dataclasses.dataclass
class Experiment:
  """Everything a run builds from its config once: model, optimizer, mesh, shardings, jitted steps. Reads
  nothing.

  `data`: what the data is (`sources.describe_split` reads it from a split, `sources.describe` from the
  config alone; the sizes it gives fill the config's `0`s, `resolve_from_data`). `devices`: those the
  steps are compiled for (default jax's; a `parallel.tpu_slice` to compile for a slice from any host).
  """
  config: ml_collections.ConfigDict
  data: core.Description
  devices: list | None = None

  def __post_init__(self):
    check_settings(self.config, self.devices)
    self.info = self.data.info
    self.config = config = resolve_from_data(self.config, self.info)
    self.task = task = tasks.get(config.model.name)
    self.train_transform, self.eval_transform = task.transforms(config, self.info)
    if steps.mixes(config) and not task.mixes:
      raise ValueError("augment.mixup_alpha, cutmix_alpha and label_smoothing apply to classifiers, not "
                       f"{config.model.name!r}")
    self.model = make_model(config)
    self.sliding_window = tasks.segmentation_inference(config) == "sliding_window"
    self.tx, self.schedule = make_optimizer(config)
    self.mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp, self.devices)
    self.platform = self.mesh.devices.flat[0].platform
    # Evaluation pads its last batch with weight-0 rows anyway: round the batch up to the devices.
    self.eval_batch_size = -(-config.eval.batch_size // self.mesh.size) * self.mesh.size
    example = example_batch(self.data.example, 1, self.train_transform)
    inputs = np.asarray(self.device_batch({"inputs": example["inputs"]})["inputs"])  # what the model takes
    self.identity = model_settings(config) | {"inputs": [list(inputs.shape[1:]), str(inputs.dtype)]}
    self.tokens_per_example = inputs.shape[-1] if task.inputs == "token_stream" else None
    init = lambda rng: initial_state(self.model, self.tx, rng, inputs)
    with recorded_bsa_paths() as self.bsa_paths:  # for the summary
      abstract = jax.eval_shape(self.traced(init), jax.random.key(0))
    self.state_sharding = parallel.fsdp_sharding(self.mesh, abstract, parallel.fsdp_min_size(config))
    self.abstract_state = abstract_with_shardings(abstract, self.state_sharding)
    self.optimizer_structure = str(jax.tree.structure(abstract.opt_state))  # a resume must match it
    self.init = self.jit(init, out_shardings=self.state_sharding)
    self.init_optimizer = jax.jit(self.tx.init, in_shardings=(self.state_sharding.params,),
                                  out_shardings=self.state_sharding.opt_state)
    batch_sharding = parallel.batch_sharding(self.mesh)
    replicated = parallel.replicated(self.mesh)
    self.step_arguments = dict(model=self.model, task=task, config=config, info=self.info)
    self.train_step = self.jit(functools.partial(steps.train_step, **self.step_arguments, tx=self.tx,
                                                 schedule=self.schedule),
                               in_shardings=(self.state_sharding, batch_sharding),
                               out_shardings=(self.state_sharding, replicated), donate_argnums=0)
    self.eval_step = self.jit(functools.partial(steps.eval_step, **self.step_arguments),
                              in_shardings=(self.state_sharding.params, batch_sharding), out_shardings=replicated)

  def traced(self, fn):
    """`fn` traced for this experiment's devices (`ops.target`): attention paths chosen for them (a TPU
    slice compiled from a CPU host included), Pallas kernels run per shard of the batch axes."""
    @functools.wraps(fn)
    def for_target(*args, **kwargs):
      with target.compiling_for(self.platform, self.mesh, parallel.BATCH_AXES):
        return fn(*args, **kwargs)
    return for_target

  def jit(self, fn, **jit_kwargs):
    """`jax.jit` of `fn` traced for this experiment's devices (`traced`)."""
    return jax.jit(self.traced(fn), **jit_kwargs)

  def checkpointer(self, workdir: str, read_only: bool = False, tolerated: tuple[str, ...] = ()) -> Checkpointer:
    return Checkpointer(workdir, self.identity, keep=self.config.train.keep_checkpoints, read_only=read_only,
                        tolerated=tolerated)

  def compile_train_step(self):
    """-> (the compiled train step, seconds it took, XLA's FLOPs per step and device or None, bytes of
    memory per device or None: {arguments, outputs, temporaries, generated_code, total})."""
    return compile_step(self.train_step, self.abstract_state,
                        self.abstract_batch(self.train_transform, self.config.train.batch_size))

  def compile_eval_step(self):
    """`compile_train_step` for the eval step, at the eval batch."""
    return compile_step(self.eval_step, self.abstract_state.params,
                        self.abstract_batch(self.eval_transform, self.eval_batch_size))

  def abstract_batch(self, transform, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """A global batch of `batch_size` as `transform` shapes the data's examples (the train batch of an
    image task carries random erasing's box, the eval batch does not), sharded over the batch axes."""
    sharding = parallel.batch_sharding(self.mesh)
    return {name: jax.ShapeDtypeStruct((batch_size,) + value.shape[1:], value.dtype, sharding=sharding)
            for name, value in example_batch(self.data.example, 1, transform).items()}

  def device_batch(self, batch, rng=None):
    """`steps.device_batch` for this experiment's task and data."""
    return steps.device_batch(batch, task=self.task, info=self.info, rng=rng)

  def attack_step(self, attack: str, settings: robustness.AttackSettings, source_model: nn.Module | None = None):
    """jit: (params, batch, epsilon, rng) -> `steps.attack_step` (compiled once per batch shape; epsilon
    is traced); with `source_model`, (params, batch, epsilon, rng, source_params): the perturbation crafted
    on that model (a transfer attack; its parameters replicated)."""
    step = functools.partial(steps.attack_step, attack=attack, settings=settings, model=self.model, task=self.task,
                             info=self.info, source_model=source_model)
    replicated = parallel.replicated(self.mesh)
    shardings = (self.state_sharding.params, parallel.batch_sharding(self.mesh), replicated, replicated)
    return self.jit(step, in_shardings=shardings + ((replicated,) if source_model is not None else ()),
                    out_shardings=replicated)

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


def compile_step(step, *abstract_args):
  """Lowers and compiles a jitted step (`Experiment.jit`) for its arguments' devices -> (compiled, seconds,
  FLOPs per device or None, memory bytes per device or None)."""
  start = time.perf_counter()
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


def compile_for_slice(config: ml_collections.ConfigDict, topology: str) -> dict:
  """The train and eval steps of `config` compiled by libtpu for the TPU slice `topology` (`v5e:2x2`) on
  this host, from the config alone (no dataset; `assumed` lists the data-given sizes taken as assumed) ->
  {topology, chips, device_kind, mesh, bytes_per_chip (the train step's arguments, outputs, temporaries,
  generated_code, total), eval_bytes_per_chip, chip_bytes, fits, flops_per_chip, compile_seconds,
  attention_path, assumed, refused}. A program larger than a chip's HBM, which libtpu refuses to compile,
  gives fits False, `refused` the step and libtpu's reason, and None for the steps not compiled. XLA's
  FLOPs do not count Pallas kernels (BSA's flash path)."""
  devices = parallel.tpu_slice(topology)
  experiment = Experiment(config, sources.describe(config), devices=devices)
  capacity = parallel.device_bytes(devices)
  report = {"topology": topology, "chips": len(devices), "device_kind": devices[0].device_kind,
            "mesh": dict(experiment.mesh.shape), "chip_bytes": capacity,
            "attention_path": console.attention_summary(experiment.model.config.attention, experiment.bsa_paths)
            .removeprefix("attention: "), "assumed": experiment.data.assumed}
  memory, seconds, flops, refused = {}, {}, {}, None
  for step, compile_it in (("train", experiment.compile_train_step), ("eval", experiment.compile_eval_step)):
    try:
      _, seconds[step], flops[step], memory[step] = compile_it()
    except jax.errors.JaxRuntimeError as error:
      reason = parallel.hbm_refusal(error)
      if reason is None:
        raise
      refused = f"{step} step: {reason}"
      break
  fits = False if refused else None if capacity is None else max(m["total"] for m in memory.values()) <= capacity
  return report | {"fits": fits, "refused": refused, "bytes_per_chip": memory.get("train"),
                   "eval_bytes_per_chip": memory.get("eval"), "flops_per_chip": flops.get("train"),
                   "compile_seconds": {step: round(value, 1) for step, value in seconds.items()}}

