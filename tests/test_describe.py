"""`sources.describe`: each config's data described from the config alone (an example of its shapes, its info,
what was assumed), against the data itself, reading no file."""
import importlib
import sys

import ml_collections
import numpy as np
import pytest

from bilateral_jax import experiments, tasks
from bilateral_jax.data import core, sources
from tests.samples import write_cifar100
from tests.test_training import CONFIGS, LRA_SMALL, small_config

VARIANTS = [f"{name}:small" for name in LRA_SMALL + ["deit_tiny_imagenet", "shakespeare_char_lm", "wikitext103_lm"]]
CASES = CONFIGS + VARIANTS + ["wikitext103_lm:medium", "lra_listops:small_512"]


def write_listops_release(directory):
  directory.mkdir(parents=True, exist_ok=True)
  for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
    (directory / name).write_text("Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t9\n( ( ( [MIN 3 ) 8 ) ] )\t3\n")


# The datasets no config file names by default: case -> (config, writes its sample, overrides).
OTHER_DATA = {
    "lra_listops+listops_release": ("lra_listops", write_listops_release, {"data.name": "listops_release"}),
    "vit_cifar10+cifar100": ("vit_cifar10", write_cifar100, {"data.name": "cifar100", "model.num_classes": 0}),
    "shakespeare_char_lm+bytes": ("shakespeare_char_lm", None, {"data.tokenizer": "bytes"}),
}


def flat(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
  items = {}
  for key, value in config.items():
    items |= flat(value, f"{prefix}{key}.") if isinstance(value, ml_collections.ConfigDict) else {prefix + key: value}
  return items


def module_and_variant(case: str):
  name, _, variant = case.partition(":")
  config_file = "lra_pathfinder" if name == "lra_pathfinder_generated" else name
  return importlib.import_module(f"configs.{config_file}"), name, variant


def case_config(case: str, tmp_path) -> ml_collections.ConfigDict:
  """`small_config` of the case's config file (its sample data under tmp_path); for a variant, the
  variant's config with the settings that `small_config` changed in the plain one."""
  if case in OTHER_DATA:
    name, write, overrides = OTHER_DATA[case]
    if write is not None:
      write(tmp_path / "data")
      overrides = overrides | {"data.directory": str(tmp_path / "data")}
    return small_config(name, tmp_path, **overrides)
  module, name, variant = module_and_variant(case)
  config = small_config(name, tmp_path)
  if not variant:
    return config
  plain, varied = flat(module.get_config()), module.get_config(variant)
  varied.update_from_flattened_dict({key: value for key, value in flat(config).items() if plain.get(key) != value})
  return varied


def batch_spec(example, transform) -> dict:
  return {name: (value.shape, value.dtype) for name, value in experiments.example_batch(example, 1, transform).items()}


@pytest.mark.parametrize("case", CASES + list(OTHER_DATA))
def test_the_description_from_the_config_is_shaped_as_the_data(case, tmp_path):
  config = case_config(case, tmp_path)
  task = tasks.get(config.model.name)
  alone = sources.describe(config)
  for split in dict.fromkeys(("train", config.eval.splits[0])):
    real = core.Description.of(sources.load_split(config.data, split))
    assert real.assumed == {}
    sizes, real_sizes = alone.info.model_sizes(), real.info.model_sizes()
    assert sizes.keys() == real_sizes.keys()
    for field, value in real_sizes.items():
      if config.model.get(field, 0):
        assert field not in alone.assumed and sizes[field] == value, field
      else:
        assert field in alone.assumed or sizes[field] == value, field
    for field in ("image_size", "crop_fraction", "scale_range", "tokenizer"):
      assert getattr(alone.info, field) == getattr(real.info, field), field
    assert (alone.info.image_stats is None) == (real.info.image_stats is None)
    if real.info.image_stats is not None:
      assert [np.shape(s) for s in alone.info.image_stats] == [np.shape(s) for s in real.info.image_stats]
    raw = lambda data: {name: (np.ndim(value), np.asarray(value).dtype) for name, value in data.example.items()}
    assert raw(alone) == raw(real)  # before the transforms, which crop images of any size
    real_transforms = task.transforms(experiments.resolve_from_data(config, real.info), real.info)
    alone_transforms = task.transforms(experiments.resolve_from_data(config, alone.info), alone.info)
    for real_transform, alone_transform in zip(real_transforms, alone_transforms):  # train, eval
      assert batch_spec(alone.example, alone_transform) == batch_spec(real.example, real_transform), split


def test_the_description_assumes_what_only_the_data_knows():
  wikitext = importlib.import_module("configs.wikitext103_lm").get_config()
  assumed = sources.describe(wikitext).assumed
  assert list(assumed) == ["vocab_size"] and "267,736 assumed" in assumed["vocab_size"]
  wikitext.model.vocab_size = 1_000
  described = sources.describe(wikitext)
  assert described.assumed == {} and described.info.vocab_size == 1_000


READS = ("open", "os.listdir", "os.scandir", "glob.glob")
_events: list | None = None


def _audit(event, args):
  if _events is not None and event in READS:
    _events.append((event, args[0] if args else None))


sys.addaudithook(_audit)


def test_describe_reads_no_file(tmp_path):
  """Every config at full size, as shipped and with a data.directory that does not exist, with an
  empty data.tfds_dir: nothing is opened or listed, and the tfds_dir stays empty."""
  global _events
  tfds_dir = tmp_path / "tfds"
  tfds_dir.mkdir()
  for case in CASES + list(OTHER_DATA):
    module, name, variant = module_and_variant(OTHER_DATA[case][0] if case in OTHER_DATA else case)
    for directory in (None, str(tmp_path / "absent")):
      config = module.get_config(variant) if variant else module.get_config()
      config.update_from_flattened_dict(OTHER_DATA[case][2] if case in OTHER_DATA else {})
      if name == "lra_pathfinder":  # the release; lra_pathfinder_generated: the config's own default
        config.data.name = "lra_pathfinder"
      config.data.tfds_dir = str(tfds_dir)
      if directory is not None and "directory" in config.data:
        config.data.directory = directory
      _events = []
      try:
        described = sources.describe(config)
      finally:
        events, _events = _events, None
      assert events == [], (case, events)
      resolved = experiments.resolve_from_data(config, described.info)
      experiments.example_batch(described.example, 1,
                                tasks.get(config.model.name).transforms(resolved, described.info)[0])
  assert list(tfds_dir.iterdir()) == []
