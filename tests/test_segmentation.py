"""Segmenter: the mask-transformer decoder, sliding-window inference against Segmenter's windows, and an
encoder initialised from a ViT run (`train.init_from`)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilateral_jax import experiments, trainer
from bilateral_jax.data import sources
from bilateral_jax.models import build_model, sliding_window_logits
from tests.test_training import SAMPLES, TINY_MODEL_AND_LOOP, read_metrics, run_script, small_config

STACK = dict(num_layers=1, num_heads=2, model_dim=16, mlp_dim=32, max_length=64)


def _segmenter(**fields):
  return build_model("segmenter", STACK, num_classes=5, patch_size=4, decoder="mask_transformer", **fields)


def test_mask_transformer_gives_masks_of_the_image_size_and_trains_its_class_embeddings():
  model = _segmenter()
  images = jax.random.normal(jax.random.key(1), (2, 16, 24, 3))
  params = model.init(jax.random.key(0), images)["params"]
  assert params["decoder"]["class_embeddings"].shape == (1, 5, 16)
  assert model.apply({"params": params}, images).shape == (2, 16, 24, 5)
  labels = jax.random.randint(jax.random.key(2), (2, 16, 24), 0, 5)
  loss = lambda p: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(model.apply({"params": p}, images)),
                                                  labels[..., None], -1))
  grads = jax.grad(loss)(params)["decoder"]
  assert float(jnp.abs(grads["class_embeddings"]).max()) > 0 and float(jnp.abs(grads["project_classes"]).max()) > 0


def _segmenter_windows(segment, image, extent, window, stride):
  """Segmenter's sliding window (segm/model/utils.py) for one image of extent (h, w), as a slow loop."""
  anchors = lambda size: [a for a in range(0, size, stride) if a < size - window] + [max(size - window, 0)]
  total = np.zeros(image.shape[:2] + (5,))
  count = np.zeros(image.shape[:2] + (1,))
  for top in anchors(extent[0]):
    for left in anchors(extent[1]):
      total[top:top + window, left:left + window] += np.asarray(segment(image[None, top:top + window,
                                                                              left:left + window]))[0]
      count[top:top + window, left:left + window] += 1
  return total / np.maximum(count, 1), count[..., 0]


def test_sliding_window_equals_single_scale_on_one_window_and_segmenters_windows_on_larger_images():
  model = _segmenter()
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
  segment = jax.jit(lambda crops: model.apply({"params": params}, crops))
  images = jax.random.normal(jax.random.key(1), (3, 40, 40, 3))
  one = sliding_window_logits(segment, images[:, :16, :16], jnp.full((3, 2), 16), window=16, stride=12)
  np.testing.assert_array_equal(one, segment(images[:, :16, :16]))

  extents = np.asarray([[40, 40], [16, 33], [29, 16]])
  merged = np.asarray(sliding_window_logits(segment, images, jnp.asarray(extents), window=16, stride=12))
  for image, extent, logits in zip(np.asarray(images), extents, merged):
    expected, count = _segmenter_windows(segment, image, extent, 16, 12)
    assert (count[:extent[0], :extent[1]] > 0).all()  # every pixel of the content is covered
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)  # float32 batched vs one window
  with pytest.raises(ValueError, match="smaller than the 16 x 16 window"):
    sliding_window_logits(segment, images[:, :12], jnp.full((3, 2), 12), window=16, stride=12)


def test_mask_transformer_trains_on_ade20k_folders_with_sliding_window_evaluation(tmp_path):
  config = small_config("segmenter_ade20k", tmp_path, **{"train.num_steps": 8, "train.eval_every": 8,
                                                         "optimizer.learning_rate": 3e-3})
  assert config.model.decoder == "mask_transformer" and config.eval.inference == "sliding_window"
  final = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  losses = [line["loss"] for line in read_metrics(tmp_path / "run")]
  assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
  assert 0.0 < final["validation"]["mean_iou"] <= 1.0 and 0.0 < final["validation"]["accuracy"] <= 1.0
  # diagnose.py (and study.py's depth diagnostics) report the encoder's and the decoder's layers apart
  diagnosed = run_script("diagnose.py", tmp_path / "run", {}, devices=1, extra=["--examples=2"])
  assert diagnosed.returncode == 0, diagnosed.stderr
  out = tmp_path / "run" / "diagnostics"
  depth = json.loads((out / "depth.json").read_text())
  classes = config.model.num_classes
  assert depth["stack"] == "transformer" and depth["layer"] == [0, 1]  # the one-layer encoder
  assert depth["decoder"]["stack"] == "decoder/transformer" and depth["decoder"]["layer"] == [0, 1, 2]
  assert all(np.isfinite(depth["decoder"]["snr_db"]))
  assert all(-1 <= u <= 1 for u in depth["decoder"]["token_uniformity"])
  attention = json.loads((out / "attention.json").read_text())
  patches = (config.data.image_size // config.model.patch_size) ** 2
  assert attention["length"] == patches and attention["decoder"]["length"] == patches + classes
  arrays = np.load(out / "attention.npz")
  assert arrays["maps"].shape == (1, patches, patches)
  assert arrays["decoder_maps"].shape == (2, patches + classes, patches + classes)
  with pytest.raises(ValueError, match="eval.inference='multi_scale' is not one of"):
    segmenter = small_config("segmenter_ade20k", tmp_path, **{"eval.inference": "multi_scale"})
    experiments.Experiment(segmenter, sources.describe(segmenter))


def test_init_from_restores_a_vit_encoder_into_a_segmenter_and_names_the_new_decoder(tmp_path, capsys):
  vit = small_config("deit_tiny_imagenet", tmp_path / "imagenet", **{"train.num_steps": 2, "model.patch_size": 8})
  trainer.train_and_evaluate(vit, str(tmp_path / "vit"))
  segmenter = small_config("segmenter_ade20k", tmp_path / "ade")
  experiment = experiments.Experiment(segmenter, sources.describe_split(segmenter.data, "train"))
  fresh = experiment.init(jax.random.key(0)).params
  capsys.readouterr()
  params = trainer.initialise_from(experiment, fresh, str(tmp_path / "vit"))
  printed = capsys.readouterr().out
  vit_data = sources.describe_split(vit.data, "validation")
  vit_params = trainer.restore_params(vit, str(tmp_path / "vit"), vit_data, best=True)[2]
  for restored, trained in zip(jax.tree.leaves(params["transformer"]), jax.tree.leaves(vit_params["transformer"])):
    np.testing.assert_array_equal(restored, trained)
  np.testing.assert_array_equal(params["patches"]["patch_embed"]["kernel"],
                                vit_params["patches"]["patch_embed"]["kernel"])
  for new, initial in zip(jax.tree.leaves(params["decoder"]), jax.tree.leaves(fresh["decoder"])):
    np.testing.assert_array_equal(new, initial)
  assert "newly initialised, not in the checkpoint: decoder (" in printed, printed
  assert "not used from the checkpoint: cls_token (1 arrays), head (2 arrays)" in printed, printed

  # The documented command: train.py starts the Segmenter from the ViT run and says so once.
  overrides = TINY_MODEL_AND_LOOP | SAMPLES["segmenter_ade20k"][1] | {
      "data.directory": tmp_path / "ade" / "data", "model.transformer.max_length": 1025,
      "train.init_from": tmp_path / "vit", "train.num_steps": 1}
  done = run_script("train.py", tmp_path / "seg", overrides, devices=2, config="configs/segmenter_ade20k.py")
  assert done.returncode == 0, done.stderr
  assert "initialised from" in done.stdout and "decoder (" in done.stdout
  with pytest.raises(Exception, match="no checkpoints in"):
    trainer.initialise_from(experiment, fresh, str(tmp_path / "nowhere"))
