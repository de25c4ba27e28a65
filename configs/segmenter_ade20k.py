"""ADE20K semantic segmentation: a DeiT-Tiny encoder with BSA (2-D Gaussian spatial kernel on the 32 x 32
patch grid) + GRC and Segmenter's linear decoder, 512 x 512 crops.

    python train.py --config configs/segmenter_ade20k.py --workdir runs/segmenter_ade20k \
        --config.data.directory=/path/to/ADEChallengeData2016

`data.directory` holds images/{training,validation}/*.jpg and annotations/{training,validation}/*.png
(or leave it empty to read TFDS `scene_parse150` from `data.tfds_dir`). Training: shorter side scaled to
512 x U(0.5, 2.0), random 512 crop, flip; 160k steps at batch 8 (Segmenter's schedule, with AdamW).
Evaluation is single-scale on the centre 512 crop (not the sliding window of published numbers), and the
encoder starts from scratch (published Segmenter numbers start from ImageNet weights), so the mean IoU is
not comparable to the paper's; BSA vs standard attention is one flag apart
(--config.model.transformer.attention=standard). Expected: not yet measured here.
"""
import ml_collections

from configs import common


def get_config():
  config = common.base()
  config.model.name = "segmenter"
  config.model.num_classes = 150
  config.model.patch_size = 16
  config.model.transformer = common.transformer(
      num_layers=12, num_heads=3, model_dim=192, mlp_dim=768, max_length=1024, attention="bilateral",
      spatial_bandwidth_range=(0.5, 32.0), residual="grc", dtype="bfloat16")
  config.data = ml_collections.ConfigDict(dict(name="ade20k", directory="", tfds_dir="", image_size=512,
                                               scale_range=(0.5, 2.0)))
  config.train.batch_size = 8
  config.train.num_steps = 160_000
  config.train.eval_every = 16_000
  config.train.checkpoint_every = 4_000
  config.train.best_metric = "mean_iou"
  config.optimizer.learning_rate = 1e-4
  config.optimizer.warmup_steps = 1_500
  config.optimizer.schedule = "linear"
  config.optimizer.weight_decay = 0.01
  config.eval.splits = ("validation",)
  config.eval.batch_size = 8
  return config
