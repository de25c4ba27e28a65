"""What each backbone is trained to do: weighted loss sums and metric sums for a batch.

Sums (not means) so that gradient accumulation and multi-batch evaluation add up exactly; the final
metric is the sum divided by `weight`.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
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


TASKS: dict[str, Callable] = {"classifier": classification, "vit": classification, "lm": language_modeling}


def finalize(sums: dict[str, float]) -> dict[str, float]:
  """Sums -> means over the weight (loss, accuracy); `examples` is the weight itself."""
  weight = max(float(sums["weight"]), 1e-12)
  metrics = {name: float(value) / weight for name, value in sums.items() if name != "weight"}
  metrics["examples"] = float(sums["weight"])
  return metrics
