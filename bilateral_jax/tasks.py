"""What each backbone is trained to do: weighted loss sums and metric sums for a batch.

Sums (not means) so that gradient accumulation and multi-batch evaluation add up exactly; the final
metric is the sum divided by `weight`.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import optax


def classification(logits, batch) -> dict[str, jnp.ndarray]:
  """logits [b, classes], batch label [b] (or soft `label_probs` [b, classes] from mixup/cutmix/label
  smoothing, whose argmax is then the label for accuracy), weight [b] -> sums of loss, correct, weight."""
  weight = batch["weight"]
  logits = logits.astype(jnp.float32)
  if "label_probs" in batch:
    loss = optax.softmax_cross_entropy(logits, batch["label_probs"])
    label = jnp.argmax(batch["label_probs"], axis=-1)
  else:
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    label = batch["label"]
  correct = jnp.argmax(logits, axis=-1) == label
  return {"loss": jnp.sum(loss * weight), "accuracy": jnp.sum(correct * weight), "weight": jnp.sum(weight)}


def language_modeling(logits, batch) -> dict[str, jnp.ndarray]:
  """logits [b, n, vocab], batch targets [b, n], weight [b, n] (0 = padding) -> per-token sums."""
  weight = batch["weight"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["targets"])
  correct = jnp.argmax(logits, axis=-1) == batch["targets"]
  return {"loss": jnp.sum(loss * weight), "accuracy": jnp.sum(correct * weight), "weight": jnp.sum(weight)}


TASKS: dict[str, Callable] = {"classifier": classification, "vit": classification, "lm": language_modeling}


def finalize(sums: dict[str, float]) -> dict[str, float]:
  """Sums -> means over the weight (loss, accuracy); `examples` is the weight itself."""
  weight = max(float(sums["weight"]), 1e-12)
  metrics = {name: float(value) / weight for name, value in sums.items() if name != "weight"}
  metrics["examples"] = float(sums["weight"])
  return metrics
