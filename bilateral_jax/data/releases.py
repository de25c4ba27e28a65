"""Published datasets' own files (aclImdb, AAN, CIFAR python batches, Pathfinder's release) converted once
into TFDS datasets (`converted`), read back like the datasets made here (`builders.prepare`)."""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from bilateral_jax import storage
from bilateral_jax.data import builders


@dataclasses.dataclass
class ReleaseConfig(tfds.core.BuilderConfig):
  """A published dataset's files (`release`, a key of RELEASES) in `directory`, converted once. The name
  is a digest of the release, the directory and its files' names, sizes and times, so that changed files
  build a new dataset."""
  release: str = ""
  directory: str = ""

  @classmethod
  def make(cls, release: str, directory: str) -> ReleaseConfig:
    root = storage.path(directory)
    files = [[str(p.relative_to(root)), *builders.stamp(p)] for p in builders.files_matching(root, "**/*")]
    named = builders.named(release, dict(directory=str(root), files=files))
    named["description"] = f"{release} from {root}: {len(files)} files, {sum(f[1] for f in files)} bytes"
    return cls(**named, release=release, directory=str(root))


def _aclimdb(root: epath.Path, split: str):
  """aclImdb: {train,test}/{neg,pos}/*.txt, label 1 = positive."""
  for label, name in enumerate(("neg", "pos")):
    for path in sorted((root / split / name).glob("*.txt")):
      yield {"text": builders.read_text(path), "label": label}


AAN_FILES = {"train": "new_aan_pairs.train.tsv", "validation": "new_aan_pairs.eval.tsv",
             "test": "new_aan_pairs.test.tsv"}


def _aan(root: epath.Path, split: str):
  """LRA Retrieval TSV lines `label\tid1\tid2\ttext1\ttext2`, label 1 if the first paper cites the second."""
  path = root / AAN_FILES[split]
  examples = 0
  for number, line in builders.text_lines(path):
    fields = line.split("\t")
    try:
      label = int(float(fields[0]))
    except ValueError:
      label = -1
    if len(fields) != 5 or label not in (0, 1):
      raise ValueError(f"{path}:{number}: expected 'label(0/1)\\tid1\\tid2\\ttext1\\ttext2', got {line[:80]!r}...")
    examples += 1
    yield {"first": fields[3], "second": fields[4], "label": label}
  if not examples:
    raise ValueError(f"{path}: no examples")


CIFAR_FILES = {  # name -> (train files, test files, label key, classes)
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": (["train"], ["test"], b"fine_labels", 100),
}


def _cifar(name: str):
  def read(root: epath.Path, split: str):
    """CIFAR python batches: pickled dicts with `data` [n, 3072] (channel-major) and labels."""
    train_files, test_files, label_key, _ = CIFAR_FILES[name]
    for file in train_files if split == "train" else test_files:
      with (root / file).open("rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
      images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
      for image, label in zip(images, batch[label_key]):
        yield {"image": image, "label": int(label)}
  return read


PATHFINDER_DIFFICULTIES = {"easy": "curv_baseline", "medium": "curv_contour_length_9",
                           "hard": "curv_contour_length_14"}


def _metadata_order(path: epath.Path):
  """Metadata files in numeric order (`0.npy`, `1.npy`, ..., `10.npy`), as the release numbers them."""
  return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.name)


def _pathfinder(root: epath.Path, split: str):
  """Pathfinder release, one difficulty folder: metadata/*.npy text lines `<imgs subdir> <file> <index>
  <label> ...` (e.g. `imgs/0 sample_0.png 0 0 1.0 6 2 2 0.5 1 1`, label at index 3) naming grayscale
  PNGs; one split, `examples`, in metadata order. An empty PNG file becomes an empty [0, 0] image, which
  the reader drops after splitting, as LRA does."""
  from PIL import Image

  for path in sorted((root / "metadata").glob("*.npy"), key=_metadata_order):
    for number, line in enumerate(path.read_text().splitlines(), start=1):
      fields = line.split()
      if len(fields) < 4 or fields[3] not in ("0", "1"):
        raise ValueError(f"{path}:{number}: expected '<imgs dir> <file> <index> <label 0/1> ...', got {line!r}")
      image_path = root / fields[0] / fields[1]
      if not image_path.is_file():
        raise FileNotFoundError(f"{path}:{number}: image {image_path} not found")
      if image_path.stat().length == 0:
        image = np.zeros((0, 0), np.uint8)
      else:
        with image_path.open("rb") as file, Image.open(file) as png:
          image = np.asarray(png.convert("L"))
      yield {"image": image, "label": int(fields[3])}


@dataclasses.dataclass(frozen=True)
class Release:
  features: dict
  splits: tuple[str, ...]
  read: callable  # (directory, split) -> example dicts


def _image_release(shape, classes: int, splits, read) -> Release:
  encoding = "zlib" if shape.count(None) > 1 else "none"  # TFDS wants an encoding for several unknown sides
  return Release({"image": tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=encoding),
                  "label": tfds.features.ClassLabel(num_classes=classes)}, splits, read)


RELEASES = {
    "aclimdb": Release({"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)},
                       ("train", "test"), _aclimdb),
    "aan": Release({"first": tfds.features.Text(), "second": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(num_classes=2)}, tuple(AAN_FILES), _aan),
    "cifar10": _image_release((32, 32, 3), 10, ("train", "test"), _cifar("cifar10")),
    "cifar100": _image_release((32, 32, 3), 100, ("train", "test"), _cifar("cifar100")),
    "pathfinder": _image_release((None, None), 2, ("examples",), _pathfinder),
}


class Converted(tfds.core.GeneratorBasedBuilder):
  """A published dataset converted from its own files (`ReleaseConfig`), split as its release is."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Pathfinder: metadata files in numeric order, empty images kept as [0, 0]."}

  def _info(self) -> tfds.core.DatasetInfo:
    release = RELEASES[self.builder_config.release]
    return tfds.core.DatasetInfo(builder=self, description=f"{self.builder_config.release}, converted",
                                 features=tfds.features.FeaturesDict(release.features), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in RELEASES[self.builder_config.release].splits}

  def _generate_examples(self, split: str):
    read = RELEASES[self.builder_config.release].read
    yield from enumerate(read(storage.path(self.builder_config.directory), split))


def converted(release: str, directory: str, tfds_dir: str, split: str):
  """The TFDS data source of `split` of a release converted from `directory` (built on first use)."""
  return builders.prepare(Converted, ReleaseConfig.make(release, directory), tfds_dir).as_data_source(split=split)
