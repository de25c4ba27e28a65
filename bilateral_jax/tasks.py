"""What each backbone is trained to do: weighted loss sums and metric sums for a batch.

Sums (not means) so that gradient accumulation and multi-batch evaluation add up exactly; the final
metric is the sum divided by `weight`.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np
import optax


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


def classification(logits, batch) -> dict[str, jnp.ndarray]:
  """logits [b, classes], batch label [b] (or soft `label_probs` [b, classes] from mixup/cutmix/label
  smoothing, whose argmax is then the label for accuracy), weight [b] -> sums of loss, correct, weight."""
  probs = batch.get("label_probs")
  labels = batch["label"] if probs is None else jnp.argmax(probs, axis=-1)
  return _weighted_sums(logits, labels, batch["weight"], probs)


def language_modeling(logits, batch) -> dict[str, jnp.ndarray]:
  """logits [b, n, vocab], batch targets [b, n], weight [b, n] (0 = padding) -> per-token sums."""
  return _weighted_sums(logits, batch["targets"], batch["weight"])


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


TASKS: dict[str, Callable] = {"classifier": classification, "vit": classification, "lm": language_modeling,
                              "segmenter": segmentation}


def finalize(sums: dict) -> dict[str, float]:
  """Sums -> means over the weight (loss, accuracy); `examples` is the weight itself (an integer count); per-class
  intersection and union -> `mean_iou` over the classes that occur (in the labels or the predictions)."""
  weight = max(float(sums["weight"]), 1e-12)
  metrics = {name: float(value) / weight for name, value in sums.items()
             if name not in ("weight", "intersection", "union")}
  metrics["examples"] = int(round(float(sums["weight"])))
  if "union" in sums:
    union = np.asarray(sums["union"], np.float64)
    occurring = union > 0
    metrics["mean_iou"] = float(np.mean(np.asarray(sums["intersection"])[occurring] / union[occurring]))
  return metrics
