"""What each backbone is trained to do, as a registry of `Task`s keyed by `config.model.name`: the loss
and metric sums of a batch, the metrics, what its input is, which attacks apply, and its per-example
transforms. The trainer, eval.py, diagnose.py and study.py ask the task instead of testing names.

Sums (not means) so that gradient accumulation and multi-batch evaluation add up exactly; the final
metric is the sum divided by `weight`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bilateral_jax.data import augment


def _weighted_sums(logits, labels, weight, label_probs=None) -> dict[str, jnp.ndarray]:
  """Cross-entropy (against `label_probs` when given, else the integer `labels`) and accuracy against
  `labels`, each summed with `weight`; the shapes of labels and weight are the logits' minus the last."""
  logits = logits.astype(jnp.float32)
  if label_probs is None:
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  else:
    loss = optax.softmax_cross_entropy(logits, label_probs)
  correct = jnp.argmax(logits, axis=-1) == labels
  return {"loss": jnp.sum(loss * weight), "accuracy": jnp.sum(correct * weight), "weight": jnp.sum(weight)}


def _labels(batch) -> jnp.ndarray:
  """The integer labels [b]: `label`, or the argmax of soft `label_probs` (mixup/cutmix/label smoothing)."""
  probs = batch.get("label_probs")
  return batch["label"] if probs is None else jnp.argmax(probs, axis=-1)


def classification(logits, batch) -> dict[str, jnp.ndarray]:
  """logits [b, classes], batch label [b] (or soft `label_probs` [b, classes] from mixup/cutmix/label
  smoothing, whose argmax is then the label for accuracy), weight [b] -> sums of loss, correct, weight."""
  return _weighted_sums(logits, _labels(batch), batch["weight"], batch.get("label_probs"))


def image_classification(logits, batch) -> dict[str, jnp.ndarray]:
  """`classification`'s sums and `top5_accuracy`: the label among the 5 highest logits (all of them when
  there are fewer classes)."""
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  in_top5 = jnp.any(top5 == _labels(batch)[:, None], axis=-1)
  return classification(logits, batch) | {"top5_accuracy": jnp.sum(in_top5 * batch["weight"])}


def language_modeling(output, batch) -> dict[str, jnp.ndarray]:
  """logits [b, n, vocab] (or an adaptive-softmax output, `models.backbones.AdaptiveOutput`: anything with
  `target_log_probs(targets) -> (log p(target), argmax id)`, each [b, n]), batch targets [b, n], weight
  [b, n] (0 = padding or not scored) -> per-token sums."""
  targets, weight = batch["targets"], batch["weight"]
  if not hasattr(output, "target_log_probs"):
    return _weighted_sums(output, targets, weight)
  log_prob, predicted = output.target_log_probs(targets)
  return {"loss": jnp.sum(-log_prob * weight), "accuracy": jnp.sum((predicted == targets) * weight),
          "weight": jnp.sum(weight)}


def segmentation(logits, batch) -> dict[str, jnp.ndarray]:
  """logits [b, h, w, classes], batch label [b, h, w] (-1 = ignored pixel), weight [b] -> per-pixel sums
  of loss and correct over the counted pixels, and per-class `intersection` and `union` [classes] of the
  predicted and true masks (for the mean IoU)."""
  labels = batch["label"]
  pixel_weight = batch["weight"][:, None, None] * (labels >= 0)
  labels = jnp.maximum(labels, 0)
  sums = _weighted_sums(logits, labels, pixel_weight)
  classes = logits.shape[-1]
  predicted = jnp.argmax(logits, axis=-1)
  count = lambda index, weight: jnp.zeros(classes, jnp.float32).at[index.ravel()].add(weight.ravel())
  intersection = count(labels, pixel_weight * (predicted == labels))
  union = count(labels, pixel_weight) + count(predicted, pixel_weight) - intersection
  return sums | {"intersection": intersection, "union": union}


Transform = Callable[[dict, object], dict]  # (example, numpy rng or None) -> example

PER_IMAGE_AUGMENTATION = ("random_resized_crop", "hflip", "rand_augment_ops", "random_erasing")


def _refuse(augment_config: ml_collections.ConfigDict, names: tuple[str, ...], why: str) -> None:
  used = [name for name in names if (augment_config[name] > 1 if name == "repeats" else augment_config[name])]
  if used:
    raise ValueError(f"augment.{', augment.'.join(used)} {why}")


def no_transforms(config, info) -> tuple[None, None]:
  _refuse(config.augment, PER_IMAGE_AUGMENTATION + ("cutmix_alpha", "repeats"),
          f"apply to image datasets, not {config.data.name!r}")
  return None, None


def image_transforms(config, info) -> tuple[Transform, Transform]:
  """The crop, and `config.augment` when training (uint8 out: `augment.normalise` runs on the device)."""
  if info.image_stats is None:
    raise ValueError(f"dataset {config.data.name!r} has no images (no pixel statistics) for an image model")
  size = dict(size=info.image_size, crop_fraction=info.crop_fraction)
  return tuple(augment.image_transform(config.augment, train=train, **size) for train in (True, False))


SEGMENTATION_INFERENCE = ("single_scale", "sliding_window")


def segmentation_inference(config) -> str:
  """`config.eval.inference` of a segmenter: `single_scale` (the centre crop, the default) or
  `sliding_window` (with `eval.window_stride` and `eval.canvas`)."""
  inference = config.eval.get("inference", "single_scale")
  if inference not in SEGMENTATION_INFERENCE:
    raise ValueError(f"eval.inference={inference!r} is not one of: {', '.join(SEGMENTATION_INFERENCE)}")
  if inference == "sliding_window" and not (
      0 < config.eval.window_stride <= config.data.image_size <= config.eval.canvas):
    raise ValueError(f"eval.window_stride={config.eval.window_stride} and eval.canvas={config.eval.canvas} must "
                     f"satisfy 0 < window_stride <= data.image_size ({config.data.image_size}) <= canvas")
  return inference


def segmentation_transforms(config, info) -> tuple[Transform, Transform]:
  """Segmentation's own crop-and-flip recipe, on image and mask together; evaluation per
  `segmentation_inference`."""
  _refuse(config.augment, PER_IMAGE_AUGMENTATION, f"apply to image classification, not segmentation "
          f"({config.data.name!r} crops, scales and flips image and mask together)")
  size = dict(size=info.image_size, scale_range=info.scale_range)
  canvas = config.eval.canvas if segmentation_inference(config) == "sliding_window" else None
  return (augment.segmentation_transform(train=True, **size),
          augment.segmentation_transform(train=False, canvas=canvas, **size))


INPUT_KINDS = ("tokens", "images", "token_stream")


@dataclasses.dataclass(frozen=True)
class Task:
  """sums(logits, batch) -> weighted sums; metrics: what `finalize` reports (the best-checkpoint metric is
  one of them); inputs: `tokens` (int ids [b, n], 0 = padding), `images` (uint8 [b, h, w, c] from the
  transforms, normalised on the device by `augment.normalise` before the model sees them) or
  `token_stream` (windows of a text, next-token targets); attacks: those of `robustness.ATTACKS` that
  apply; epsilons: their default radii (`robustness`: images in 1/255, token embeddings in fractions of
  the mean embedding norm); mixes: whether mixup, cutmix and label smoothing apply; transforms(config,
  info) -> (train, eval) per-example transforms (None: none)."""
  sums: Callable[[jnp.ndarray, dict], dict]
  metrics: tuple[str, ...]
  inputs: str
  attacks: tuple[str, ...]
  mixes: bool
  transforms: Callable = no_transforms
  epsilons: tuple[float, ...] = ()


TASKS: dict[str, Task] = {
    "classifier": Task(classification, ("loss", "accuracy"), "tokens", ("fgsm", "pgd", "reflect"), mixes=True,
                       epsilons=(0.1, 0.25, 0.5, 1.0)),
    "vit": Task(image_classification, ("loss", "accuracy", "top5_accuracy"), "images", ("fgsm", "pgd", "reflect"),
                mixes=True, transforms=image_transforms, epsilons=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)),
    "lm": Task(language_modeling, ("loss", "accuracy", "perplexity"), "token_stream", ("contamination",),
               mixes=False),
    "segmenter": Task(segmentation, ("loss", "accuracy", "mean_iou"), "images", (), mixes=False,
                      transforms=segmentation_transforms),
}


def get(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"model.name={name!r} is not one of: {', '.join(sorted(TASKS))}")
  return TASKS[name]


def finalize(sums: dict, task: Task | None = None) -> dict[str, float]:
  """Sums -> means over the weight (loss, accuracy); `examples` is the weight itself (an integer count); per-class
  intersection and union -> `mean_iou` over the classes that occur (in the labels or the predictions);
  `perplexity` = exp(loss) when the task reports it."""
  weight = max(float(sums["weight"]), 1e-12)
  metrics = {name: float(value) / weight for name, value in sums.items()
             if name not in ("weight", "intersection", "union")}
  metrics["examples"] = int(round(float(sums["weight"])))
  if "union" in sums:
    union = np.asarray(sums["union"], np.float64)
    occurring = union > 0
    metrics["mean_iou"] = float(np.mean(np.asarray(sums["intersection"])[occurring] / union[occurring]))
  if task is not None and "perplexity" in task.metrics:
    metrics["perplexity"] = float(np.exp(min(metrics["loss"], 700.0)))
  return metrics
