"""LRA Image: CIFAR-10 as sequences of 1,024 grayscale pixels with BSA + GRC.

    python train.py --config configs/lra_image.py --config.data.directory=/path/to/cifar-10-batches-py
    python train.py --config configs/lra_image.py:small --config.data.directory=/path/to/cifar-10-batches-py

Data as LRA's input pipeline (get_cifar10_datasets in lra_benchmarks/image/input_pipeline.py): each image
converted as `tf.image.rgb_to_grayscale` does (`data.lra.rgb_to_grayscale`), row-major, 1-D coordinates;
splits train[:90%] / train[90%:] / test. `data.directory` holds the CIFAR-10 python batches (read in file
order); without it, TFDS `cifar10` in `data.tfds_dir`, whose order is LRA's. Pixel ids are value + 1 (LRA:
the value, 256 ids; we keep id 0 for padding): the same model up to a relabelled embedding table.

Base: LRA's cifar10 transformer_base: 1 layer, width 128, 8 heads, MLP 128, CLS pooling, a ReLU head of
width 128, dropout 0.3, batch 256, 200 epochs (35k steps), Adam(W) lr 5e-4 with 175 warm-up steps and
cosine decay, no weight decay, no clipping. Differences: BSA + GRC; LRA's attention is 64 wide inside the
128-wide model (qkv_dim 64), ours is as wide as the model; one dropout rate (LRA 0.2 on attention weights).
`:small`: the setting of this paper's line of work (`common.lra_small`).

Expected: LRA's Transformer baseline reached 42.4% test accuracy; the paper reports BSA above it. Not yet
measured here.
"""
import ml_collections

from configs import common


def get_config(variant: str = ""):
  config = common.base()
  common.lra_classifier(config, vocab_size=257, num_classes=10, max_length=1024, pooling="cls", num_layers=1,
                        num_heads=8, model_dim=128, mlp_dim=128, dropout_rate=0.3)
  config.data = ml_collections.ConfigDict(dict(name="lra_image", directory="", tfds_dir=""))
  config.train.batch_size = 256
  config.train.num_steps = 35_000
  config.train.eval_every = 1_750
  config.train.checkpoint_every = 1_750
  config.optimizer.update(dict(learning_rate=5e-4, warmup_steps=175, weight_decay=0.0, clip_norm=0.0))
  config.eval.batch_size = 256
  if common.variant(variant, ("", "small")) == "small":
    common.lra_small(config, max_length=1024, batch_size=256, num_steps=35_000, warmup_steps=175)
  return config
