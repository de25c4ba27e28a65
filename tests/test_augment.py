"""DeiT augmentation: each per-example op, mixup/cutmix/label smoothing, and their place in the pipeline.

Each op's defining property (solarize's threshold, posterize's bits, autocontrast's and equalize's lookup
tables as PIL computes them, where shear and translate move a pixel); repeated augmentation shows each
example 3 times, differently augmented; 1 and 2 processes see the same augmented global batches."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bilateral_jax.data import augment, core, pipeline, sources


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
  source = core.ArraySource(core.DatasetInfo(), inputs=np.stack([image(i, (12, 12, 3)) for i in range(12)]),
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
  source = core.ArraySource(core.DatasetInfo(), inputs=np.stack([image(i, (12, 12, 3)) for i in range(16)]),
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
    config = tiny_config(**{"augment.hflip": True})
    experiments.Experiment(config, sources.describe(config))


def test_classification_switches_on_segmentation_are_refused(tmp_path):
  from bilateral_jax import experiments
  from tests.test_training import small_config
  with pytest.raises(ValueError, match="augment.hflip apply to image classification, not segmentation"):
    config = small_config("segmenter_ade20k", tmp_path, **{"augment.hflip": True})
    experiments.Experiment(config, sources.describe(config))
  with pytest.raises(ValueError, match="apply to classifiers, not 'segmenter'"):
    config = small_config("segmenter_ade20k", tmp_path, **{"augment.label_smoothing": 0.1})
    experiments.Experiment(config, sources.describe(config))


def rand_augment_op(name, x, m, seed=0):
  from PIL import Image
  return np.asarray(augment.RAND_AUGMENT_OPS[name](Image.fromarray(x), m, np.random.default_rng(seed)))


def every_value(shape=(16, 16)):
  """uint8 [16, 16, 3] holding each value 0..255 once per channel, in a different order per channel."""
  values = np.arange(256, dtype=np.uint8)
  return np.stack([np.roll(values, 85 * c).reshape(shape) for c in range(3)], axis=-1)


def test_solarize_inverts_exactly_the_pixels_at_or_above_the_threshold():
  """PIL's solarize: v >= threshold -> 255 - v; the threshold falls from 256 (m = 0, nothing) to 0 with
  magnitude, as timm's increasing variant: 256 - int(256 m)."""
  x = every_value()
  for m, threshold in ((0.0, 256), (0.5, 128), (0.9, 26), (1.0, 0)):
    want = np.where(x >= threshold, 255 - x, x)
    np.testing.assert_array_equal(rand_augment_op("solarize", x, m), want, err_msg=f"m={m}")
  out = rand_augment_op("solarize", x, 0.5)
  assert np.all(out[x == 127] == 127) and np.all(out[x == 128] == 127)  # the boundary value is inverted


def test_posterize_keeps_exactly_the_top_bits():
  """PIL's posterize keeps the `bits` most significant bits and zeroes the rest; bits falls from 8 (m = 0)
  to 4 (m = 1): 8 - int(4 m)."""
  x = every_value()
  for m, bits in ((0.0, 8), (0.5, 6), (0.9, 5), (1.0, 4)):
    want = x & np.uint8((0xFF << (8 - bits)) & 0xFF)
    out = rand_augment_op("posterize", x, m)
    np.testing.assert_array_equal(out, want, err_msg=f"m={m}")
    assert len(np.unique(out[..., 0])) == 2**bits, m


def test_autocontrast_stretches_each_channel_to_the_full_range_and_keeps_a_constant_one():
  """PIL's autocontrast (cutoff 0), per channel: v -> int(v * scale - lo * scale), scale = 255 / (hi - lo), so
  lo -> 0 and hi -> 255 (254 where the float product falls an ulp short); a constant channel is left as it is."""
  rng = np.random.default_rng(4)
  x = np.stack([rng.integers(40, 201, (12, 14)), np.full((12, 14), 77), rng.integers(0, 30, (12, 14))],
               axis=-1).astype(np.uint8)
  x[0, 0] = (40, 77, 0)
  x[0, 1] = (200, 77, 29)  # each varying channel reaches its bounds
  out = rand_augment_op("autocontrast", x, 0.9)
  for c in (0, 2):
    lo, hi = int(x[..., c].min()), int(x[..., c].max())
    scale = 255.0 / (hi - lo)
    lut = np.clip((np.arange(256) * scale - lo * scale).astype(np.int64), 0, 255)  # int() truncates, as PIL
    np.testing.assert_array_equal(out[..., c], lut[x[..., c]], err_msg=f"channel {c}")
    assert out[..., c].min() == 0 and out[..., c].max() in (254, 255)  # hi * scale may truncate to 254
    np.testing.assert_allclose(out[..., c], (x[..., c] - lo) * 255.0 / (hi - lo), atol=1.0)  # linear
  np.testing.assert_array_equal(out[..., 1], x[..., 1])


def pil_equalize_reference(x):
  """PIL's ImageOps.equalize written out: per channel, step = (pixels - those of the top occupied value) // 255,
  and v -> (step // 2 + #pixels below v) // step; identity for a channel with one value or step 0."""
  out = np.empty_like(x)
  for c in range(x.shape[-1]):
    counts = np.bincount(x[..., c].ravel(), minlength=256)
    occupied = counts[counts > 0]
    step = (occupied.sum() - occupied[-1]) // 255 if len(occupied) > 1 else 0
    if step == 0:
      lut = np.arange(256)
    else:
      below = np.concatenate([[0], np.cumsum(counts)[:-1]])
      lut = np.minimum((step // 2 + below) // step, 255)  # the top values reach 256: PIL's lookup clips
    out[..., c] = lut[x[..., c]]
  return out


def test_equalize_flattens_each_channel_histogram_as_pil_does():
  rng = np.random.default_rng(5)
  x = np.stack([np.clip(rng.normal(100, 12, (40, 48)), 0, 255), rng.integers(30, 60, (40, 48)),
                np.full((40, 48), 9)], axis=-1).astype(np.uint8)
  out = rand_augment_op("equalize", x, 0.9)
  np.testing.assert_array_equal(out, pil_equalize_reference(x))
  for c in (0, 1):  # peaked inputs, flat outputs: each quarter of the range holds about a quarter of the pixels
    quarters = np.histogram(out[..., c], bins=4, range=(0, 256))[0] / out[..., c].size
    assert np.all((quarters > 0.15) & (quarters < 0.35)), (c, quarters)
  assert np.histogram(x[..., 0], bins=4, range=(0, 256))[0].max() > 0.9 * x[..., 0].size
  np.testing.assert_array_equal(out[..., 2], x[..., 2])  # a constant channel is left as it is


def seed_with_sign(sign):
  """A seed whose Generator's first `choice([-1, 1])` (the op's direction) is `sign`."""
  return next(s for s in range(100) if np.random.default_rng(s).choice([-1, 1]) == sign)


def nearest_affine_reference(x, coefficients, fill):
  """PIL's AFFINE transform with nearest resampling: output pixel (col, row) takes the input pixel under
  (a (col + 1/2) + b (row + 1/2) + c, d (col + 1/2) + e (row + 1/2) + f), or `fill` off the image."""
  a, b, c, d, e, f = coefficients
  rows, cols = np.mgrid[:x.shape[0], :x.shape[1]] + 0.5
  src_col, src_row = np.floor(a * cols + b * rows + c), np.floor(d * cols + e * rows + f)
  inside = (src_col >= 0) & (src_col < x.shape[1]) & (src_row >= 0) & (src_row < x.shape[0])
  taken = x[np.where(inside, src_row, 0).astype(int), np.where(inside, src_col, 0).astype(int)]
  return np.where(inside[..., None], taken, np.uint8(fill))


@pytest.mark.parametrize("name", ["shear_x", "shear_y", "translate_x", "translate_y"])
def test_shear_and_translate_move_a_pixel_where_the_affine_map_says(name):
  """timm's shear (factor 0.3 m) and translate (0.45 m of the width or height), in a random direction,
  as PIL AFFINE maps (output -> input) with grey (128) where the input has no pixel."""
  height, width, (row, col) = 16, 20, (10, 9)
  x = np.zeros((height, width, 3), np.uint8)
  x[row, col] = 255
  for sign in (1, -1):
    m = 0.5 if name.startswith("shear") else 0.4
    s, t_x, t_y = 0.3 * m * sign, 0.45 * m * sign * width, 0.45 * m * sign * height
    coefficients, moved = {  # output (col, row) <- input (a col + b row + c, d col + e row + f); where 255 lands
        "shear_x": ((1, s, 0, 0, 1, 0), (row, col - 2 * sign)),  # col + 0.5 + 0.15 * 10.5 -> col + 2
        "shear_y": ((1, 0, 0, s, 1, 0), (row - 1 * sign, col)),  # row + 0.5 + 0.15 * 9.5 -> row + 1
        "translate_x": ((1, 0, t_x, 0, 1, 0), (row, col - 4 * sign)),  # 0.45 * 0.4 * 20 = 3.6 -> 4
        "translate_y": ((1, 0, 0, 0, 1, t_y), (row - 3 * sign, col)),  # 0.45 * 0.4 * 16 = 2.88 -> 3
    }[name]
    out = rand_augment_op(name, x, m, seed=seed_with_sign(sign))
    np.testing.assert_array_equal(out, nearest_affine_reference(x, coefficients, 128), err_msg=f"sign {sign}")
    bright = np.argwhere(out[..., 0] == 255)
    np.testing.assert_array_equal(bright, [moved], err_msg=f"sign {sign}")
    assert set(np.unique(out)) == {0, 128, 255}  # the grey fill where the map leaves the image
