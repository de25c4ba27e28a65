"""What every dataset module shares: examples, sources, the description of a dataset, and its registry record.

Every example is a dict of numpy arrays with a `weight` (1 for real examples, 0 for the padding that fills
the last evaluation batch). Classification: `inputs` int32 [length] (0 = padding) and `label`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections
import numpy as np
from etils import epath

SPLITS = ("train", "validation", "test")
MODEL_SIZES = ("vocab_size", "num_classes")  # what a model config may take from the data (0 there: the data's)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a dataset tells the model and the task. vocab_size: token ids (0 = padding); num_classes;
  image_stats: per-channel (mean, std) of the pixels in [0, 1], which the pipeline normalises with;
  image_size and crop_fraction (classification) or scale_range (segmentation) for the image transforms;
  vocabulary (id -> token) and tokenizer (`words`, `chars`, `bytes`) of a language-model corpus."""
  vocab_size: int | None = None
  num_classes: int | None = None
  image_stats: tuple[np.ndarray, np.ndarray] | None = None
  image_size: int | None = None
  crop_fraction: float | None = None
  scale_range: tuple[float, float] | None = None
  vocabulary: tuple | None = None
  tokenizer: str | None = None

  def model_sizes(self) -> dict[str, int]:
    """The sizes a model config may take from the data (`vocab_size`, `num_classes`) that it has."""
    return {name: getattr(self, name) for name in MODEL_SIZES if getattr(self, name) is not None}


class ArraySource:
  """A random-access source over equal-length numpy arrays (the interface grain reads)."""

  def __init__(self, info: DatasetInfo = DatasetInfo(), **arrays: np.ndarray):
    self.info = info
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
      raise ValueError(f"arrays of different lengths: { {k: len(a) for k, a in arrays.items()} }")
    self.arrays = arrays

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {name: array[index] for name, array in self.arrays.items()}


def fit_length(ids: np.ndarray, length: int, overlength: str, where: str) -> np.ndarray:
  """Pads ids with 0 to `length`; a longer sequence is truncated or rejected, as `overlength` says."""
  if len(ids) > length:
    if overlength != "truncate":
      raise ValueError(f"{where}: sequence of {len(ids)} tokens exceeds max_length {length}; set "
                       "data.overlength='truncate' to cut it, or raise data.max_length")
    ids = ids[:length]
  return np.pad(ids, (0, length - len(ids)))


def classification_source(sequences: list[tuple[np.ndarray, int, str]], config, vocab_size: int,
                           num_classes: int) -> ArraySource:
  inputs = np.stack([fit_length(ids, config.max_length, config.overlength, where)
                     for ids, _, where in sequences])
  labels = np.asarray([label for _, label, _ in sequences], np.int32)
  return ArraySource(DatasetInfo(vocab_size=vocab_size, num_classes=num_classes), inputs=inputs, label=labels,
                     weight=np.ones(len(labels), np.float32))


class PaddedSource:
  """A TFDS data source's examples with `inputs` fitted to `max_length` and a `weight` of 1."""

  def __init__(self, source, info: DatasetInfo, max_length: int, overlength: str):
    self.source, self.info, self.max_length, self.overlength = source, info, max_length, overlength

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    example = self.source[index]
    inputs = fit_length(np.asarray(example["inputs"], np.int32), self.max_length, self.overlength,
                        f"example {index}")
    return {"inputs": inputs, "label": np.int32(example["label"]), "weight": np.float32(1.0)}



def require_files(directory: epath.Path, names: list[str], what: str, where_to_get: str) -> None:
  missing = [name for name in names if not (directory / name).is_file()]
  if missing:
    raise FileNotFoundError(f"{what}: {', '.join(missing)} not found in data.directory={str(directory)!r}; "
                            f"expected {', '.join(names)} ({where_to_get})")



def catalog_source(name: str, config: ml_collections.ConfigDict, tfds_split: str):
  """The TFDS data source of a catalog dataset prepared in `data.tfds_dir` (array_record); never downloads."""
  import tensorflow_datasets as tfds

  try:
    return tfds.data_source(name, split=tfds_split, data_dir=config.tfds_dir or None, download=False)
  except Exception as error:  # TFDS raises several kinds; all mean the data is not there in a readable form
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared as array_record in data.tfds_dir={config.tfds_dir!r} ({error}). "
        f"Prepare it where it can be downloaded (`tfds build {name} --file_format=array_record`) and copy "
        f"the data dir here, or set data.directory to the raw files.") from error


def held_out_split(load_part: Callable[[str], Any], config: ml_collections.ConfigDict, split: str):
  """(source, indices) of `split` for a release with train and test parts: test as it is; validation
  `data.validation_size` train examples held out by a seeded permutation (data.seed), train the rest.
  load_part('train' | 'test') -> a random-access source."""
  source = load_part("test" if split == "test" else "train")
  indices = list(range(len(source)))
  if split == "test":
    return source, indices
  order = np.random.default_rng(config.seed).permutation(len(indices))
  size = config.validation_size
  return source, [indices[i] for i in (order[-size:] if split == "validation" else order[:-size])]


class DecodedSource:
  """A random-access source that decodes each example when it is read: decode(example) -> dict of arrays,
  for (path, ...) tuples of files or a TFDS source's examples."""

  def __init__(self, examples, decode: Callable[[Any], dict], info: DatasetInfo):
    self.examples, self.decode, self.info = examples, decode, info

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return self.decode(self.examples[index])


@dataclasses.dataclass(frozen=True)
class Description:
  """What a model and its steps know of a dataset, without its examples: `info`; `example`, one example of
  zeros with the fields, shapes and dtypes of the data's; `assumed`, each data-given size that was neither
  read nor given by the config, with a sentence saying what was assumed (empty when read from the data)."""
  info: DatasetInfo
  example: dict[str, np.ndarray]
  assumed: dict[str, str] = dataclasses.field(default_factory=dict)

  @classmethod
  def of(cls, source) -> Description:
    """The description of a loaded source: its info and the shapes of its first example."""
    return cls(source.info, {name: np.zeros_like(value) for name, value in source[0].items()})


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One dataset, one record: `load(data config, split)` -> a random-access source of its examples (reads
  the data, building a TFDS dataset once where it is made or converted here); `describe(experiment
  config)` -> its `Description` from the config alone, reading nothing."""
  load: Callable[[ml_collections.ConfigDict, str], Any]
  describe: Callable[[ml_collections.ConfigDict], Description]


def assumed(config: ml_collections.ConfigDict, field: str, value: int, why: str) -> tuple[int, dict[str, str]]:
  """The model size `config.model.<field>` where the config gives it (non-zero), else `value`, assumed."""
  if config.model.get(field, 0):
    return config.model[field], {}
  return value, {field: f"{value:,} assumed ({why}); set --config.model.{field} to override"}


def labelled(inputs: np.ndarray, label=np.int32(0)) -> dict[str, np.ndarray]:
  """An example of `inputs` and `label` with weight 1."""
  return {"inputs": inputs, "label": label, "weight": np.float32(1.0)}


def token_classification(shape: Callable[[ml_collections.ConfigDict], tuple], vocab_size: int,
                         num_classes: int) -> Callable[[ml_collections.ConfigDict], Description]:
  """`Dataset.describe` of token classification: int32 ids `inputs` [*shape(config.data)] and an int32 label."""
  return lambda config: Description(DatasetInfo(vocab_size=vocab_size, num_classes=num_classes),
                                    labelled(np.zeros(shape(config.data), np.int32)))
