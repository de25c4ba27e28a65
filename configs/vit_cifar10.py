"""A small ViT with BSA (`dot` spatial kernel: TUPE features of per-axis position tables on the patch grid,
see `common.GRID_SPATIAL` for the evidence) + GRC on CIFAR-10.

    python train.py --config configs/vit_cifar10.py --workdir runs/vit_cifar10 \
        --config.data.directory=/path/to/cifar-10-batches-py

`data.directory` holds the CIFAR-10 python batches (data_batch_1..5, test_batch); validation is 5,000
training images held out (seeded). 4x4 patches (an 8x8 grid plus CLS), 6 layers, width 256, 4 heads, no
augmentation (the DeiT recipe is in `config.augment`, see deit_tiny_imagenet.py). Expected: not yet
measured here.
"""
import ml_collections

from configs import common


def get_config():
  config = common.base()
  config.model.name = "vit"
  config.model.num_classes = 10
  config.model.patch_size = 4
  config.model.pooling = "cls"
  config.model.transformer = common.transformer(
      num_layers=6, num_heads=4, model_dim=256, mlp_dim=512, max_length=65, attention="bilateral",
      spatial=common.GRID_SPATIAL, residual="grc", dropout_rate=0.1)
  config.data = ml_collections.ConfigDict(dict(name="cifar10", directory="", tfds_dir="", seed=0,
                                               validation_size=5_000))
  config.train.batch_size = 128
  config.train.num_steps = 20_000
  config.train.eval_every = 2_000
  config.train.checkpoint_every = 2_000
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 1_000
  config.optimizer.weight_decay = 0.05
  config.eval.batch_size = 500
  return config
