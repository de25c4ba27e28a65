"""TFDS builders (array_record, no TensorFlow) for the datasets the project generates (ListOps, Pathfinder,
token streams of text files), and `prepare`, which builds any of them (and `releases.Converted`) once.

Built once into `data.tfds_dir` (TFDS's default directory when empty) and read back through
`tfds.data_source` + grain, so a run starts in seconds after the first.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import hashlib
import json
import os
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from bilateral_jax import logs, storage
from bilateral_jax.data import listops, pathfinder

tfds.display_progress_bar(False)


# Our builder configs are made from the experiment config, never listed in BUILDER_CONFIGS: TFDS's
# warning that it uses a custom one says nothing (and repeats the whole config at each load).
logs.drop("Using custom data configuration")

SPLIT_FILES = {"train": "basic_train.tsv", "validation": "basic_val.tsv", "test": "basic_test.tsv"}


@dataclasses.dataclass
class ListOpsConfig(tfds.core.BuilderConfig):
  """Generated (spec, sizes, seed) or read from the LRA release (release_dir). The name is a digest of
  these fields (and of the release files' sizes and times), so a change builds a new dataset."""
  spec: listops.ListOpsSpec | None = None
  sizes: tuple[int, int, int] = (96_000, 2_000, 2_000)
  seed: int = 0
  release_dir: str = ""

  @classmethod
  def make(cls, **fields) -> ListOpsConfig:
    identity = dict(fields)
    if fields.get("release_dir"):
      directory = storage.path(fields["release_dir"])
      identity["release_dir"] = str(directory)
      identity["files"] = [[p.name, *stamp(p)] for p in (directory / name for name in SPLIT_FILES.values())
                           if p.is_file()]
    return cls(**named("release" if fields.get("release_dir") else "generated", identity), **fields)


def stamp(path: epath.Path) -> list[int]:
  """A file's size and modification time (seconds), which name the dataset built from it."""
  stat = path.stat()
  return [stat.length, stat.mtime]


def files_matching(root: epath.Path, pattern: str) -> list[epath.Path]:
  """The files under `root` whose relative path matches the glob `pattern` (`*`, `?` within a name, `**`
  for any folders, none included), sorted: `pathlib`'s glob, which `epath` refuses for `**`."""
  in_name = lambda part: "".join({"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c)) for c in part)
  *folders, name = pattern.split("/")
  prefix = "".join("(?:[^/]+/)*" if part == "**" else in_name(part) + "/" for part in folders)
  matches = re.compile(prefix + in_name(name) + r"\Z").match
  bare = lambda path: os.fspath(path).split("://", 1)[-1]  # epath's walk drops gs:// from the folders it yields
  found = [f"{bare(folder)[len(bare(root)):].strip('/')}/{file}".lstrip("/")
           for folder, _, files in root.walk() for file in files]
  return sorted(root / relative for relative in found if matches(relative))


def named(kind: str, identity: dict) -> dict:
  """A builder config's name and description from the fields that define its data."""
  plain = {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in identity.items()}
  text = json.dumps(plain, sort_keys=True)
  return dict(name=f"{kind}_{hashlib.sha1(text.encode()).hexdigest()[:12]}", description=text)


class ListOps(tfds.core.GeneratorBasedBuilder):
  """LRA ListOps: `inputs` (token ids of `listops.VOCABULARY` as LRA tokenises, variable length),
  `label` (0-9). Generated: one seeded draw of distinct expressions for all splits, cut in order into
  train, validation and test, as LRA's generator does."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"2.0.0": "LRA's tokens (no parentheses) and length count (bounds excluded); no "
                            "expression twice across the splits.",
                   "1.0.0": "Parentheses as tokens."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="LRA ListOps (Nangia & Bowman 2018; Tay et al. 2021): nested MIN/MAX/MED/SM expressions.",
        features=tfds.features.FeaturesDict({
            "inputs": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=listops.NUM_CLASSES)}),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
        homepage="https://github.com/google-research/long-range-arena")

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    if cfg.release_dir:
      splits = {split: read_release_file(storage.path(cfg.release_dir), split) for split in SPLIT_FILES}
    else:
      generated = [(listops.encode(tokens), label)
                   for tokens, label in listops.generate(sum(cfg.sizes), cfg.spec, seed=cfg.seed)]
      ends = np.cumsum(cfg.sizes)
      splits = {split: generated[end - size: end] for split, size, end in zip(SPLIT_FILES, cfg.sizes, ends)}
    return {split: self._generate_examples(split, examples) for split, examples in splits.items()}

  def _generate_examples(self, split: str, examples):
    longest = 0
    for key, (ids, label) in enumerate(examples):
      longest = max(longest, len(ids))
      yield key, {"inputs": ids.astype(np.uint8), "label": label}
    self.info.metadata[f"{split}_max_length"] = longest


@dataclasses.dataclass
class PathfinderConfig(tfds.core.BuilderConfig):
  spec: pathfinder.PathfinderSpec | None = None
  sizes: tuple[int, int, int] = (160_000, 20_000, 20_000)
  seed: int = 0

  @classmethod
  def make(cls, **fields) -> PathfinderConfig:
    return cls(**named("generated", fields), **fields)


class Pathfinder(tfds.core.GeneratorBasedBuilder):
  """Generated Pathfinder: `image` uint8 [side, side, 1], `label` (1 = the markers are connected)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    side = self.builder_config.spec.side
    return tfds.core.DatasetInfo(
        builder=self,
        description="Pathfinder (Linsley et al. 2018) as in LRA: are the two markers on one dashed contour?",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(side, side), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=2)}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in SPLIT_FILES}

  def _generate_examples(self, split: str):
    cfg = self.builder_config
    count = dict(zip(SPLIT_FILES, cfg.sizes))[split]
    for key, example in enumerate(pathfinder.generate(count, cfg.spec, cfg.seed + list(SPLIT_FILES).index(split))):
      yield key, {"image": example.image, "label": example.label}


STREAM_CHUNK = 65_536  # tokens per record: a split loads as a few large reads


@dataclasses.dataclass
class TokenStreamConfig(tfds.core.BuilderConfig):
  """A language-model corpus as token streams: `tokenizer` (`words`, `bytes` or `chars`) turns the texts
  of `files[split]` into ids; the vocabulary comes from the train texts."""
  files: dict | None = None  # split -> [(path, first fraction, last fraction)] of each file's text
  tokenizer: str = "words"

  @classmethod
  def make(cls, files: dict, tokenizer: str) -> TokenStreamConfig:
    stamps = {split: [[str(storage.path(p)), lo, hi, *stamp(storage.path(p))] for p, lo, hi in parts]
              for split, parts in files.items()}
    return cls(**named(tokenizer, dict(files=stamps)), files=files, tokenizer=tokenizer)


TOKENIZERS = ("words", "bytes", "chars")
WORD_SPECIALS = ("<pad>", "<unk>", "<eos>")


def read_text(path: str | epath.PathLike) -> str:
  """A UTF-8 file's text (a leading BOM dropped); a byte that is not UTF-8 is an error naming file:line."""
  data = storage.path(path).read_bytes()
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as error:
    line = data[: error.start].count(b"\n") + 1
    raise ValueError(f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})") from None


def text_lines(path: epath.Path):
  """(line number, line) of a UTF-8 text file's non-blank lines, without their line ends."""
  for number, line in enumerate(read_text(path).splitlines(), start=1):
    if line.strip():
      yield number, line


def split_text(config: TokenStreamConfig, split: str) -> str:
  pieces = []
  for path, low, high in config.files[split]:
    text = read_text(path)
    pieces.append(text[int(low * len(text)): int(high * len(text))])
  return "".join(pieces)


BYTE_VOCABULARY = 257  # padding + 256 byte values


def byte_ids(values) -> np.ndarray:
  """uint8 values (pixels, bytes, or a str's UTF-8 bytes) -> int32 ids 1..256; id 0 stays padding."""
  if isinstance(values, str):
    values = values.encode("utf-8")
  if isinstance(values, bytes):  # TFDS Text features read back as UTF-8 bytes
    values = np.frombuffer(values, np.uint8)
  return np.asarray(values, np.uint8).astype(np.int32) + 1


def tokens(text: str, tokenizer: str):
  """Words with `<eos>` after every line (WikiText's convention), or characters."""
  if tokenizer == "words":
    return [word for line in text.splitlines() for word in line.split() + ["<eos>"]]
  return list(text)


def vocabulary(config: TokenStreamConfig) -> list:
  """id -> token; id 0 is padding, 1 unknown (bytes: id = byte + 1)."""
  if config.tokenizer == "bytes":
    return ["<pad>"] + list(range(256))
  train = set(tokens(split_text(config, "train"), config.tokenizer))
  specials = WORD_SPECIALS if config.tokenizer == "words" else ("<pad>", "<unk>")
  return list(specials) + sorted(train - set(specials))


class TokenStream(tfds.core.GeneratorBasedBuilder):
  """Token ids of each split in chunks of `STREAM_CHUNK` (`ids`), in text order; the vocabulary is in
  the dataset's metadata."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description="A text corpus as token id streams for language modelling.",
        features=tfds.features.FeaturesDict({"ids": tfds.features.Tensor(shape=(None,), dtype=np.int32)}),
        metadata=tfds.core.MetadataDict(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    vocab = vocabulary(self.builder_config)
    self.info.metadata["vocabulary"] = vocab
    return {split: self._generate_examples(split, vocab) for split in SPLIT_FILES}

  def _generate_examples(self, split: str, vocab: list):
    cfg = self.builder_config
    if cfg.tokenizer == "bytes":
      ids = byte_ids(split_text(cfg, split))
    else:
      index = {token: i for i, token in enumerate(vocab)}
      ids = np.fromiter((index.get(t, 1) for t in tokens(split_text(cfg, split), cfg.tokenizer)), np.int32)
    if not len(ids):
      raise ValueError(f"{', '.join(path for path, _, _ in cfg.files[split])}: no {split} text (an empty file?)")
    for key, start in enumerate(range(0, len(ids), STREAM_CHUNK)):
      yield key, {"ids": ids[start: start + STREAM_CHUNK]}


def read_release_file(directory: epath.Path, split: str):
  """(ids, label) of an LRA release TSV: a header `Source\\tTarget`, then `expression\\tlabel` lines."""
  path = directory / SPLIT_FILES[split]
  if not all((directory / name).is_file() for name in SPLIT_FILES.values()):
    raise FileNotFoundError(
        f"ListOps release file {path} not found; data.directory must hold basic_train.tsv, basic_val.tsv "
        "and basic_test.tsv from the LRA release (lra_release/listops-1000)")
  lines = text_lines(path)
  number, header = next(lines, (1, ""))
  if header.split("\t") != ["Source", "Target"]:
    raise ValueError(f"{path}:{number}: expected the header 'Source\\tTarget', got {header!r}")
  examples = 0
  for number, line in lines:
    fields = line.split("\t")
    where = f"{path}:{number}"
    if len(fields) != 2 or not fields[1].strip().isdigit() or not 0 <= int(fields[1]) < listops.NUM_CLASSES:
      raise ValueError(f"{where}: expected '<expression>\\t<label 0-9>', got {line.rstrip()!r}")
    examples += 1
    yield listops.encode(listops.lra_tokens(fields[0]), where=where), int(fields[1])
  if not examples:
    raise ValueError(f"{path}: no examples after the header")


def prepare(builder_class: type[tfds.core.DatasetBuilder], builder_config: tfds.core.BuilderConfig,
            tfds_dir: str) -> tfds.core.DatasetBuilder:
  """The array_record dataset of `builder_config` in `tfds_dir` (TFDS's default when empty), built unless
  it is already there (a finished build is never redone; a build is deterministic, so every copy holds
  the same examples).

  `tfds_dir` is each host's own disk: every process that does not find the dataset there builds it,
  under a file lock beside it, so processes sharing that disk (or a network file system) build it once
  and the others wait for it and read it; no process waits for a file another host writes. It must be
  local: array-record reads and writes local files only (a `gs://` directory is refused)."""
  make = lambda: builder_class(config=builder_config, data_dir=tfds_dir or None, file_format="array_record")
  builder = make()
  if storage.is_remote(str(builder.data_path)):
    raise ValueError(f"the TFDS data directory {builder.data_dir} is not local: array-record reads and writes "
                     "local files only; set data.tfds_dir (or TFDS_DATA_DIR) to a directory on each host's disk")
  return _build_once(builder, make)


def _built(builder: tfds.core.DatasetBuilder) -> bool:
  return (epath.Path(builder.data_path) / "dataset_info.json").exists()


def _build(make) -> tfds.core.DatasetBuilder:
  builder = make()
  print(f"building dataset {builder.info.full_name} in {epath.Path(builder.data_path).parent.parent.parent} ...",
        flush=True)
  with contextlib.redirect_stdout(io.StringIO()):  # TFDS's "Downloading and preparing ..." banners
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return make()


def _build_once(builder: tfds.core.DatasetBuilder, make) -> tfds.core.DatasetBuilder:
  if _built(builder):
    return builder
  data_path = pathlib.Path(str(builder.data_path))
  data_path.parent.mkdir(parents=True, exist_ok=True)
  with open(data_path.parent / f".{data_path.name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
    builder = make()  # another job may have finished the build while this one waited
    return builder if _built(builder) else _build(make)
