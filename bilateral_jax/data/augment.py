"""Image augmentation of the DeiT recipe: per-example (random resized crop, flip, RandAugment, random
erasing) in the input pipeline, and mixup/cutmix over the global batch inside the train step.

Per-example transforms take a uint8 image [h, w, 3] and a numpy Generator that grain derives from the
example's index, so a run is deterministic and resumes exactly. Every switch is in `config.augment`;
all are off by default.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32)


def center_crop(image: np.ndarray, size: int, crop_fraction: float) -> np.ndarray:
  """Resize so the shorter side is size / crop_fraction, then crop the centre size x size."""
  pil = Image.fromarray(image)
  scale = size / crop_fraction / min(pil.size)
  pil = pil.resize((max(size, round(pil.width * scale)), max(size, round(pil.height * scale))), Image.BICUBIC)
  left, top = (pil.width - size) // 2, (pil.height - size) // 2
  return np.asarray(pil.crop((left, top, left + size, top + size)))


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """A crop of random area fraction (scale) and aspect ratio (log-uniform), resized to size x size;
  after 10 failed draws, the whole image's central crop at the nearest allowed ratio."""
  height, width = image.shape[:2]
  for _ in range(10):
    area = height * width * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
    if 0 < w <= width and 0 < h <= height:
      top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
      break
  else:
    aspect = min(max(width / height, ratio[0]), ratio[1])
    w, h = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
    w, h = min(w, width), min(h, height)
    top, left = (height - h) // 2, (width - w) // 2
  crop = Image.fromarray(image[top: top + h, left: left + w])
  return np.asarray(crop.resize((size, size), Image.BICUBIC))


def horizontal_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  return image[:, ::-1] if rng.random() < 0.5 else image


def _rotate(img, m, rng):
  return img.rotate(30 * m * rng.choice([-1, 1]), fillcolor=(128, 128, 128))


def _shear(axis):
  def op(img, m, rng):
    s = 0.3 * m * rng.choice([-1, 1])
    coefficients = (1, s, 0, 0, 1, 0) if axis == 0 else (1, 0, 0, s, 1, 0)
    return img.transform(img.size, Image.AFFINE, coefficients, fillcolor=(128, 128, 128))
  return op


def _translate(axis):
  def op(img, m, rng):
    t = 0.45 * m * rng.choice([-1, 1]) * img.size[axis]
    coefficients = (1, 0, t, 0, 1, 0) if axis == 0 else (1, 0, 0, 0, 1, t)
    return img.transform(img.size, Image.AFFINE, coefficients, fillcolor=(128, 128, 128))
  return op


def _enhance(kind):
  def op(img, m, rng):
    return kind(img).enhance(1.0 + 0.9 * m * rng.choice([-1, 1]))
  return op


# RandAugment's 14 operations; m in [0, 1] is magnitude / 10 (timm's 'rand-m9-n2' at magnitude 9).
RAND_AUGMENT_OPS = {
    "identity": lambda img, m, rng: img,
    "autocontrast": lambda img, m, rng: ImageOps.autocontrast(img),
    "equalize": lambda img, m, rng: ImageOps.equalize(img),
    "rotate": _rotate,
    "solarize": lambda img, m, rng: ImageOps.solarize(img, 256 - int(256 * m)),
    "color": _enhance(ImageEnhance.Color),
    "posterize": lambda img, m, rng: ImageOps.posterize(img, max(1, 8 - int(4 * m))),
    "contrast": _enhance(ImageEnhance.Contrast),
    "brightness": _enhance(ImageEnhance.Brightness),
    "sharpness": _enhance(ImageEnhance.Sharpness),
    "shear_x": _shear(0),
    "shear_y": _shear(1),
    "translate_x": _translate(0),
    "translate_y": _translate(1),
}


def rand_augment(image: np.ndarray, rng: np.random.Generator, num_ops: int, magnitude: float) -> np.ndarray:
  """`num_ops` operations drawn uniformly (with replacement), each at `magnitude` (0-10)."""
  pil = Image.fromarray(image)
  names = list(RAND_AUGMENT_OPS)
  for index in rng.integers(0, len(names), num_ops):
    pil = RAND_AUGMENT_OPS[names[index]](pil, magnitude / 10.0, rng)
  return np.asarray(pil)


def erasing_box(shape: tuple[int, ...], rng: np.random.Generator, probability: float,
                scale=(0.02, 1 / 3), ratio=(0.3, 3.3)) -> np.ndarray:
  """Random erasing's rectangle for an image of `shape` [h, w, ...]: int32 [4] (top, left, height,
  width), all 0 when none is drawn (with 1 - `probability`, or after 10 tries that do not fit);
  `normalise` fills it with standard normal noise on the device (timm's 'pixel' mode)."""
  if rng.random() >= probability:
    return np.zeros(4, np.int32)
  height, width = shape[:2]
  for _ in range(10):
    area = height * width * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
    if h < height and w < width:
      return np.asarray([rng.integers(0, height - h), rng.integers(0, width - w), h, w], np.int32)
  return np.zeros(4, np.int32)


def image_transform(augment, *, size: int, crop_fraction: float | None, train: bool):
  """(example, rng) -> example: uint8 `inputs` [h, w, 3] -> uint8 [size, size, 3] (cropped, and augmented
  when training; `normalise` makes them floats on the device), with random erasing's `erase` box [4]
  when `augment.random_erasing` is on."""

  def transform(example, rng):
    image = np.asarray(example["inputs"], np.uint8)
    if train and augment.random_resized_crop:
      image = random_resized_crop(image, rng, size)
    elif crop_fraction is not None or image.shape[:2] != (size, size):
      image = center_crop(image, size, crop_fraction or 1.0)
    if train and augment.hflip:
      image = horizontal_flip(image, rng)
    if train and augment.rand_augment_ops:
      image = rand_augment(image, rng, augment.rand_augment_ops, augment.rand_augment_magnitude)
    erase = {"erase": erasing_box(image.shape, rng, augment.random_erasing)} if train and augment.random_erasing else {}
    return dict(example, inputs=np.ascontiguousarray(image), **erase)

  return transform


def normalise(batch: dict, image_stats, rng: jax.Array | None = None) -> dict:
  """On the device: uint8 `inputs` [b, h, w, c] -> float32 (x / 255 - mean) / std with `image_stats`
  (mean, std) per channel; an `erase` box [b, 4] (see `erasing_box`) is filled with standard normal noise
  drawn from `rng` and dropped from the batch. Images cross to the device as uint8: a quarter of the
  bytes of float32."""
  mean, std = (jnp.asarray(value, jnp.float32) for value in image_stats)
  batch = dict(batch)  # the caller's batch keeps its `erase`
  pixels = (batch["inputs"].astype(jnp.float32) / 255.0 - mean) / std
  erase = batch.pop("erase", None)
  if erase is not None:
    top, left, height, width = (erase[:, i, None, None] for i in range(4))
    rows, cols = jnp.arange(pixels.shape[1])[None, :, None], jnp.arange(pixels.shape[2])[None, None, :]
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    pixels = jnp.where(inside[..., None], jax.random.normal(rng, pixels.shape), pixels)
  batch["inputs"] = pixels
  return batch


def segmentation_transform(*, size: int, scale_range: tuple[float, float], train: bool, canvas: int | None = None):
  """(example, rng) -> example for semantic segmentation: uint8 `inputs` [h, w, 3] and annotation
  `label` [h, w] (0 = unlabelled, c = class c - 1) -> uint8 [size, size, 3] (`normalise` on the device) and int32
  `label` [size, size] with -1 for pixels that do not count.

  Train: the shorter side resized to size x U(scale_range), a random size x size crop (padded with
  uncounted pixels where the image is smaller), a random horizontal flip. Evaluation: the shorter side
  resized to size and the centre crop; or, with `canvas` (sliding-window inference), the whole image with
  its shorter side resized to size (less where the longer side would exceed canvas) at the top left of a
  canvas x canvas frame of black, uncounted pixels (as a training crop is padded), and its extent `size`
  [2] (height, width).
  """

  def transform(example, rng):
    image, annotation = Image.fromarray(np.asarray(example["inputs"], np.uint8)), np.asarray(example["label"])
    scale = size / min(image.size) * (rng.uniform(*scale_range) if train else 1.0)
    if canvas is not None:
      scale = min(scale, canvas / max(image.size))
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    pixels = np.asarray(image.resize(new_size, Image.BILINEAR))
    label = np.asarray(Image.fromarray(annotation.astype(np.uint8)).resize(new_size, Image.NEAREST), np.int32) - 1
    frame = canvas or size
    pad_h, pad_w = max(0, frame - label.shape[0]), max(0, frame - label.shape[1])
    extent = np.asarray(label.shape, np.int32)
    pixels = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)))
    label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=-1)
    if canvas is None:
      spare_h, spare_w = label.shape[0] - size, label.shape[1] - size
      top, left = ((rng.integers(0, spare_h + 1), rng.integers(0, spare_w + 1)) if train
                   else (spare_h // 2, spare_w // 2))
      pixels, label = pixels[top:top + size, left:left + size], label[top:top + size, left:left + size]
    if train and rng.random() < 0.5:
      pixels, label = pixels[:, ::-1], label[:, ::-1]
    extra = {} if canvas is None else {"size": extent}
    return dict(example, inputs=np.ascontiguousarray(pixels), label=np.ascontiguousarray(label), **extra)

  return transform


def mix(batch: dict, rng: jax.Array, *, num_classes: int, mixup_alpha: float, cutmix_alpha: float,
        switch_probability: float, label_smoothing: float) -> dict:
  """Mixup or cutmix of the global batch with itself reversed (inside the jitted step), adding soft
  `label_probs` [b, classes]; with both alphas 0, only label smoothing."""
  labels = jax.nn.one_hot(batch["label"], num_classes)
  labels = labels * (1 - label_smoothing) + label_smoothing / num_classes
  images = batch["inputs"]
  if mixup_alpha or cutmix_alpha:
    k_choice, k_lam, k_box = jax.random.split(rng, 3)
    use_cutmix = (jax.random.uniform(k_choice) < switch_probability) if (mixup_alpha and cutmix_alpha) \
        else jnp.asarray(bool(cutmix_alpha))
    alpha = jnp.where(use_cutmix, cutmix_alpha or 1.0, mixup_alpha or 1.0)
    lam = jax.random.beta(k_lam, alpha, alpha)
    height, width = images.shape[1:3]
    cut_h, cut_w = (height * jnp.sqrt(1 - lam)).astype(jnp.int32), (width * jnp.sqrt(1 - lam)).astype(jnp.int32)
    center = jax.random.randint(k_box, (2,), 0, jnp.asarray([height, width]))
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    inside = ((jnp.abs(rows - center[0]) * 2 < cut_h) & (jnp.abs(cols - center[1]) * 2 < cut_w))
    box_fraction = jnp.mean(inside)
    flipped = images[::-1]
    mixed_cut = jnp.where(inside[None, :, :, None], flipped, images)
    mixed_up = lam * images + (1 - lam) * flipped
    images = jnp.where(use_cutmix, mixed_cut, mixed_up)
    weight = jnp.where(use_cutmix, 1 - box_fraction, lam)  # the share of the original image
    labels = weight * labels + (1 - weight) * labels[::-1]
  return dict(batch, inputs=images, label_probs=labels)
