"""DeiT augmentation: each per-example op, mixup/cutmix/label smoothing, and their place in the pipeline."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bilateral_jax.data import augment, pipeline, sources


def image(seed=0, shape=(20, 28, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_random_resized_crop_is_seeded_and_bounded():
  x = image()
  a = augment.random_resized_crop(x, np.random.default_rng(1), 16)
  b = augment.random_resized_crop(x, np.random.default_rng(1), 16)
  assert a.shape == (16, 16, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
  square = image(shape=(16, 16, 3))
  whole = augment.random_resized_crop(square, np.random.default_rng(2), 16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_array_equal(whole, square)  # the whole image, resized to its own size


def test_flip_rand_augment_and_erasing():
  x = image()
  flips = [augment.horizontal_flip(x, np.random.default_rng(s)) for s in range(20)]
  assert any(np.array_equal(f, x[:, ::-1]) for f in flips) and any(np.array_equal(f, x) for f in flips)
  from PIL import Image
  pil = Image.fromarray(x)
  for name, op in augment.RAND_AUGMENT_OPS.items():
    out = np.asarray(op(pil, 0.9, np.random.default_rng(0)))
    assert out.shape == x.shape and out.dtype == np.uint8, name
  for name in ("identity", "color", "contrast", "brightness", "sharpness", "rotate", "translate_x"):
    np.testing.assert_array_equal(np.asarray(augment.RAND_AUGMENT_OPS[name](pil, 0.0, np.random.default_rng(0))),
                                  x, err_msg=name)  # magnitude 0 changes nothing
  assert augment.rand_augment(x, np.random.default_rng(3), 2, 9).shape == x.shape
  assert not augment.erasing_box((20, 28, 3), np.random.default_rng(0), 0.0).any()
  top, left, h, w = augment.erasing_box((20, 28, 3), np.random.default_rng(0), 1.0)
  assert 0 < h < 20 and 0 < w < 28 and top + h <= 20 and left + w <= 28


def test_normalise_on_the_device_is_the_formula_and_erases_one_rectangle():
  images = np.random.default_rng(1).integers(0, 256, (2, 20, 28, 3), dtype=np.uint8)
  mean, std = augment.IMAGENET_MEAN, augment.IMAGENET_STD
  plain = augment.normalise({"inputs": images, "label": np.arange(2)}, (mean, std))
  np.testing.assert_allclose(np.asarray(plain["inputs"]), (images.astype(np.float32) / 255.0 - mean) / std,
                             rtol=1e-6, atol=1e-6)  # XLA's float32 division may differ from numpy's by an ulp
  boxes = np.stack([augment.erasing_box(images.shape[1:], np.random.default_rng(0), 1.0), np.zeros(4, np.int32)])
  erased = augment.normalise({"inputs": images, "erase": boxes}, (mean, std), jax.random.key(0))
  assert "erase" not in erased
  changed = np.any(np.asarray(erased["inputs"]) != np.asarray(plain["inputs"]), axis=-1)
  top, left, h, w = boxes[0]
  assert changed[0, top:top + h, left:left + w].all() and changed[0].sum() == h * w  # one rectangle of noise
  assert not changed[1].any()  # a zero box erases nothing


def batch(n=6, classes=5):
  rng = np.random.default_rng(0)
  return {"inputs": jnp.asarray(rng.normal(size=(n, 8, 8, 3)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, classes, n)), "weight": jnp.ones(n)}


def test_mixup_cutmix_and_label_smoothing():
  b, classes = batch(), 5
  onehot = np.eye(classes)[np.asarray(b["label"])]
  smooth = augment.mix(b, jax.random.key(0), num_classes=classes, mixup_alpha=0.0, cutmix_alpha=0.0,
                       switch_probability=0.5, label_smoothing=0.1)
  np.testing.assert_allclose(smooth["label_probs"], onehot * 0.9 + 0.02, rtol=1e-6)
  np.testing.assert_array_equal(smooth["inputs"], b["inputs"])
  for seed in range(4):
    up = augment.mix(b, jax.random.key(seed), num_classes=classes, mixup_alpha=0.8, cutmix_alpha=0.0,
                     switch_probability=0.5, label_smoothing=0.0)
    probs = np.asarray(up["label_probs"])
    lam = probs[0, int(b["label"][0])] if b["label"][0] != b["label"][-1] else None
    if lam is not None:
      np.testing.assert_allclose(up["inputs"][0], lam * b["inputs"][0] + (1 - lam) * b["inputs"][-1], rtol=1e-5,
                                 atol=1e-6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    cut = augment.mix(b, jax.random.key(seed), num_classes=classes, mixup_alpha=0.0, cutmix_alpha=1.0,
                      switch_probability=0.5, label_smoothing=0.0)
    own = np.all(np.asarray(cut["inputs"]) == np.asarray(b["inputs"]), axis=-1)  # [n, 8, 8]
    other = np.all(np.asarray(cut["inputs"]) == np.asarray(b["inputs"])[::-1], axis=-1)
    assert np.all(own | other)
    share = own[0].mean()
    np.testing.assert_allclose(np.asarray(cut["label_probs"])[0] @ onehot[0] if b["label"][0] != b["label"][-1]
                               else share, share, rtol=1e-5)


def test_repeated_augmentation_shows_each_example_repeats_times_differently_augmented():
  source = sources.ArraySource(sources.DatasetInfo(), inputs=np.stack([image(i, (12, 12, 3)) for i in range(12)]),
                               label=np.arange(12), weight=np.ones(12, np.float32))
  switches = ml_collections.ConfigDict(dict(random_resized_crop=True, hflip=True, rand_augment_ops=0,
                                            rand_augment_magnitude=9.0, random_erasing=0.0))
  transform = augment.image_transform(switches, size=8, crop_fraction=None, train=True)
  batches = pipeline.train_batches(source, global_batch=6, seed=2, transform=transform, repeats=3)
  epochs = [[next(batches) for _ in range(2)] for _ in range(2)]  # an epoch is 12 examples
  for epoch in epochs:
    labels = np.concatenate([b["label"] for b in epoch])
    inputs = np.concatenate([b["inputs"] for b in epoch])
    assert len(set(labels)) == 4 and np.all(labels.reshape(4, 3) == labels[::3, None])
    for group in inputs.reshape(4, 3, -1):
      assert len({copy.tobytes() for copy in group}) == 3  # three different augmentations
  assert set(np.concatenate([b["label"] for b in epochs[0]])) != set(np.concatenate([b["label"] for b in epochs[1]]))
  with pytest.raises(ValueError, match="repeats must be a positive integer"):
    pipeline.train_batches(source, global_batch=6, seed=2, repeats=0)


def test_augmented_batches_do_not_depend_on_the_process_layout():
  source = sources.ArraySource(sources.DatasetInfo(), inputs=np.stack([image(i, (12, 12, 3)) for i in range(16)]),
                               label=np.arange(16) % 3, weight=np.ones(16, np.float32))
  switches = ml_collections.ConfigDict(dict(random_resized_crop=True, hflip=True, rand_augment_ops=2,
                                            rand_augment_magnitude=9.0, random_erasing=0.5))
  transform = augment.image_transform(switches, size=8, crop_fraction=None, train=True)
  single = pipeline.train_batches(source, global_batch=8, seed=3, transform=transform, repeats=2)
  halves = [pipeline.train_batches(source, global_batch=8, seed=3, process_index=p, process_count=2,
                                   transform=transform, repeats=2) for p in range(2)]
  for _ in range(3):
    whole, parts = next(single), [next(h) for h in halves]
    assert whole["inputs"].shape == (8, 8, 8, 3) and whole["inputs"].dtype == np.uint8
    for key in ("inputs", "erase"):
      np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), whole[key])


def test_image_switches_on_text_data_are_refused(tmp_path):
  from bilateral_jax import experiments
  from tests.test_training import tiny_config
  with pytest.raises(ValueError, match="augment.hflip apply to image datasets"):
    experiments.Experiment(tiny_config(**{"augment.hflip": True}))


def test_classification_switches_on_segmentation_are_refused(tmp_path):
  from bilateral_jax import experiments
  from tests.test_training import small_config
  with pytest.raises(ValueError, match="augment.hflip apply to image classification, not segmentation"):
    experiments.Experiment(small_config("segmenter_ade20k", tmp_path, **{"augment.hflip": True}))
  with pytest.raises(ValueError, match="apply to classifiers, not 'segmenter'"):
    experiments.Experiment(small_config("segmenter_ade20k", tmp_path, **{"augment.label_smoothing": 0.1}))
