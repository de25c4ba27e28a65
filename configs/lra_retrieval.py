"""LRA Retrieval: byte-level AAN citation pairs (2 x 4K bytes, two towers) with BSA + GRC.

    python train.py --config configs/lra_retrieval.py --config.data.directory=/path/to/lra_release/tsv_data

`data.directory` holds new_aan_pairs.{train,eval,test}.tsv from the LRA release. LRA's Retrieval setting:
4 layers, width 128, 4 heads, batch 32, 5k steps. Expected: LRA's Transformer baseline reached 57.5% test
accuracy and the paper reports BSA above it; not yet measured here.
"""
import ml_collections

from configs import common


def get_config():
  config = common.base()
  common.lra_classifier(config, vocab_size=257, num_classes=2, max_length=4000, two_tower=True,
                        model_dim=128, mlp_dim=512)
  config.data = ml_collections.ConfigDict(dict(name="lra_retrieval", directory="", tfds_dir="", max_length=4000,
                                               overlength="truncate"))
  config.train.num_steps = 5_000
  config.train.eval_every = 1_000
  config.train.checkpoint_every = 1_000
  config.optimizer.learning_rate = 5e-4
  config.optimizer.warmup_steps = 800
  config.eval.batch_size = 32
  return config
