"""ADE20K semantic segmentation as Segmenter (Strudel et al. 2021, rstrudel/segmenter) runs Seg-T/16: a
DeiT-Tiny encoder (12 layers, width 192, 3 heads, 16 x 16 patches on 512 x 512 crops: a 32 x 32 grid) with
BSA (`dot` spatial kernel, `common.GRID_SPATIAL`) + GRC, and the mask-transformer decoder (2 layers, 150 class embeddings).

    python train.py --config configs/segmenter_ade20k.py --workdir runs/seg_t \
        --config.data.directory=/path/to/ADEChallengeData2016 --config.train.init_from=runs/deit_tiny

On a pod the same command runs on every host (add --multihost), batch 8 split over the devices.
`data.directory` holds images/{training,validation}/*.jpg and annotations/{training,validation}/*.png
(or leave it empty to read TFDS `scene_parse150` from `data.tfds_dir`). `train.init_from` starts the
encoder from a classification run of this project (configs/deit_tiny_imagenet.py); it prints which
parameters it restored and which (the decoder) are newly initialised.

Segmenter's recipe and ours:
- Training: shorter side scaled to 512 x U(0.5, 2.0), a random 512 crop, flip 0.5; batch 8, 160k steps
  (Segmenter: 64 epochs of 20,210 images = 161.7k), encoder drop-path 0.1, decoder dropout 0.1.
- Evaluation: sliding windows of 512 at stride 512 (Segmenter's config.yml) over the image with its
  shorter side scaled to 512 and its longer side at most 2048 (mmseg's keep-ratio (2048, 512)), the last
  window flush with the border, overlapping logits averaged (`models.sliding_window_logits`);
  `--config.eval.inference=single_scale` (with --config configs/segmenter_ade20k.py) scores the centre
  512 crop instead. Metrics: mean IoU over the
  dataset's intersections and unions (mmseg's), pixel accuracy (`accuracy`).
Deliberate differences:
- Optimiser: AdamW lr 1e-4 with linear warm-up and decay, weight decay 0.01 (Segmenter: Nesterov SGD lr 1e-3,
  momentum 0.9, poly(0.9) decay to 1e-5 per step, no weight decay, no warm-up).
- No PhotoMetricDistortion and no cat_max_ratio 0.75 crop retries; ImageNet pixel statistics
  (Segmenter normalises ViT inputs with mean = std = 0.5).
- Mean IoU is scored on the resized labels (Segmenter resizes the logits back to the original image);
  the sliding window computes every image's canvas of 4 x 4 windows (those beyond the content are
  weighted 0: static shapes), about 8 times the windows Segmenter runs, and holds each image's window
  logits and its 2048 x 2048 x 151 merge in float32: an estimated 10 GB of device memory per image, so
  eval.batch_size 8 wants 8 devices (or a smaller eval.batch_size, or eval.canvas=1024, which shrinks
  the few images wider than 2:1).
- The encoder starts from this project's ImageNet-1k DeiT-Tiny (`init_from`), not from timm's AugReg
  ViT-Ti/16 (ImageNet-21k, 384 px); with standard attention its 14 x 14 position table does not fit the
  32 x 32 grid and stays newly initialised (Segmenter interpolates it bilinearly).
Expected baseline: Segmenter reports 38.1% mean IoU single-scale (38.8% multi-scale) on ADE20K
validation for Seg-T-Mask/16 with the AugReg encoder (rstrudel/segmenter README); the paper reports BSA +
GRC above its baseline. Not run at scale here: no figure of this config has been measured.
"""
import ml_collections

from configs import common


def get_config():
  config = common.base()
  config.model.name = "segmenter"
  config.model.num_classes = 150
  config.model.patch_size = 16
  config.model.decoder = "mask_transformer"
  config.model.decoder_layers = 2
  config.model.decoder_dropout = 0.1
  config.model.transformer = common.transformer(
      num_layers=12, num_heads=3, model_dim=192, mlp_dim=768, max_length=1024, attention="bilateral",
      spatial=common.GRID_SPATIAL, residual="grc", drop_path_rate=0.1, dtype="bfloat16")
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
  config.eval.inference = "sliding_window"  # or single_scale: the centre crop of data.image_size
  config.eval.window_stride = 512
  config.eval.canvas = 2048
  return config
