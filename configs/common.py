"""The fields every experiment has, with their defaults; experiment files override what differs.

Overrides on the command line (`--config.train.num_steps=10`) are type-checked by ml_collections, and an
unknown key fails at start-up, naming it.
"""
import dataclasses

import ml_collections

from bilateral_jax.models import TransformerConfig
from bilateral_jax.parallel import FSDP_MIN_SIZE


# BSA's spatial kernel in the shipped bidirectional configs, each the BSA kernel best on the validation split
# of its attribution study (docs/results.md; a distance-only kernel would make these models blind to
# direction, docs/method.md section 2).
# Patch grids: `dot` (TUPE features of per-axis position tables, a learned CLS position;
# studies/digits_attribution.py, docs/results.md "Attribution: the digits ViT").
GRID_SPATIAL = "dot"
# Sequences read bidirectionally (ListOps, LRA): the 1-D `asymmetric` Laplacian (a bandwidth before and one
# after the query; studies/listops_attribution.py, docs/results.md "Attribution: ListOps").
SEQUENCE_SPATIAL = "asymmetric"


def transformer(**overrides) -> ml_collections.ConfigDict:
  """The stack's fields (`TransformerConfig`) with their defaults, as a ConfigDict."""
  fields = {f.name: f.default for f in dataclasses.fields(TransformerConfig)} | overrides
  return ml_collections.ConfigDict(fields)


def base() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict()
  # fsdp_min_size: parameters with fewer elements stay replicated (bilateral_jax/parallel.py).
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, fsdp_min_size=FSDP_MIN_SIZE))
  config.train = ml_collections.ConfigDict(dict(
      batch_size=32, num_steps=1000, grad_accum_steps=1, log_every=50, eval_every=500,
      checkpoint_every=500, keep_checkpoints=3, best_metric="accuracy", best_mode="max",
      profile_steps=0, init_from="", input_workers=-1))
  # input_workers: processes that read and transform the train batches (-1: sized to the host,
  # data/pipeline.default_workers; 0: threads of the training process). profile_steps > 0: a jax.profiler
  # trace of that many steps in DIR/profile. init_from="DIR": a new run
  # starts from the parameters of DIR's best (else newest) checkpoint whose paths and shapes match.
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=100, schedule="cosine", final_learning_rate_fraction=0.0,
      weight_decay=0.01, clip_norm=1.0, b1=0.9, b2=0.98))
  config.eval = ml_collections.ConfigDict(dict(splits=("validation", "test"), batch_size=64))
  # Image augmentation (bilateral_jax/data/augment.py), all off; the mixing and smoothing happen in the
  # train step, over the global batch. repeats > 1: repeated augmentation (data/pipeline.train_batches).
  config.augment = ml_collections.ConfigDict(dict(
      random_resized_crop=False, hflip=False, rand_augment_ops=0, rand_augment_magnitude=9.0,
      random_erasing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, mix_switch_probability=0.5,
      label_smoothing=0.0, repeats=1))
  return config


def lra_classifier(config: ml_collections.ConfigDict, *, vocab_size: int, num_classes: int, max_length: int,
                   pooling: str = "mean", head_hidden: tuple[int, ...] | None = None, two_tower: bool = False,
                   interaction: str = "nli", **transformer_overrides) -> None:
  """An LRA sequence classifier with BSA + GRC over `max_length` tokens (and the CLS token with `cls`
  pooling); the head has one ReLU layer of the MLP's width unless `head_hidden` says otherwise (LRA's
  `classifier_head`)."""
  stack = transformer(**(dict(
      num_layers=4, num_heads=4, model_dim=256, mlp_dim=1024, max_length=max_length + (pooling == "cls"),
      attention="bilateral", spatial=SEQUENCE_SPATIAL,
      spatial_bandwidth_range=(1.0, max_length / 4), residual="grc", dropout_rate=0.1) | transformer_overrides))
  config.model.name = "classifier"
  config.model.vocab_size = vocab_size
  config.model.num_classes = num_classes
  config.model.pooling = pooling
  config.model.head_hidden = tuple(head_hidden if head_hidden is not None else (stack.mlp_dim,))
  config.model.two_tower = two_tower
  config.model.interaction = interaction
  config.model.transformer = stack


def lra_small(config: ml_collections.ConfigDict, *, max_length: int, batch_size: int, num_steps: int,
              warmup_steps: int) -> None:
  """The LRA setting of the Nystromformer line of work (mlpen/Nystromformer, LRA/code/lra_config.py and
  run_tasks.py), which this paper follows: 2 layers, width 64, 2 heads of 32, FFN 128, dropout 0.1, mean
  pooling, a ReLU head of width 128 (two towers: on [u, v, u * v, u - v]), learned absolute positions
  when attention is standard; AdamW lr 1e-4, betas (0.9, 0.999), no weight decay, no clipping, linear
  warm-up and decay. Per task: length, batch, steps and warm-up. Differences: its OneCycleLR starts at
  lr / 25 (ours at 0) and cycles Adam's b1 between 0.95 and 0.85 (ours stays 0.9); its mean pooling
  divides by the padded length and it takes id 0 (a black pixel in Image and Pathfinder) for padding
  (ours: real tokens only, pixels are value + 1); eps 1e-8 (its 1e-6)."""
  config.model.pooling = "mean"
  config.model.head_hidden = (128,)
  config.model.interaction = "nli"
  config.model.transformer.update(dict(num_layers=2, model_dim=64, num_heads=2, mlp_dim=128, max_length=max_length,
                                       position_table="learned", dropout_rate=0.1,
                                       spatial_bandwidth_range=(1.0, max_length / 4)))
  config.train.update(dict(batch_size=batch_size, num_steps=num_steps))
  config.optimizer.update(dict(learning_rate=1e-4, warmup_steps=warmup_steps, schedule="linear",
                               final_learning_rate_fraction=0.0, weight_decay=0.0, clip_norm=0.0, b2=0.999))


def variant(name: str, known: tuple[str, ...]) -> str:
  """Checks the config-file argument (`configs/x.py:small`)."""
  if name not in known:
    raise ValueError(f"unknown config variant {name!r}; known: {', '.join(repr(k) for k in known)}")
  return name


def causal_lm(config: ml_collections.ConfigDict, **transformer_settings) -> None:
  """A causal LM with BSA (dot content, learned-bandwidth causal Laplacian spatial kernel) + GRC, tied
  embeddings, the vocabulary from the data, and the best checkpoint by validation loss."""
  config.model.name = "lm"
  config.model.vocab_size = 0  # from the data
  config.model.tie_embeddings = True
  config.model.transformer = transformer(**(dict(
      max_length=256, attention="bilateral", content="dot", spatial="laplacian",
      spatial_bandwidth_range=(1.0, 256.0), residual="grc", dropout_rate=0.1) | transformer_settings))
  config.train.best_metric = "loss"
  config.train.best_mode = "min"


def listops_data(**overrides) -> ml_collections.ConfigDict:
  """Generated LRA ListOps (the LRA recipe's defaults: depth <= 10, <= 10 arguments, 500 < length < 2000
  as LRA counts), built once into `tfds_dir` (empty: TFDS's default, $TFDS_DATA_DIR or ~/tensorflow_datasets)."""
  return ml_collections.ConfigDict(dict(
      name="listops_generated", seed=0, directory="", tfds_dir="", max_depth=10, max_args=10, min_length=500,
      max_length=2000, operator_probability=0.25, train_size=96_000, validation_size=2_000,
      test_size=2_000, overlength="error") | overrides)


# The 2 x 2 ablation of the paper's two modifications: stack overrides by name, baseline first.
ABLATION = {
    "standard attention + standard residual": dict(attention="standard", residual="standard"),
    "BSA + standard residual": dict(attention="bilateral", residual="standard"),
    "standard attention + GRC": dict(attention="standard", residual="grc"),
    "BSA + GRC": dict(attention="bilateral", residual="grc"),
}
