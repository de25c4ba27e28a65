"""LRA Image: CIFAR-10 as sequences of 1,024 grayscale pixels with BSA + GRC.

    python train.py --config configs/lra_image.py --config.data.directory=/path/to/cifar-10-batches-py

`data.directory` holds the CIFAR-10 python batches; validation is 5,000 training images held out (seeded). The
sequence is the row-major pixel order with 1-D coordinates, as in LRA. LRA's Image setting: 1 layer,
width 64, 8 heads (we use 2 layers, 4 heads), batch 256, 35 epochs. Expected: LRA's Transformer baseline
reached 42.4% test accuracy and the paper reports BSA above it; not yet measured here.
"""
import ml_collections

from configs import common


def get_config():
  config = common.base()
  common.lra_classifier(config, vocab_size=257, num_classes=10, max_length=1024, num_layers=2,
                        model_dim=64, mlp_dim=128)
  config.data = ml_collections.ConfigDict(dict(name="lra_image", directory="", tfds_dir="", seed=0,
                                               validation_size=5_000))
  config.train.batch_size = 256
  config.train.num_steps = 6_000
  config.train.eval_every = 1_000
  config.train.checkpoint_every = 1_000
  config.optimizer.learning_rate = 5e-4
  config.optimizer.warmup_steps = 175
  config.eval.batch_size = 250
  return config
