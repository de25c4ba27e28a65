"""LRA Pathfinder (32 x 32, hard: contour length 14) as 1,024-pixel sequences with BSA + GRC.

    python train.py --config configs/lra_pathfinder.py \
        --config.data.directory=/path/to/lra_release/pathfinder32

`data.directory` holds curv_baseline/, curv_contour_length_9/ and curv_contour_length_14/ of the LRA
release (imgs/ and metadata/ each); examples are split 80/10/10 by a seeded permutation. LRA's setting:
4 layers, width 128, 8 heads (we use 4 heads), batch 512, 200 epochs. Expected: LRA's Transformer
baseline reached 71.4% test accuracy and the paper reports BSA above it; not yet measured here.
"""
import ml_collections

from configs import common


def get_config():
  config = common.base()
  common.lra_classifier(config, vocab_size=257, num_classes=2, max_length=1024, model_dim=128, mlp_dim=128)
  config.data = ml_collections.ConfigDict(dict(name="lra_pathfinder", directory="", difficulty="hard",
                                               seed=0))
  config.train.batch_size = 512
  config.train.num_steps = 62_500
  config.train.eval_every = 2_500
  config.train.checkpoint_every = 2_500
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 312
  config.eval.batch_size = 512
  return config
