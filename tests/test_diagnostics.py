"""The diagnostics of docs/method.md section 4 against explicit numpy references, and diagnose.py: hidden
states, SNR, token uniformity, attention maps and cross terms against a float64 numpy forward of the stack
(tests/independent.py); the softmax Lipschitz estimate against the Jacobian's spectral norm; long-range
stability."""
import dataclasses
import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from bilateral_jax import diagnostics, experiments, trainer
from bilateral_jax.data import sources
from tests import independent
from tests.test_training import ROOT, run_script, small_config, tiny_config


def softmax64(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("n, scale", [(2, 1.0), (5, 1.0), (50, 3.0), (300, 1.0)])
def test_softmax_lipschitz_is_the_spectral_norm_of_the_jacobian(n, scale):
  z = scale * np.random.default_rng(n).standard_normal((4, n))
  want = [np.linalg.eigvalsh(np.diag(s) - np.outer(s, s))[-1] for s in softmax64(z)]
  np.testing.assert_allclose(diagnostics.softmax_lipschitz(z), want, rtol=2e-4)
  # the tight constant: no direction stretches more, one stretches this much (finite differences)
  s, d = softmax64(z[0]), 1e-4 * np.random.default_rng(0).standard_normal(n)
  assert np.linalg.norm(softmax64(z[0] + d) - s) / np.linalg.norm(d) <= want[0] * 1.01


def test_softmax_lipschitz_never_exceeds_one_half():
  rng = np.random.default_rng(0)
  z = np.concatenate([scale * rng.standard_normal((8, 64)) for scale in (0.1, 1.0, 10.0, 100.0)])
  values = np.asarray(diagnostics.softmax_lipschitz(z))
  two_tied = np.asarray(diagnostics.softmax_lipschitz(np.array([[5.0, 5.0] + [-80.0] * 30])))
  assert np.all(values <= 0.5 + 1e-6) and values.max() > 0.3
  np.testing.assert_allclose(two_tied, [0.5], rtol=1e-5)  # the bound, reached by two equal winners


def test_softmax_lipschitz_limits():
  np.testing.assert_allclose(diagnostics.softmax_lipschitz(np.zeros((1, 40))), [1 / 40], rtol=1e-5)  # J = (I - 11'/N)/N
  two = diagnostics.softmax_lipschitz(np.array([[0.3, -1.1]]))  # N = 2: J has eigenvalue 2 s1 s2
  s = softmax64(np.array([0.3, -1.1]))
  np.testing.assert_allclose(two, [2 * s[0] * s[1]], rtol=1e-5)


def test_lipschitz_study_fit_and_perturbation():
  result = diagnostics.lipschitz_study([10, 100, 1000], samples=200, chunk=64)
  assert set(result) == {"N", "lipschitz", "perturbation", "fit_a", "fit_b"} and result["N"] == [10, 100, 1000]
  fitted = result["fit_a"] / np.sqrt(result["N"]) + result["fit_b"]
  design = np.stack([1 / np.sqrt(result["N"]), np.ones(3)], 1)
  np.testing.assert_allclose(fitted, design @ np.linalg.lstsq(design, result["lipschitz"], rcond=None)[0], rtol=1e-9)
  assert result["lipschitz"][0] > result["lipschitz"][1] > result["lipschitz"][2] > 0
  assert result["perturbation"][0] > result["perturbation"][1] > result["perturbation"][2] > 0


def test_token_uniformity_and_snr_against_numpy():
  rng = np.random.default_rng(0)
  y, mask = rng.standard_normal((3, 6, 4)), rng.random((3, 6)) > 0.3
  want = []
  for b in range(3):  # the mean Pearson correlation over channels of distinct real tokens
    c = np.corrcoef(y[b][mask[b]])
    want.append((c.sum() - np.trace(c)) / (len(c) * (len(c) - 1)))
  np.testing.assert_allclose(diagnostics.token_uniformity(y, mask), want, rtol=1e-5)
  # a shared shift (a post-LN bias) no longer pushes the cosines up; one token pattern at any scale is uniform
  shared = rng.standard_normal(4)
  np.testing.assert_allclose(diagnostics.token_uniformity(y + shared, mask), diagnostics.token_uniformity(
      y + shared - (y + shared).mean(-1, keepdims=True), mask), rtol=1e-5)
  np.testing.assert_allclose(diagnostics.token_uniformity(np.arange(1.0, 4.0) * np.arange(1.0, 6.0)[None, :, None]),
                             [1.0], rtol=1e-6)
  noisy = y + 0.3 * rng.standard_normal(y.shape)
  centred = (y - (y * mask[..., None]).sum(1, keepdims=True) / mask.sum(1)[:, None, None]) * mask[..., None]
  want = 20 * np.log10(np.linalg.norm(centred) / np.linalg.norm((noisy - y) * mask[..., None]))
  np.testing.assert_allclose(diagnostics.snr_db(y, noisy, mask), want, rtol=1e-5)  # centred, real tokens only
  np.testing.assert_allclose(diagnostics.snr_db(y + 5.0, 1.1 * y + 5.0), diagnostics.snr_db(y, 1.1 * y), rtol=1e-5)


@pytest.mark.parametrize("overrides", [
    {"model.pooling": "cls", "model.transformer.attention": "standard",
     "model.transformer.position_table": "sinusoidal"},
    {"model.transformer.num_layers": 2}], ids=["cls_standard_sinusoidal", "bsa_grc"])
def test_depth_profile_adds_noise_to_y0_after_the_position_table_and_counts_real_tokens(overrides):
  """A CLS classifier with an additive sinusoidal table, and the default BSA + GRC, with padding: `stacks`
  and `depth_profile` against a float64 numpy forward of the stack from its params (Y_0 = embeddings +
  table, the noise scaled to Y_0's RMS over real tokens, SNR and uniformity counting neither CLS nor padding)."""
  config = tiny_config(**overrides)
  experiment = experiments.Experiment(config, sources.describe(config))
  model, params = experiment.model, experiment.init(jax.random.key(0)).params
  inputs = first_inputs(config)
  layers = model.config.num_layers
  hidden, weights, real, _ = independent.sequence_stack(model.config, params, inputs, pooling=model.pooling)
  [clean] = diagnostics.stacks(model, params, inputs)
  assert len(clean.hidden) == layers + 1 and not real.all()  # Y_0 .. Y_L; some padding
  np.testing.assert_array_equal(clean.real, real)
  for got, want in zip(clean.hidden + clean.attention, hidden + weights, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())

  profile = diagnostics.depth_profile(model, params, inputs, noise=0.1, seed=3)
  eta = 0.1 * np.sqrt(np.mean(hidden[0][real] ** 2)) * np.asarray(jax.random.normal(jax.random.key(3), hidden[0].shape))
  noisy, _, _, _ = independent.sequence_stack(model.config, params, inputs, pooling=model.pooling, y0_noise=eta)
  [noisy_stack] = diagnostics.stacks(model, params, inputs, eta)
  for got, want in zip(noisy_stack.hidden, noisy, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
  table = independent.sinusoids(len(real[0]), model.config.model_dim) if model.config.additive_positions else 0.0
  np.testing.assert_allclose(diagnostics.stack_input(model, params, inputs), hidden[0] - table, atol=1e-6)
  for layer in range(layers + 1):
    y, z = hidden[layer], noisy[layer]
    centred = [y[b][real[b]] - y[b][real[b]].mean(0) for b in range(4)]
    changes = [z[b][real[b]] - y[b][real[b]] for b in range(4)]
    want = 20 * np.log10(np.sqrt(sum((c**2).sum() for c in centred)) / np.sqrt(sum((c**2).sum() for c in changes)))
    np.testing.assert_allclose(profile["snr_db"][layer], want, rtol=1e-5)
    tokens = [y[b][real[b]] for b in range(4)]
    standardised = [(v - v.mean(-1, keepdims=True)) / v.std(-1, keepdims=True) for v in tokens]
    cosines = [(v @ v.T).sum() / v.shape[-1] - len(v) for v in standardised]
    want = np.mean([c / (len(v) * (len(v) - 1)) for c, v in zip(cosines, standardised)])
    np.testing.assert_allclose(profile["token_uniformity"][layer], want, rtol=1e-5)
  assert profile["stack"] == "transformer" and profile["layer"] == list(range(layers + 1)) and "decoder" not in profile
  if model.pooling == "cls":  # what the classifier reads: the CLS token of Y_L, across the examples; Y_{L-1}
    cls, noisy_cls = hidden[-1][:, 0], noisy[-1][:, 0]
    want = 20 * np.log10(np.linalg.norm(cls - cls.mean(0)) / np.linalg.norm(noisy_cls - cls))
    assert profile["read_layer"] == layers - 1
    np.testing.assert_allclose(profile["readout_snr_db"], want, rtol=1e-5)
  else:
    assert profile["read_layer"] == layers and profile["readout_snr_db"] is None


def tiny_model(**transformer):
  """A tiny ListOps classifier at initialisation, its params and 4 padded examples."""
  config = tiny_config(**{f"model.transformer.{k}": v for k, v in transformer.items()})
  experiment = experiments.Experiment(config, sources.describe(config))
  return experiment.model, experiment.init(jax.random.key(0)).params, first_inputs(config)


def first_inputs(config, examples: int = 4) -> np.ndarray:
  """The inputs of the first `examples` of `config`'s train split (padded ListOps)."""
  source = sources.shared_split(config.data, "train")
  return np.stack([source[i]["inputs"] for i in range(examples)])


def test_attention_maps_average_the_attention_weights_and_their_distance():
  """The maps and mean distances of a 2-layer BSA + GRC model against its attention weights computed in
  float64 numpy from its params."""
  model, params, inputs = tiny_model(num_layers=2)
  _, weights, real, _ = independent.sequence_stack(model.config, params, inputs)
  [stack] = diagnostics.stacks(model, params, inputs)
  maps = diagnostics.attention_maps(stack)
  assert len(maps) == 2
  for layer, got in enumerate(maps):
    np.testing.assert_allclose(got, weights[layer].mean(axis=(0, 1)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.sum(got, axis=-1), 1.0, rtol=1e-5)
  n = maps[0].shape[0]
  coords = diagnostics.stack_coordinates(model, params, inputs)
  np.testing.assert_array_equal(coords, np.arange(n)[:, None])
  i, j = np.indices((n, n))
  np.testing.assert_allclose(diagnostics.mean_attention_distance(maps[1], coords),
                             np.sum(weights[1].mean(axis=(0, 1)) * np.abs(i - j)) / n, rtol=1e-5)
  # per example, over the real query rows only (the padding rows of each example do not count)
  assert not real.all()
  rows = [np.sum(weights[1][b][:, q] * np.abs(i - j)[q], axis=-1) for b in range(4) for q in np.flatnonzero(real[b])]
  np.testing.assert_allclose(diagnostics.mean_attention_distance(stack.attention[1], coords, stack.real[:, None, :]),
                             np.mean(rows), rtol=1e-5)
  # a CLS token (no place) in front of a 2 x 2 patch grid: distances among patches only, the CLS row on the grid
  a = np.random.default_rng(0).dirichlet(np.ones(5), 5)
  grid_coords = np.array([[np.nan, np.nan], [0, 0], [0, 1], [1, 0], [1, 1]])
  r = grid_coords[1:]
  want = np.sum(a[1:, 1:] * np.linalg.norm(r[:, None] - r[None], axis=-1)) / 4
  np.testing.assert_allclose(diagnostics.mean_attention_distance(a, grid_coords), want, rtol=1e-5)
  np.testing.assert_allclose(diagnostics.attention_grid(a, grid_coords), a[0, 1:].reshape(2, 2))
  np.testing.assert_allclose(diagnostics.attention_grid(a[1:, 1:], r), a[1:, 1:].mean(0).reshape(2, 2))


def numpy_logit_terms(x, p, block, pre_norm):
  """content, position, cross logits [b, h, n, n] of (x + p) through a Block's norm and q, k, in float64."""
  x, p = np.asarray(x, np.float64), np.broadcast_to(np.asarray(p, np.float64), x.shape)
  block = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), block)
  if pre_norm:
    norm = block["norm_attention"]
    s = norm["scale"] / np.sqrt((x + p).var(-1, keepdims=True) + 1e-6)
    hx, hp, h0 = (x - x.mean(-1, keepdims=True)) * s, (p - p.mean(-1, keepdims=True)) * s, norm["bias"]
  else:
    hx, hp, h0 = x, p, np.zeros(x.shape[-1])
  q, k = block["attention"]["query"], block["attention"]["key"]
  project = lambda dense: [h @ dense["kernel"].reshape(x.shape[-1], -1) for h in (hx, hp, h0)]
  (qx, qp, q0), (kx, kp, k0) = project(q), project(k)
  q0, k0 = q0 + q["bias"].ravel(), k0 + k["bias"].ravel()
  heads, head_dim = q["bias"].shape

  def logits(a, b):
    a, b = np.broadcast_to(a, x.shape[:2] + a.shape[-1:]), np.broadcast_to(b, x.shape[:2] + b.shape[-1:])
    a, b = a.reshape(*a.shape[:2], heads, head_dim), b.reshape(*b.shape[:2], heads, head_dim)
    return np.einsum("bihd,bjhd->bhij", a, b) / np.sqrt(head_dim)

  content = logits(qx + q0, kx + k0)
  position = logits(qp, kp) + logits(qp, k0) + logits(q0, kp)
  return content, position, logits(qx, kp) + logits(qp, kx)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_cross_term_share_against_numpy(norm):
  model, params, inputs = tiny_model(attention="standard", position_table="sinusoidal", norm=norm)
  # the stack's input, by hand: the embeddings scaled by sqrt(d) beside sinusoids (Vaswani et al.)
  x = np.asarray(params["embed"]["embedding"], np.float64)[inputs] * np.sqrt(model.config.model_dim)
  n = x.shape[1]
  p = independent.sinusoids(n, model.config.model_dim)
  terms = numpy_logit_terms(x, p, params["transformer"]["block_0"], norm == "pre")
  real = inputs != 0
  keep = real[:, None, :, None] & real[:, None, None, :]
  # the three terms sum to the layer's logits: softmax over the real keys gives its sown weights
  _, state = model.apply({"params": params}, inputs, mutable=["intermediates"])
  logits = np.where(real[:, None, None, :], sum(terms), -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  sown = state["intermediates"]["transformer"]["block_0"]["attention"]["attention_weights"][0]
  np.testing.assert_allclose(sown, weights / weights.sum(-1, keepdims=True), atol=2e-5)
  squares = []
  for t in terms:
    mean = np.sum(t * keep, -1, keepdims=True) / np.maximum(keep.sum(-1, keepdims=True), 1)
    squares.append(np.sum(keep * (t - mean) ** 2))
  got = diagnostics.cross_term_share(model, params, inputs)
  want = np.array(squares) / sum(squares)
  np.testing.assert_allclose([got["content_share"], got["position_share"], got["cross_share"]], want, rtol=1e-5)
  assert 0 < got["cross_share"] < 1
  rematerialised = model.clone(config=dataclasses.replace(model.config, remat="full"))
  assert diagnostics.cross_term_share(rematerialised, params, inputs) == got


def test_cross_term_share_without_additive_positions():
  model, params, inputs = tiny_model()  # BSA
  assert diagnostics.cross_term_share(model, params, inputs)["cross_share"] == 0.0
  model, params, inputs = tiny_model(attention="rope")
  assert diagnostics.cross_term_share(model, params, inputs)["cross_share"] is None
  model, params, inputs = tiny_model(spatial="none", position_table="learned")  # BSA's content kernel + a table
  assert diagnostics.cross_term_share(model, params, inputs)["cross_share"] is None


def test_relative_sensitivity_and_long_range_stability():
  rng = np.random.default_rng(0)
  x, d = rng.standard_normal((3, 5, 4)), 1e-3 * rng.standard_normal((3, 5, 4))
  np.testing.assert_allclose(diagnostics.relative_sensitivity(lambda v: v, x, d), 1.0, rtol=1e-5)
  norm = lambda a: np.linalg.norm(a.reshape(3, -1), axis=-1)
  np.testing.assert_allclose(diagnostics.relative_sensitivity(lambda v: 3 * v + 1, x, d),
                             norm(3 * d) / norm(3 * x + 1) * norm(x) / norm(d), rtol=1e-4)
  small = dict(lengths=(8, 32), seeds=1, samples=2, num_layers=1, num_heads=2, model_dim=16, mlp_dim=32)
  result = diagnostics.long_range_stability(**small)
  assert set(result) == {"N", "standard", "alibi", "bilateral"} and result["N"] == [8, 32]
  assert all(np.isfinite(v) and v > 0 for kind in ("standard", "alibi", "bilateral") for v in result[kind])
  doubled = diagnostics.long_range_stability(**small, relative_size=2e-3)  # in the linear regime: the same ratio
  for kind in ("standard", "alibi", "bilateral"):
    np.testing.assert_allclose(doubled[kind], result[kind], rtol=0.02)


@pytest.mark.parametrize("overrides", [{}, {"attention": "standard", "position_table": "sinusoidal"}])
def test_attention_sensitivity_against_a_float64_forward(overrides):
  """A trained model's long-range stability on padded ListOps (BSA with a CLS token; the sinusoidal
  baseline): the relative change of the last attention sublayer output over the real tokens under a
  perturbation of Y_0 on the real tokens, against the float64 numpy forward, per batch of 2."""
  model, params, inputs = tiny_model(num_layers=2, **overrides)
  got = diagnostics.attention_sensitivity(model, params, inputs, relative_size=1e-2, seed=3, batch=2)
  norm = lambda a: np.sqrt(np.sum(np.square(a), axis=(1, 2)))
  ratios = []
  for start in (0, 2):
    tokens = inputs[start:start + 2]
    hidden, _, real, outputs = independent.sequence_stack(model.config, params, tokens, pooling=model.pooling)
    keep = real[..., None]
    d = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(3), start), hidden[0].shape)) * keep
    d *= (1e-2 * norm(hidden[0] * keep) / norm(d))[:, None, None]
    noisy = independent.sequence_stack(model.config, params, tokens, pooling=model.pooling, y0_noise=d)[3]
    ratios.append(norm((noisy[-1] - outputs[-1]) * keep) / norm(outputs[-1] * keep) * norm(hidden[0] * keep) / norm(d))
  np.testing.assert_allclose(got, np.mean(np.concatenate(ratios)), rtol=2e-3)


def test_diagnose_commands(trained_tiny_run, tmp_path):
  model_free = subprocess.run([sys.executable, "diagnose.py", "--lipschitz", "--long_range",
                               f"--workdir={tmp_path / 'free'}", "--lengths=10,100", "--samples=20"], cwd=ROOT,
                              capture_output=True, text=True)
  assert model_free.returncode == 0, model_free.stderr
  out = tmp_path / "free" / "diagnostics"
  assert json.loads((out / "lipschitz.json").read_text())["N"] == [10, 100] and (out / "lipschitz.png").exists()
  long_range = json.loads((out / "long_range.json").read_text())
  assert set(long_range) == {"N", "standard", "alibi", "bilateral"} and long_range["N"] == [10, 100]
  assert (out / "long_range.png").exists()
  shutil.copytree(trained_tiny_run[1], tmp_path / "run")
  classifier = run_script("diagnose.py", tmp_path / "run", {}, devices=1, extra=["--long_range"])
  assert classifier.returncode == 2 and "is a 'classifier' model, not a language model" in classifier.stderr
  result = run_script("diagnose.py", tmp_path / "run", {}, devices=1, extra=["--examples=8"])
  assert result.returncode == 0, result.stderr
  depth = json.loads((tmp_path / "run" / "diagnostics" / "depth.json").read_text())
  assert depth["step"] == 6 and depth["layer"] == [0, 1] and (tmp_path / "run" / "diagnostics" / "depth.png").exists()
  assert abs(depth["snr_db"][0] - 20.0) < 1.0  # noise 0.1 x the RMS of U, and Y_0 = U
  assert all(-1 <= u <= 1 for u in depth["token_uniformity"])
  attention = json.loads((tmp_path / "run" / "diagnostics" / "attention.json").read_text())
  assert attention["layer"] == [1] and attention["distance_unit"] == "tokens" and attention["examples"] == 8
  maps = np.load(tmp_path / "run" / "diagnostics" / "attention.npz")["maps"]
  assert maps.shape == (1, attention["length"], attention["length"])
  assert (tmp_path / "run" / "diagnostics" / "attention.png").exists()
  cross = json.loads((tmp_path / "run" / "diagnostics" / "cross_terms.json").read_text())
  assert cross["cross_share"] == 0.0 and "by construction" in cross["note"]  # BSA
  missing = run_script("diagnose.py", tmp_path / "none", {}, devices=1)
  assert missing.returncode == 2 and "no checkpoints in" in missing.stderr
  assert not (tmp_path / "none" / "diagnostics").exists()  # (its tfds/ is run_script's data dir)


def test_diagnose_vision_run(tmp_path):
  """A ViT with a CLS token and additive positions: the attention over the image, patch distances, cross terms."""
  config = small_config("vit_cifar10", tmp_path, **{"model.transformer.attention": "standard",
                                                     "model.transformer.position_table": "sinusoidal"})
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  result = run_script("diagnose.py", tmp_path / "run", {}, devices=1, extra=["--examples=4", "--best"])
  assert result.returncode == 0, result.stderr
  out = tmp_path / "run" / "diagnostics"
  attention = json.loads((out / "attention.json").read_text())
  assert attention["distance_unit"] == "patches" and attention["length"] == 1 + 8 * 8
  assert (out / "attention.png").exists() and 0 < json.loads((out / "cross_terms.json").read_text())["cross_share"] < 1
