"""LRA Text: byte-level IMDB sentiment (4K bytes) with BSA + GRC.

    python train.py --config configs/lra_text.py --config.data.directory=/path/to/aclImdb

`data.directory` is the extracted aclImdb folder; validation is 2,500 training reviews held out (seeded).
LRA's Text setting: 4 layers, width 256, 4 heads, batch 32, 20k steps. Expected: LRA's Transformer
baseline reached 64.3% test accuracy and the paper reports BSA above it; not yet measured here.
"""
import ml_collections

from configs import common


def get_config():
  config = common.base()
  common.lra_classifier(config, vocab_size=257, num_classes=2, max_length=4000)
  config.data = ml_collections.ConfigDict(dict(name="lra_text", directory="", tfds_dir="", seed=0, max_length=4000,
                                               validation_size=2_500, overlength="truncate"))
  config.train.num_steps = 20_000
  config.train.eval_every = 2_000
  config.train.checkpoint_every = 2_000
  config.optimizer.learning_rate = 5e-4
  config.optimizer.warmup_steps = 8_000
  config.optimizer.weight_decay = 0.1
  config.eval.batch_size = 32
  return config
