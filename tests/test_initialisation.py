"""Initialisation and generated data, pinned in tests/pinned.json, so that a refactor that changes either (a
parameter moved to another module, a new initialiser or default, a generator changed) fails here:
- every shipped config (and variant) at seed 0, as shipped: its parameter tree and every leaf's shape;
- the same at test size (`tests.test_describe.case_config`: the same modules, small widths): every leaf's
  values (shape, sum, sum of squares), as train.py initialises them (`Experiment.init`). Full size would
  take minutes and more memory than CI has, and a parameter's values depend on its module path and its
  initialiser, which the small model shares;
- each dataset generated here: its first train batch (a digest of its bytes), as train.py reads it.

Such a change must be deliberate: record it with `python -m tests.test_initialisation` (rewrites
tests/pinned.json; the diff shows which configs changed) and measure again, or date, the tables of
docs/results.md that it affects."""
import hashlib
import json
import pathlib
import sys
import tempfile

import jax
import numpy as np
import pytest

from bilateral_jax import experiments
from bilateral_jax.data import pipeline, sources
from tests.test_describe import CASES, case_config, module_and_variant
from tests.test_training import small_config

PINNED = pathlib.Path(__file__).with_name("pinned.json")
# Datasets made here -> the config that reads them (`small_config`: at test size).
GENERATED = {"listops_generated": "default", "pathfinder_generated": "lra_pathfinder_generated",
             "sklearn_digits": "digits_vit"}


def shipped_config(case: str):
  """The config of `case` as shipped (`name` or `name:variant`), at full size."""
  module, name, variant = module_and_variant(case)
  config = module.get_config(variant) if variant else module.get_config()
  if name == "lra_pathfinder":  # the release; lra_pathfinder_generated: the config's own default
    config.data.name = "lra_pathfinder"
  return config


def experiment(config) -> experiments.Experiment:
  return experiments.Experiment(config, sources.describe(config))


def full_size_shapes(case: str) -> dict[str, list]:
  """{leaf path: shape} of the parameters of `case` as shipped (data-given sizes as `sources.describe`
  assumes them)."""
  leaves = jax.tree_util.tree_flatten_with_path(experiment(shipped_config(case)).abstract_state.params)[0]
  return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in leaves}


def initial_parameters(config) -> dict[str, list]:
  """{leaf path: [shape, sum, sum of squares]} of the initial parameters that train.py starts `config` from."""
  params = experiment(config).init(jax.random.key(config.seed)).params
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
  return {jax.tree_util.keystr(path): [list(np.shape(leaf)), float(np.sum(leaf, dtype=np.float64)),
                                       float(np.sum(np.square(leaf, dtype=np.float64)))] for path, leaf in leaves}


def first_batch(dataset: str) -> dict[str, str]:
  """{field: sha256 of its bytes} of the first train batch of the dataset generated here, as train.py reads it."""
  config = small_config(GENERATED[dataset], tmp_path=None)  # these write no sample
  assert config.data.name == dataset
  batches = pipeline.train_batches(sources.load_split(config.data, "train"), global_batch=config.train.batch_size,
                                   seed=config.seed)
  return {field: hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
          for field, value in sorted(next(batches).items())}


def pinned() -> dict:
  return json.loads(PINNED.read_text())


@pytest.mark.parametrize("case", CASES)
def test_initial_parameters_are_as_pinned(case, tmp_path):
  want, got = pinned()["parameters"][case], initial_parameters(case_config(case, tmp_path))
  assert list(got) == list(want), f"{case}: the parameter tree changed (see the module docstring)"
  changed = [path for path in want if got[path][0] != want[path][0]
             or not np.allclose(got[path][1:], want[path][1:], rtol=1e-5, atol=1e-6 * max(1.0, want[path][2]) ** 0.5)]
  assert not changed, f"{case}: initial values changed for {changed[:6]} (see the module docstring)"
  assert full_size_shapes(case) == pinned()["full_size_shapes"][case], f"{case} as shipped: parameter shapes changed"


@pytest.mark.parametrize("dataset", sorted(GENERATED))
def test_generated_data_is_as_pinned(dataset):
  assert first_batch(dataset) == pinned()["first_batch"][dataset], f"{dataset}: the generated data changed"


def test_every_shipped_config_and_dataset_generated_here_is_pinned():
  record = pinned()
  assert list(record["parameters"]) == list(record["full_size_shapes"]) == CASES
  made_here = {name for name, dataset in sources.DATASETS.items() if dataset.load.__name__.endswith("_generated")}
  assert made_here <= set(record["first_batch"]) == set(GENERATED)


if __name__ == "__main__":  # python -m tests.test_initialisation: record the current values
  with tempfile.TemporaryDirectory() as samples:
    record = {"parameters": {case: initial_parameters(case_config(case, pathlib.Path(samples) / case))
                             for case in CASES},
              "full_size_shapes": {case: full_size_shapes(case) for case in CASES},
              "first_batch": {dataset: first_batch(dataset) for dataset in sorted(GENERATED)}}
  PINNED.write_text(json.dumps(record, indent=1) + "\n")
  print(f"wrote {PINNED}", file=sys.stderr)
