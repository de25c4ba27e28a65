"""Datasets by name: one registry of `core.Dataset` records (how to load each, how to describe it from the
config alone), and the two ways a run learns what its data is (`describe`, `describe_split`)."""
from __future__ import annotations

import collections
import json

import ml_collections

from bilateral_jax.data import core, corpora, images, lra

DATASETS: dict[str, core.Dataset] = lra.DATASETS | corpora.DATASETS | images.DATASETS


def dataset(name: str) -> core.Dataset:
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
  return DATASETS[name]


def _check_split(split: str) -> None:
  if split not in core.SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {', '.join(core.SPLITS)}")


def load_split(config: ml_collections.ConfigDict, split: str):
  """The `split` of the dataset named `config.name` (the data config), as a random-access source."""
  _check_split(split)
  return dataset(config.name).load(config, split)


_SHARED: collections.OrderedDict = collections.OrderedDict()  # (data config, split) -> source
SHARED_SPLITS = 8


def shared_split(config: ml_collections.ConfigDict, split: str):
  """`load_split`, loaded once per process for each data config and split (the last `SHARED_SPLITS` kept):
  the train loop, its evaluations, the attacks and a study's runs read one copy. Sources are read-only."""
  key = (json.dumps(config.to_dict(), sort_keys=True, default=str), split)
  if key not in _SHARED:
    _SHARED[key] = load_split(config, split)
    while len(_SHARED) > SHARED_SPLITS:
      _SHARED.popitem(last=False)
  _SHARED.move_to_end(key)
  return _SHARED[key]


def describe(config: ml_collections.ConfigDict) -> core.Description:
  """The data of the experiment `config` described from the config alone, reading no file: sizes only the
  data knows come from `config.model` where it gives them (non-zero), else are assumed (`assumed` says
  which); pixel statistics that a dataset computes from its data are placeholders, and no vocabulary (id ->
  token) is given. For compiling a model where the data is absent, or restoring one for one's own inputs."""
  return dataset(config.data.name).describe(config)


def describe_split(config: ml_collections.ConfigDict, split: str) -> core.Description:
  """The data of the data config `config` described by its `split` (loaded once, `shared_split`)."""
  return core.Description.of(shared_split(config, split))


def describe_eval(config: ml_collections.ConfigDict) -> core.Description:
  """The data of the run config `config` described by its first eval split (the one the diagnostics read)."""
  return describe_split(config.data, config.eval.splits[0])
