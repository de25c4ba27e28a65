"""The jitted steps as pure functions of their arguments: `train_step`, `eval_step` and `attack_step`.

Each takes the arrays it works on and, as keywords, what stays fixed for a run (`model`, its `task`,
the resolved `config`, the dataset's `info`; the optimiser `tx` and its `schedule` to train);
`experiments.Experiment` binds those with `functools.partial` and jits them over its mesh. A researcher can
call them directly, under `jax.jit` or not.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from bilateral_jax import robustness, tasks
from bilateral_jax.data import augment, core
from bilateral_jax.models import sliding_window_logits

ERASING_STREAM = 0x65726173  # folded into a train step's key for random erasing's noise: the other draws stay as they are


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def device_batch(batch: dict, *, task: tasks.Task, info: core.DatasetInfo, rng=None) -> dict:
  """A batch as the model takes it, on the device: images normalised (`augment.normalise`, random
  erasing drawn from `rng`); other inputs as they are."""
  return augment.normalise(batch, info.image_stats, rng) if task.inputs == "images" else batch


def batch_sums(params, batch: dict, rng, *, model: nn.Module, task: tasks.Task, config: ml_collections.ConfigDict,
               info: core.DatasetInfo) -> dict:
  """The task's sums of a (device) batch; dropout from `rng` (None: deterministic). A segmenter evaluated
  by sliding window (`eval.inference`) sees each window of its canvas."""
  segment = lambda images: model.apply({"params": params}, images, deterministic=rng is None,
                                       rngs=None if rng is None else {"dropout": rng})
  if rng is None and tasks.segmentation_inference(config) == "sliding_window":
    logits = sliding_window_logits(segment, batch["inputs"], batch["size"], window=info.image_size,
                                   stride=config.eval.window_stride)
  else:
    logits = segment(batch["inputs"])
  return task.sums(logits, batch)


def mixes(config: ml_collections.ConfigDict) -> bool:
  """Whether the train step mixes its batch (mixup, cutmix or label smoothing)."""
  return bool(config.augment.mixup_alpha or config.augment.cutmix_alpha or config.augment.label_smoothing)


def train_step(state: TrainState, batch: dict, *, model: nn.Module, task: tasks.Task,
               config: ml_collections.ConfigDict, info: core.DatasetInfo, tx: optax.GradientTransformation,
               schedule: optax.Schedule) -> tuple[TrainState, dict]:
  """One optimiser step on the batch (in `train.grad_accum_steps` micro-batches) -> (the new state, the
  batch's metrics: the task's sums over the weight, gradient and parameter norms, the learning rate and
  `parameter_summaries`). Randomness: `config.seed` folded with the step."""
  rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
  batch = device_batch(batch, task=task, info=info, rng=jax.random.fold_in(rng, ERASING_STREAM))
  if mixes(config):
    aug = config.augment
    rng, mix_rng = jax.random.split(rng)
    batch = augment.mix(batch, mix_rng, num_classes=config.model.num_classes,
                        mixup_alpha=aug.mixup_alpha, cutmix_alpha=aug.cutmix_alpha,
                        switch_probability=aug.mix_switch_probability, label_smoothing=aug.label_smoothing)
  accum = config.train.grad_accum_steps
  sums = lambda p, b, r: batch_sums(p, b, r, model=model, task=task, config=config, info=info)
  grad_fn = jax.grad(lambda p, b, r: (lambda s: (s["loss"], s))(sums(p, b, r)), has_aux=True)
  if accum == 1:
    grads, totals = grad_fn(state.params, batch, rng)
  else:
    # Micro-batch m takes rows m, m + accum, ... so that every device holds rows of each micro-batch.
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((-1, accum) + x.shape[1:]), 0, 1), batch)

    def accumulate(carry, xs):
      index, micro_batch = xs
      g, s = grad_fn(state.params, micro_batch, jax.random.fold_in(rng, index))
      return jax.tree.map(jnp.add, carry, (g, s)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), rng))
    (grads, totals), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum), micro))
  weight = jnp.maximum(totals["weight"], 1e-12)
  grads = jax.tree.map(lambda g: g / weight, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {name: value / weight for name, value in totals.items() if name != "weight" and value.ndim == 0}
  metrics |= {"grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params),
              "learning_rate": schedule(state.step)} | parameter_summaries(params)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, *, model: nn.Module, task: tasks.Task, config: ml_collections.ConfigDict,
              info: core.DatasetInfo) -> dict:
  """The task's sums of the batch under `params`, deterministic."""
  return batch_sums(params, device_batch(batch, task=task, info=info), None, model=model, task=task, config=config,
                    info=info)


def attack_step(params, batch: dict, epsilon, rng, source_params=None, *, attack: str,
                settings: robustness.AttackSettings, model: nn.Module, task: tasks.Task, info: core.DatasetInfo,
                source_model: nn.Module | None = None) -> dict:
  """The task's sums on the batch attacked by `attack` at `epsilon` (`robustness.attacked_logits`; crafted
  on `source_model` with `source_params` when given: a transfer attack), with `robustness.success_sums`."""
  batch = device_batch(batch, task=task, info=info)
  crafted_by = None if source_model is None else (source_model, source_params)
  logits, _ = robustness.attacked_logits(model, params, batch, attack=attack, epsilon=epsilon, input_kind=task.inputs,
                                         settings=settings, image_stats=info.image_stats, rng=rng,
                                         crafted_by=crafted_by)
  clean = model.apply({"params": params}, batch["inputs"])
  return task.sums(logits, batch) | robustness.success_sums(clean, logits, batch)


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

