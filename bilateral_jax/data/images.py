"""Image datasets: CIFAR-10/100, ImageNet-1k, ADE20K, and scikit-learn's 8 x 8 digits."""
from __future__ import annotations

import dataclasses
import importlib.util
import pathlib

import ml_collections
import numpy as np
from etils import epath

from bilateral_jax import storage
from bilateral_jax.data import augment, builders, core, releases

CIFAR_STATS = {  # per-channel mean and std of the training images
    "cifar10": (np.asarray([0.4914, 0.4822, 0.4465], np.float32), np.asarray([0.2470, 0.2435, 0.2616], np.float32)),
    "cifar100": (np.asarray([0.5071, 0.4865, 0.4409], np.float32), np.asarray([0.2673, 0.2564, 0.2762], np.float32)),
}
def cifar_part(name: str, config: ml_collections.ConfigDict, tfds_split: str):
  """A TFDS split (slices allowed: `train[:90%]`) of CIFAR-10/100: from the python batches in
  `data.directory` (converted to TFDS once, in file order), or, with no directory, from TFDS
  `cifar10`/`cifar100` in `data.tfds_dir`."""
  if not config.directory:
    return core.catalog_source(name, config, tfds_split)
  train_files, test_files, _, _ = releases.CIFAR_FILES[name]
  core.require_files(storage.path(config.directory), train_files + test_files, name.upper(),
                 f"the '{name.upper()} python version' archive, extracted")
  return releases.converted(name, config.directory, config.tfds_dir, tfds_split)


def images_and_labels(source, indices) -> tuple[np.ndarray, np.ndarray]:
  examples = [source[i] for i in indices]
  return (np.stack([e["image"] for e in examples]).astype(np.uint8),
          np.asarray([e["label"] for e in examples], np.int32))


def _cifar_info(name: str) -> core.DatasetInfo:
  return core.DatasetInfo(num_classes=releases.CIFAR_FILES[name][3], image_stats=CIFAR_STATS[name], image_size=32)


def _cifar(name: str):
  def load(config: ml_collections.ConfigDict, split: str) -> core.ArraySource:
    """uint8 images [32, 32, 3] (the pipeline normalises them); validation is `data.validation_size`
    train images held out by a seeded permutation."""
    images, labels = images_and_labels(*core.held_out_split(lambda part: cifar_part(name, config, part), config, split))
    return core.ArraySource(_cifar_info(name), inputs=images, label=labels, weight=np.ones(len(labels), np.float32))

  return load


def _read_image(path: epath.Path, mode: str) -> np.ndarray:
  from PIL import Image

  with path.open("rb") as file, Image.open(file) as image:
    return np.asarray(image.convert(mode) if mode else image)


def _labelled_image(example) -> dict[str, np.ndarray]:
  """A uint8 RGB image of its own size (the pipeline crops it, see `augment.image_transform`) and its
  label, from a (path, label) pair or a TFDS `image`/`label` example."""
  if isinstance(example, dict):
    pixels, label = np.asarray(example["image"]), example["label"]
  else:
    pixels, label = _read_image(example[0], "RGB"), example[1]
  return {"inputs": pixels, "label": np.int32(label), "weight": np.float32(1.0)}


IMAGENET_CLASSES = 1000  # TFDS imagenet2012's labels


def _imagenet_info(config: ml_collections.ConfigDict) -> core.DatasetInfo:
  """ImageNet's info but its classes (the class folders decide them)."""
  return core.DatasetInfo(image_stats=(augment.IMAGENET_MEAN, augment.IMAGENET_STD), image_size=config.image_size,
                     crop_fraction=config.crop_fraction)


def imagenet(config: ml_collections.ConfigDict, split: str) -> core.DecodedSource:
  """ImageNet-1k in the train/val folder layout in `data.directory` (`train/<wnid>/*.JPEG`,
  `val/<wnid>/*.JPEG`; classes are the sorted train folder names), or, with no directory, TFDS
  `imagenet2012` in `data.tfds_dir`. The validation and test splits are both ImageNet's validation set."""
  info = _imagenet_info(config)
  if not config.directory:
    source = core.catalog_source("imagenet2012", config, "train" if split == "train" else "validation")
    return core.DecodedSource(source, _labelled_image, dataclasses.replace(info, num_classes=IMAGENET_CLASSES))
  root = storage.path(config.directory)
  folder = root / ("train" if split == "train" else "val")
  if not (root / "train").is_dir() or not folder.is_dir():
    raise FileNotFoundError(f"ImageNet: {root / 'train'} and {root / 'val'} (one folder per class) not found "
                            "in data.directory; extract ILSVRC2012 train and val into class folders")
  classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
  files = [(path, label) for label, name in enumerate(classes)
           for path in builders.files_matching(folder / name, "*")]  # a listing per folder, no call per file
  return core.DecodedSource(files, _labelled_image, dataclasses.replace(info, num_classes=len(classes)))


def _scene_parse(example) -> dict[str, np.ndarray]:
  """ADE20K: a uint8 image [h, w, 3] and its annotation `label` [h, w] (0 = unlabelled, c = class c - 1),
  from an (image, annotation) file pair or a TFDS `scene_parse150` example."""
  if isinstance(example, dict):  # TFDS: the annotation PNG decodes to 3 equal channels
    image, annotation = example["image"], example["annotation"][..., 0]
  else:
    image, annotation = _read_image(example[0], "RGB"), _read_image(example[1], "")
    if annotation.shape != image.shape[:2]:
      raise ValueError(f"{example[1]}: annotation of shape {annotation.shape} for an image of {image.shape[:2]}")
  return {"inputs": np.asarray(image, np.uint8), "label": np.asarray(annotation, np.uint8),
          "weight": np.float32(1.0)}


def _ade20k_info(config: ml_collections.ConfigDict) -> core.DatasetInfo:
  return core.DatasetInfo(num_classes=150, image_stats=(augment.IMAGENET_MEAN, augment.IMAGENET_STD),
                     image_size=config.image_size, scale_range=tuple(config.scale_range))


def ade20k(config: ml_collections.ConfigDict, split: str) -> core.DecodedSource:
  """ADE20K (SceneParsing, 150 classes) from the release layout in `data.directory`
  (ADEChallengeData2016: images/{training,validation}/*.jpg, annotations/{training,validation}/*.png), or,
  with no directory, from TFDS `scene_parse150` in `data.tfds_dir`. The validation and test splits are
  both ADE20K's validation set (its test labels are not public)."""
  info = _ade20k_info(config)
  if not config.directory:
    source = core.catalog_source("scene_parse150", config, "train" if split == "train" else "test")
    return core.DecodedSource(source, _scene_parse, info)
  root = storage.path(config.directory)
  folder = "training" if split == "train" else "validation"
  images, annotations = root / "images" / folder, root / "annotations" / folder
  if not images.is_dir() or not annotations.is_dir():
    raise FileNotFoundError(f"ADE20K: {images} and {annotations} not found; set data.directory to the extracted "
                            "ADEChallengeData2016 (the MIT Scene Parsing benchmark's ADEChallengeData2016.zip)")
  pairs = []
  for image in sorted(images.glob("*.jpg")):
    annotation = annotations / f"{image.stem}.png"
    if not annotation.is_file():
      raise FileNotFoundError(f"ADE20K: {image} has no annotation {annotation}")
    pairs.append((image, annotation))
  if not pairs:
    raise FileNotFoundError(f"ADE20K: no *.jpg images in {images}")
  return core.DecodedSource(pairs, _scene_parse, info)


def sklearn_digits(config: ml_collections.ConfigDict, split: str) -> core.ArraySource:
  """The 1,797 handwritten digits (8 x 8, 17 grey levels, UCI's optdigits test part) that scikit-learn
  ships as `sklearn/datasets/data/digits.csv.gz` (read directly; scikit-learn is not imported). Levels
  0..16 become uint8 pixels round(v * 255 / 16) [8, 8, 1]. A permutation seeded by `data.seed` holds out
  `data.test_size`, then `data.validation_size` examples; the rest is train. image_stats: of the train
  pixels."""
  spec = importlib.util.find_spec("sklearn")
  path = pathlib.Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
  if path is None or not path.is_file():
    raise FileNotFoundError("sklearn_digits: scikit-learn's digits.csv.gz not found; `make venv` installs "
                            "scikit-learn (without its dependencies), or `pip install --no-deps scikit-learn`")
  table = np.loadtxt(path, delimiter=",", dtype=np.int64)
  images = np.round(table[:, :64] * (255 / 16)).astype(np.uint8).reshape(-1, 8, 8, 1)
  labels = table[:, 64].astype(np.int32)
  order = np.random.default_rng(config.seed).permutation(len(labels))
  test, validation = order[:config.test_size], order[config.test_size:config.test_size + config.validation_size]
  train = order[config.test_size + config.validation_size:]
  pixels = images[train].astype(np.float64) / 255.0
  stats = (np.asarray([pixels.mean()], np.float32), np.asarray([pixels.std()], np.float32))
  chosen = {"train": train, "validation": validation, "test": test}[split]
  return core.ArraySource(core.DatasetInfo(num_classes=10, image_stats=stats, image_size=8), inputs=images[chosen],
                          label=labels[chosen], weight=np.ones(len(chosen), np.float32))


# Pixel statistics for a description whose dataset computes them from its pixels: not the data's, they only
# give the normalisation its shapes.
PLACEHOLDER_STATS = (np.asarray([0.5], np.float32), np.asarray([0.25], np.float32))


def _image_classification(info, side, channels: int = 3):
  """`Dataset.describe` of image classification: a uint8 image [side, side, channels] (the image transforms
  crop real images of other sizes to the same shape) and an int32 label; info(config.data), side(config.data)."""
  return lambda config: core.Description(
      info(config.data), core.labelled(np.zeros((side(config.data),) * 2 + (channels,), np.uint8)))


def _describe_imagenet(config: ml_collections.ConfigDict) -> core.Description:
  description = _image_classification(_imagenet_info, lambda data: data.image_size)(config)
  classes, assumed = (IMAGENET_CLASSES, {}) if not config.data.directory else core.assumed(  # else TFDS imagenet2012
      config, "num_classes", IMAGENET_CLASSES, "ImageNet-1k's classes; the class folders under data.directory decide")
  return dataclasses.replace(description, info=dataclasses.replace(description.info, num_classes=classes),
                             assumed=assumed)


def _describe_ade20k(config: ml_collections.ConfigDict) -> core.Description:
  """A uint8 image [image_size, image_size, 3] and its uint8 annotation [image_size, image_size]."""
  side = config.data.image_size
  return core.Description(_ade20k_info(config.data), core.labelled(np.zeros((side, side, 3), np.uint8),
                                                                    np.zeros((side, side), np.uint8)))


DATASETS = {
    "cifar10": core.Dataset(_cifar("cifar10"),
                            _image_classification(lambda data: _cifar_info("cifar10"), lambda data: 32)),
    "cifar100": core.Dataset(_cifar("cifar100"),
                             _image_classification(lambda data: _cifar_info("cifar100"), lambda data: 32)),
    "imagenet": core.Dataset(imagenet, _describe_imagenet),
    "ade20k": core.Dataset(ade20k, _describe_ade20k),
    "sklearn_digits": core.Dataset(sklearn_digits, _image_classification(
        lambda data: core.DatasetInfo(num_classes=10, image_stats=PLACEHOLDER_STATS, image_size=8), lambda data: 8, 1)),
}
