"""Task sums against explicit numpy references: segmentation sums and mean IoU, top-5 accuracy."""
import jax
import numpy as np

from bilateral_jax import tasks


def test_segmentation_sums_and_mean_iou_match_a_numpy_reference():
  rng = np.random.default_rng(0)
  classes, shape = 5, (3, 4, 6)
  logits = rng.normal(size=shape + (classes,)).astype(np.float32)
  labels = rng.integers(-1, classes - 1, shape).astype(np.int32)  # class 4 never occurs in the labels
  weight = np.asarray([1.0, 1.0, 0.0], np.float32)  # the last example is evaluation padding
  sums = jax.device_get(tasks.segmentation(logits, {"label": labels, "weight": weight}))

  counted = (labels >= 0) & (weight[:, None, None] > 0)
  predicted = logits.argmax(-1)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  true_log_probs = np.take_along_axis(log_probs, np.maximum(labels, 0)[..., None], -1)[..., 0]
  np.testing.assert_allclose(sums["loss"], -true_log_probs[counted].sum(), rtol=1e-5)
  assert sums["accuracy"] == np.sum(predicted[counted] == labels[counted]) and sums["weight"] == counted.sum()
  ious = []
  for c in range(classes):
    inter = np.sum(counted & (predicted == c) & (labels == c))
    union = np.sum(counted & ((predicted == c) | (labels == c)))
    assert (sums["intersection"][c], sums["union"][c]) == (inter, union)
    if union:
      ious.append(inter / union)
  metrics = tasks.finalize({name: np.asarray(value, np.float64) for name, value in sums.items()})
  np.testing.assert_allclose(metrics["mean_iou"], np.mean(ious), rtol=1e-12)
  np.testing.assert_allclose(metrics["accuracy"], sums["accuracy"] / counted.sum(), rtol=1e-6)


def test_top5_accuracy_matches_a_numpy_reference():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(64, 12)).astype(np.float32)
  labels = rng.integers(0, 12, 64).astype(np.int32)
  weight = (rng.random(64) < 0.8).astype(np.float32)
  sums = jax.device_get(tasks.image_classification(logits, {"label": labels, "weight": weight}))
  label_logit = np.take_along_axis(logits, labels[:, None], -1)
  in_top5 = np.sum(logits > label_logit, axis=-1) < 5  # fewer than 5 classes score above the label
  assert sums["top5_accuracy"] == np.sum(in_top5 * weight) and 0 < sums["top5_accuracy"] < sums["weight"]
  assert sums["accuracy"] == np.sum((logits.argmax(-1) == labels) * weight)
  few = jax.device_get(tasks.image_classification(logits[:, :3], {"label": labels % 3, "weight": weight}))
  assert few["top5_accuracy"] == few["weight"]  # with 3 classes the label is always among the top 5
