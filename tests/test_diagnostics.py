"""The diagnostics of method.md section 4 against explicit numpy references, and diagnose.py."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from bilateral_jax import diagnostics, trainer
from tests.test_training import ROOT, run_script, tiny_config


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
  for b in range(3):
    u = y[b][mask[b]] / np.linalg.norm(y[b][mask[b]], axis=-1, keepdims=True)
    c = u @ u.T
    want.append((c.sum() - np.trace(c)) / (len(u) * (len(u) - 1)))
  np.testing.assert_allclose(diagnostics.token_uniformity(y, mask), want, rtol=1e-5)
  np.testing.assert_allclose(diagnostics.token_uniformity(np.ones((1, 5, 3))), [1.0], rtol=1e-6)
  np.testing.assert_allclose(diagnostics.snr_db(y, 1.1 * y), 20.0, rtol=1e-5)


def test_hidden_states_with_noise_at_the_stack_input():
  experiment = trainer.Experiment(tiny_config())
  params = experiment.init(jax.random.key(0)).params
  inputs = np.stack([experiment.info_source[i]["inputs"] for i in range(4)])
  u = diagnostics.stack_input(experiment.model, params, inputs)
  noise = 0.1 * jax.random.normal(jax.random.key(1), u.shape)
  clean = diagnostics.hidden_states(experiment.model, params, inputs)
  noisy = diagnostics.hidden_states(experiment.model, params, inputs, noise)
  assert len(clean) == 2  # Y_0, Y_1 of the one-layer stack
  np.testing.assert_allclose(noisy[0] - clean[0], noise, atol=1e-6)  # BSA: Y_0 = U, no position table
  assert not np.allclose(noisy[1], clean[1])
  np.testing.assert_array_equal(diagnostics.hidden_states(experiment.model, params, inputs, 0 * noise)[1], clean[1])


def test_diagnose_commands(tmp_path):
  model_free = subprocess.run([sys.executable, "diagnose.py", "--lipschitz", f"--workdir={tmp_path / 'lip'}",
                               "--lengths=10,100", "--samples=20"], cwd=ROOT, capture_output=True, text=True)
  assert model_free.returncode == 0, model_free.stderr
  written = json.loads((tmp_path / "lip" / "diagnostics" / "lipschitz.json").read_text())
  assert written["N"] == [10, 100] and (tmp_path / "lip" / "diagnostics" / "lipschitz.png").exists()
  trainer.train_and_evaluate(tiny_config(), str(tmp_path / "run"))
  result = run_script("diagnose.py", tmp_path / "run", {}, devices=1, extra=["--examples=8"])
  assert result.returncode == 0, result.stderr
  depth = json.loads((tmp_path / "run" / "diagnostics" / "depth.json").read_text())
  assert depth["step"] == 6 and depth["layer"] == [0, 1] and (tmp_path / "run" / "diagnostics" / "depth.png").exists()
  assert abs(depth["snr_db"][0] - 20.0) < 1.0  # noise 0.1 x the RMS of U, and Y_0 = U
  assert all(-1 <= u <= 1 for u in depth["token_uniformity"])
  missing = run_script("diagnose.py", tmp_path / "none", {}, devices=1)
  assert missing.returncode == 2 and "no checkpoints in" in missing.stderr
  assert not (tmp_path / "none" / "diagnostics").exists()  # (its tfds/ is run_script's data dir)
