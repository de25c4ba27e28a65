"""DeiT-Tiny (and, as `:small`, DeiT-Small) on ImageNet-1k with BSA (`dot` spatial kernel on the 14 x 14
patch grid, `common.GRID_SPATIAL`) + GRC, by DeiT's recipe (facebookresearch/deit main.py and README, timm 0.3.2).

    python train.py --config configs/deit_tiny_imagenet.py --workdir runs/deit_tiny \
        --config.data.directory=/path/to/imagenet
    python train.py --config configs/deit_tiny_imagenet.py:small --workdir runs/deit_small \
        --config.data.directory=/path/to/imagenet

On a pod the same command runs on every host (add --multihost); batch 1024 is split over the devices.
`data.directory` holds train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (or leave it empty to read TFDS
`imagenet2012` from `data.tfds_dir`). The standard-attention baseline is one flag apart:
--config.model.transformer.attention=standard --config.model.transformer.residual=standard.

DeiT's recipe, field by field, as set here:
- Model: 12 layers, width 192, 3 heads (Small: 384, 6 heads), MLP x4, 16 x 16 patches at 224 px, CLS
  pooling, dropout 0, stochastic depth 0.1 rising linearly over depth (timm's linspace(0, 0.1, 12)).
- AdamW lr 5e-4 x batch / 512 = 1e-3 at batch 1024 (computed when the config is made: a different
  --config.train.batch_size needs --config.optimizer.learning_rate and final_learning_rate_fraction too), betas (0.9, 0.999), eps 1e-8, weight decay 0.05 on
  matrices only, no gradient clipping; 300 epochs = 375k steps of 1024 (1,251 per epoch), 5 warm-up
  epochs (6,250 steps), cosine to min lr 1e-5.
- Augmentation: random resized crop (0.08-1) and flip, RandAugment 2 ops at magnitude 9, random erasing
  0.25 (pixel mode, one box), mixup 0.8 / cutmix 1.0 with switch probability 0.5 over the batch (partner:
  the batch reversed), label smoothing 0.1, repeated augmentation x3; evaluation resizes by 1 / 0.875
  and takes the centre 224 crop. Metrics: top-1 (`accuracy`) and top-5 (`top5_accuracy`).
Deliberate differences (what the project does not implement, or does per step where DeiT does per epoch):
- The learning rate changes every step (DeiT's timm scheduler steps per epoch) and warm-up starts at 0
  (DeiT: 1e-6).
- RandAugment: every drawn op is applied, at magnitude 9 exactly, from 14 ops with `identity`
  (timm's rand-m9-mstd0.5-inc1 applies each op with probability 0.5 at a magnitude drawn from N(9, 0.5),
  has Invert and SolarizeAdd, and its 'increasing' ops, and fills with the image mean, here grey 128).
- Weight decay also applies to the CLS token and the position table (DeiT exempts them with all 1-D
  parameters); the matrices-only mask is the project's one rule.
- Repeated augmentation puts an example's 3 copies next to each other in the order (DeiT's RASampler: the same
  epoch of N samples, N / 3 images 3 times each, but the copies on different GPUs).
- No model EMA (DeiT keeps one but evaluates the raw model, as here), no distillation token.
Expected baseline: DeiT-Tiny 72.2% and DeiT-Small 79.9% (79.85) top-1 on ImageNet-1k validation
(facebookresearch/deit README); the paper reports BSA + GRC above them. Not run at scale here: no figure
of this config has been measured.
"""
import ml_collections

from configs import common


def get_config(variant: str = ""):
  config = common.base()
  config.model.name = "vit"
  config.model.num_classes = 1000
  config.model.patch_size = 16
  config.model.pooling = "cls"
  width, heads = (384, 6) if common.variant(variant, ("", "small")) == "small" else (192, 3)
  config.model.transformer = common.transformer(
      num_layers=12, num_heads=heads, model_dim=width, mlp_dim=4 * width, max_length=197, attention="bilateral",
      spatial=common.GRID_SPATIAL, residual="grc", drop_path_rate=0.1, dtype="bfloat16")
  config.data = ml_collections.ConfigDict(dict(name="imagenet", directory="", tfds_dir="", image_size=224,
                                               crop_fraction=0.875))
  config.train.batch_size = 1024
  config.train.num_steps = 375_000
  config.train.eval_every = 6_250
  config.train.checkpoint_every = 2_500
  config.optimizer.learning_rate = 5e-4 * config.train.batch_size / 512
  config.optimizer.warmup_steps = 6_250
  config.optimizer.final_learning_rate_fraction = 1e-5 / config.optimizer.learning_rate
  config.optimizer.weight_decay = 0.05
  config.optimizer.clip_norm = 0.0
  config.optimizer.b2 = 0.999
  config.augment.update(dict(random_resized_crop=True, hflip=True, rand_augment_ops=2,
                             rand_augment_magnitude=9.0, random_erasing=0.25, mixup_alpha=0.8,
                             cutmix_alpha=1.0, label_smoothing=0.1, repeats=3))
  config.eval.splits = ("validation",)
  config.eval.batch_size = 1000
  return config
