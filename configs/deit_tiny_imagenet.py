"""DeiT-Tiny on ImageNet-1k with BSA (2-D Gaussian spatial kernel on the 14 x 14 patch grid) + GRC.

    python train.py --config configs/deit_tiny_imagenet.py --config.data.directory=/path/to/imagenet

`data.directory` holds train/<wnid>/*.JPEG and val/<wnid>/*.JPEG. DeiT-Tiny: 12 layers, width 192,
3 heads, 16 x 16 patches at 224 px, AdamW 5e-4 x batch/512, 300 epochs at batch 1024, with DeiT's
augmentation: random resized crop, flip, RandAugment (2 ops, magnitude 9), random erasing 0.25, mixup 0.8
/ cutmix 1.0, label smoothing 0.1, repeated augmentation x3 (DeiT's EMA is not implemented). Expected:
DeiT-Tiny reaches 72.2% top-1 and the paper reports BSA + GRC above it; not yet measured here.
"""
import ml_collections

from configs import common


def get_config():
  config = common.base()
  config.model.name = "vit"
  config.model.num_classes = 1000
  config.model.patch_size = 16
  config.model.pooling = "cls"
  config.model.transformer = common.transformer(
      num_layers=12, num_heads=3, model_dim=192, mlp_dim=768, max_length=197, attention="bilateral",
      spatial_bandwidth_range=(0.5, 14.0), residual="grc", dtype="bfloat16")
  config.data = ml_collections.ConfigDict(dict(name="imagenet", directory="", tfds_dir="", image_size=224,
                                               crop_fraction=0.875))
  config.train.batch_size = 1024
  config.train.num_steps = 375_000
  config.train.eval_every = 6_250
  config.train.checkpoint_every = 2_500
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 6_250
  config.optimizer.weight_decay = 0.05
  config.optimizer.b2 = 0.999
  config.augment.update(dict(random_resized_crop=True, hflip=True, rand_augment_ops=2,
                             rand_augment_magnitude=9.0, random_erasing=0.25, mixup_alpha=0.8,
                             cutmix_alpha=1.0, label_smoothing=0.1, repeats=3))
  config.eval.splits = ("validation",)
  config.eval.batch_size = 1000
  return config
