"""A small ViT with BSA (`dot` spatial kernel: TUPE features of per-axis position tables on the patch grid,
a learned CLS position; `common.GRID_SPATIAL`) + GRC on scikit-learn's 1,797 handwritten digits (8 x 8
grey images that the scikit-learn package ships; offline).

    python train.py --config configs/digits_vit.py --workdir runs/digits_vit
    python eval.py --workdir runs/digits_vit --attacks fgsm,pgd,reflect --attack_convention pixel --epsilons 8,16

2 x 2 patches (a 4 x 4 grid plus CLS), 2 layers of width 64, 4 heads, MLP 128, dropout 0.1, no
augmentation; test 360 and validation 180 images held out by a seeded permutation, 1,257 to train;
1,000 steps of 64 (about 40 s on a 2-core CPU).
Measured: docs/results.md "Position schemes: the digits ViT" (this model on seed 0, and the study,
studies/digits_positions.py, whose best reading of position is the spatial kernel used here).
"""
import ml_collections

from configs import common


def get_config():
  config = common.base()
  config.model.name = "vit"
  config.model.num_classes = 10
  config.model.patch_size = 2
  config.model.pooling = "cls"
  config.model.transformer = common.transformer(
      num_layers=2, num_heads=4, model_dim=64, mlp_dim=128, max_length=17, attention="bilateral",
      spatial=common.GRID_SPATIAL, residual="grc", dropout_rate=0.1)
  config.data = ml_collections.ConfigDict(dict(name="sklearn_digits", seed=0, validation_size=180, test_size=360))
  config.train.batch_size = 64
  config.train.num_steps = 1_000
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.train.log_every = 100
  config.optimizer.learning_rate = 2e-3
  config.optimizer.warmup_steps = 100
  config.optimizer.weight_decay = 0.05
  config.eval.batch_size = 360
  return config
