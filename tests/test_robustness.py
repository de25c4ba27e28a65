"""FGSM/PGD and word-swap contamination (bilateral_jax/robustness.py), and eval.py --attacks."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilateral_jax import robustness, trainer
from bilateral_jax.data import sources
from tests.test_training import run_script, small_config, tiny_config


def test_linf_attack_stays_in_the_ball_and_the_valid_range():
  x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (4, 6)), jnp.float32)
  loss = lambda delta: jnp.sum(jnp.sin(3 * (x + delta)) * x)
  for steps, random_start in ((1, False), (20, True)):
    delta = robustness.linf_attack(loss, x.shape, radius=0.1, steps=steps, step_size=0.03, random_start=random_start,
                                   rng=jax.random.key(0), bounds=(-x, 1 - x))
    assert float(jnp.max(jnp.abs(delta))) <= 0.1 + 1e-7
    assert float(jnp.min(x + delta)) >= 0 and float(jnp.max(x + delta)) <= 1 + 1e-7
    assert loss(delta) > loss(jnp.zeros_like(x))
  # FGSM is one signed-gradient step of the whole radius (away from the bounds)
  free = robustness.linf_attack(loss, x.shape, radius=0.1, steps=1, step_size=0.1, random_start=False, rng=None)
  np.testing.assert_allclose(free, 0.1 * np.sign(jax.grad(loss)(jnp.zeros_like(x))), rtol=1e-6)


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
  """A small ViT trained for a few hundred steps on the digits, and its parameters."""
  workdir = tmp_path_factory.mktemp("digits")
  config = small_config("digits_vit", workdir, **{"train.num_steps": 300, "train.eval_every": 300, "train.batch_size": 64,
                                                  "train.checkpoint_every": 300, "train.log_every": 100,
                                                  "model.transformer.model_dim": 32, "model.transformer.mlp_dim": 64,
                                                  "eval.batch_size": 360, "optimizer.warmup_steps": 10})
  trainer.train_and_evaluate(config, str(workdir))
  experiment, _, params = trainer.restore_params(config, str(workdir))
  return experiment, params, workdir


def _attacked_accuracy(experiment, params, attack, epsilon, **settings):
  settings = robustness.AttackSettings(epsilons=(epsilon,), **settings)
  return robustness.evaluate(experiment, params, "test", (attack,), settings)[attack][f"{epsilon:g}"]["accuracy"]


def test_image_attacks_on_a_trained_model(trained_digits):
  experiment, params, _ = trained_digits
  clean = experiment.evaluate(params, "test")["accuracy"]
  assert clean > 0.4  # chance: 0.1
  source = sources.load_split(experiment.config.data, "test")
  batch = experiment.device_batch({name: np.stack([experiment.eval_transform(source[i], None)[name] for i in range(16)])
                                   for name in ("inputs", "label", "weight")})
  mean, std = experiment.info.image_stats
  for convention in robustness.CONVENTIONS:
    settings = robustness.AttackSettings(epsilons=(8.0,), convention=convention)
    for attack in ("fgsm", "pgd"):
      logits, delta = robustness.attacked_logits(experiment.model, params, batch, attack=attack, epsilon=8.0,
                                                 input_kind="images", settings=settings,
                                                 image_stats=experiment.info.image_stats, rng=jax.random.key(1))
      assert float(jnp.max(jnp.abs(delta))) <= 8 / 255 + 1e-6
      if convention == "pixel":  # δ is in pixel units and keeps the pixels in [0, 1]
        pixels = batch["inputs"] * std + mean
        assert float(jnp.min(pixels + delta)) >= -1e-6 and float(jnp.max(pixels + delta)) <= 1 + 1e-6
      zero, _ = robustness.attacked_logits(experiment.model, params, batch, attack=attack, epsilon=0.0,
                                           input_kind="images", settings=settings,
                                           image_stats=experiment.info.image_stats, rng=jax.random.key(1))
      np.testing.assert_allclose(zero, experiment.model.apply({"params": params}, batch["inputs"]), atol=1e-5)
  # with true labels, attacks lower the accuracy and PGD lowers it at least as much as FGSM
  fgsm = _attacked_accuracy(experiment, params, "fgsm", 16.0, convention="pixel")
  pgd = _attacked_accuracy(experiment, params, "pgd", 16.0, convention="pixel")
  assert pgd <= fgsm < clean
  assert _attacked_accuracy(experiment, params, "pgd", 0.0, convention="pixel") == clean


def test_attack_success_rate_counts_the_clean_correct_examples_made_wrong(trained_digits):
  experiment, params, _ = trained_digits
  settings = robustness.AttackSettings(epsilons=(16.0,), convention="pixel")
  got = robustness.evaluate(experiment, params, "test", ("fgsm",), settings)["fgsm"]["16"]
  source = sources.load_split(experiment.config.data, "test")
  examples = [experiment.eval_transform(source[i], None) for i in range(len(source))]
  batch = experiment.device_batch({name: np.stack([e[name] for e in examples]) for name in ("inputs", "label", "weight")})
  clean = np.argmax(experiment.model.apply({"params": params}, batch["inputs"]), -1) == batch["label"]
  attack = jax.jit(lambda p, b: robustness.attacked_logits(  # jitted as evaluate's (eager FGSM differs: sign(~0))
      experiment.model, p, b, attack="fgsm", epsilon=16.0, input_kind="images", settings=settings,
      image_stats=experiment.info.image_stats, rng=None)[0])
  attacked = np.argmax(attack(params, batch), -1) == batch["label"]
  assert got["clean_correct"] == clean.sum() and 0 < got["attack_success_rate"] < 1
  np.testing.assert_allclose(got["attack_success_rate"], np.mean(~attacked[clean]), atol=1 / len(source))
  np.testing.assert_allclose(got["accuracy"], attacked.mean(), atol=1 / len(source))
  zero = robustness.evaluate(experiment, params, "test", ("pgd",), dataclasses.replace(settings, epsilons=(0.0,)))
  assert zero["pgd"]["0"]["attack_success_rate"] == 0.0


def test_token_attacks_perturb_the_embeddings_within_the_relative_radius(tmp_path):
  config = tiny_config(**{"train.num_steps": 60, "train.eval_every": 60, "train.checkpoint_every": 60})
  trainer.train_and_evaluate(config, str(tmp_path))
  experiment, _, params = trainer.restore_params(config, str(tmp_path))
  source = sources.load_split(experiment.config.data, "test")
  batch = {name: np.stack([source[i][name] for i in range(8)]) for name in ("inputs", "label", "weight")}
  settings = robustness.AttackSettings(epsilons=(0.5,))
  table = np.asarray(params["embed"]["embedding"], np.float64)
  radius = 0.5 * np.mean(np.linalg.norm(table[1:], axis=-1)) / np.sqrt(table.shape[1])
  for attack in ("fgsm", "pgd"):
    logits, delta = robustness.attacked_logits(experiment.model, params, batch, attack=attack, epsilon=0.5,
                                               input_kind="tokens", settings=settings, rng=jax.random.key(0))
    assert delta.shape == batch["inputs"].shape + (table.shape[1],)
    np.testing.assert_allclose(float(jnp.max(jnp.abs(delta))), radius, rtol=1e-5)  # FGSM/PGD reach the corners
  clean = experiment.evaluate(params, "test")["accuracy"]
  assert _attacked_accuracy(experiment, params, "fgsm", 0.0) == clean
  fgsm, pgd = (_attacked_accuracy(experiment, params, attack, 2.0) for attack in ("fgsm", "pgd"))
  assert pgd <= fgsm <= clean


WORDS = ("the quick brown fox jumps over the lazy dog and then the fox sleeps <eos> a dog barks at "
         "night , but nobody hears it <eos>").split()


def _word_info():
  vocabulary = ("<pad>", "<unk>", "<eos>") + tuple(sorted(set(WORDS) - {"<eos>"}))
  return sources.DatasetInfo(vocab_size=len(vocabulary), vocabulary=vocabulary, tokenizer="words")


def test_contamination_of_words_swaps_exactly_the_fraction_of_eligible_words():
  info = _word_info()
  index = {word: i for i, word in enumerate(info.vocabulary)}
  ids = np.asarray([index[w] for w in WORDS * 20])
  eligible = sum(w not in robustness.STOPWORDS and w.isalpha() for w in WORDS) * 20
  out, inserted, replaced, counted = robustness.contaminate(ids, info, 0.1, seed=3)
  assert counted == eligible and replaced == round(0.1 * eligible)
  changed = out != ids
  assert changed.sum() == replaced and np.all(out[changed] == 1)  # <unk>
  np.testing.assert_array_equal(inserted, changed)
  assert all(robustness._eligible(info.vocabulary[i]) for i in ids[changed])  # stopwords, <eos>, ',' kept
  np.testing.assert_array_equal(out, robustness.contaminate(ids, info, 0.1, seed=3).stream)
  assert not np.array_equal(robustness.contaminate(ids, info, 0.1, seed=4).stream, out)
  swapped = robustness.contaminate(ids, info, 0.1, seed=3, replacement="random")
  assert all(robustness._eligible(info.vocabulary[i]) for i in swapped.stream[swapped.inserted])
  assert swapped.inserted.sum() == replaced


@pytest.mark.parametrize("tokenizer", ["chars", "bytes"])
def test_contamination_of_characters_keeps_the_length(tokenizer):
  text = " ".join(WORDS * 10)
  if tokenizer == "chars":
    vocabulary = ("<pad>", "<unk>") + tuple(sorted(set(text)))
    ids = np.asarray([vocabulary.index(c) for c in text])
  else:
    vocabulary = ("<pad>",) + tuple(range(256))
    ids = np.frombuffer(text.encode(), np.uint8).astype(np.int64) + 1
  info = sources.DatasetInfo(vocab_size=len(vocabulary), vocabulary=vocabulary, tokenizer=tokenizer)
  out, inserted, replaced, eligible = robustness.contaminate(ids, info, 0.25, seed=0)
  assert out.shape == ids.shape and replaced == round(0.25 * eligible)
  decode = (lambda a: "".join(vocabulary[i] for i in a)) if tokenizer == "chars" else (lambda a: bytes(a - 1).decode())
  before, after = decode(ids).split(), decode(out).split()
  swapped = [(b, a) for b, a in zip(before, after) if b != a]
  assert len(swapped) == replaced and len(before) == len(after)
  assert all(len(a) == len(b) and a not in before and b not in robustness.STOPWORDS for b, a in swapped)
  letters = out[inserted] if tokenizer == "chars" else out[inserted].astype(np.uint8)  # bytes(): one byte each
  assert np.all(inserted[out != ids]) and decode(letters).isalpha()  # the inserted words' letters
  assert replaced <= inserted.sum() <= sum(len(a) for _, a in swapped)
  np.testing.assert_array_equal(robustness.contaminate(ids, info, 0.25, seed=0).stream, out)


def test_eval_attacks_command(trained_digits, tmp_path):
  _, _, workdir = trained_digits
  result = run_script("eval.py", workdir, {"eval.splits": "('test',)"}, devices=2,
                      extra=["--attacks=fgsm,pgd", "--epsilons=2,8", "--attack_convention=pixel", "--pgd_steps=5"])
  assert result.returncode == 0, result.stderr
  record = json.loads((workdir / "eval" / "300.json").read_text())
  assert set(record["attacks"]["test"]) == {"fgsm", "pgd"} and set(record["attacks"]["test"]["pgd"]) == {"2", "8"}
  assert record["attack_settings"]["convention"] == "pixel" and record["attack_settings"]["pgd_steps"] == 5
  assert (workdir / "eval" / "robustness.png").exists() and "accuracy under attack, pixel convention" in result.stdout
  pgd = record["attacks"]["test"]["pgd"]["8"]
  assert 0 <= pgd["attack_success_rate"] <= 1 and pgd["clean_correct"] > 0
  assert result.stdout.count("attack_success_rate 2: ") == 2  # one line per attack
  refused = run_script("eval.py", workdir, {}, devices=1, extra=["--attacks=contamination"])
  assert refused.returncode == 2 and "do not apply to model 'vit'" in refused.stderr


def test_contaminated_language_model_evaluation(tmp_path):
  config = small_config("shakespeare_char_lm", tmp_path, **{"train.num_steps": 2})
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  result = run_script("eval.py", tmp_path / "run", {}, devices=1,
                      extra=["--attacks=contamination", "--contamination=0.5"])
  assert result.returncode == 0, result.stderr
  record = json.loads(next((tmp_path / "run" / "eval").glob("*.json")).read_text())
  for split in ("validation", "test"):
    contaminated = record["attacks"][split]["contamination"]["0.5"]
    assert contaminated["replaced"] == round(0.5 * contaminated["eligible"]) > 0
    assert contaminated["examples"] == record["results"][split]["examples"]  # the same windows, other text
    assert contaminated["perplexity"] != record["results"][split]["perplexity"]
    assert 0 < contaminated["uncontaminated_targets"] < contaminated["examples"]
    assert contaminated["uncontaminated_perplexity"] != contaminated["perplexity"]
  # the uncontaminated perplexity scores the targets outside the inserted words, on the contaminated text
  experiment, _, params = trainer.restore_params(config, str(tmp_path / "run"))
  settings = robustness.AttackSettings(epsilons=(), contamination=0.5)
  got = robustness.evaluate(experiment, params, "test", ("contamination",), settings)["contamination"]["0.5"]
  windows, _, _ = robustness.contaminated_source(sources.load_split(experiment.config.data, "test"), 0.5)
  items = [windows[i] for i in range(len(windows))]
  inputs, targets = (np.stack([item[name] for item in items]) for name in ("inputs", "targets"))
  kept = np.stack([item["weight"] * item["uncontaminated"] for item in items]).astype(bool)
  log_probs = jax.nn.log_softmax(np.asarray(experiment.model.apply({"params": params}, inputs), np.float64))
  losses = -np.take_along_axis(np.asarray(log_probs), targets[..., None], -1)[..., 0]
  assert got["uncontaminated_targets"] == kept.sum() < np.stack([item["weight"] for item in items]).sum()
  np.testing.assert_allclose(got["uncontaminated_loss"], losses[kept].mean(), rtol=1e-4)
  np.testing.assert_allclose(got["uncontaminated_perplexity"], np.exp(losses[kept].mean()), rtol=1e-4)
  np.testing.assert_allclose(got["loss"], losses[np.stack([item["weight"] for item in items]) > 0].mean(), rtol=1e-4)
  swapped = run_script("eval.py", tmp_path / "run", {"eval.splits": "('test',)"}, devices=1,
                       extra=["--attacks=contamination", "--contamination=0.5", "--replacement=random"])
  assert swapped.returncode == 0, swapped.stderr
  record = json.loads(next((tmp_path / "run" / "eval").glob("*.json")).read_text())
  assert record["attack_settings"]["replacement"] == "random" and "contamination" in swapped.stdout.split("perplexity under attack")[1]


def test_reflection_probe_transposes_the_patch_grid_or_reverses_the_real_tokens(trained_digits):
  tokens = np.asarray([[3, 4, 5, 0, 0], [1, 2, 0, 0, 0], [6, 7, 8, 9, 2]])
  np.testing.assert_array_equal(robustness.reflect(jnp.asarray(tokens), "tokens"),
                                [[5, 4, 3, 0, 0], [2, 1, 0, 0, 0], [2, 9, 8, 7, 6]])
  images = np.random.default_rng(0).normal(size=(2, 6, 4, 3)).astype(np.float32)
  reflected = np.asarray(robustness.reflect(jnp.asarray(images), "images", patch_size=2))
  assert reflected.shape == (2, 4, 6, 3)
  for row, col in np.ndindex(3, 2):  # patch (row, col) lands at (col, row), its pixels untouched
    np.testing.assert_array_equal(reflected[:, 2 * col:2 * col + 2, 2 * row:2 * row + 2],
                                  images[:, 2 * row:2 * row + 2, 2 * col:2 * col + 2])

  experiment, params, _ = trained_digits
  settings = robustness.AttackSettings(epsilons=(3.0,))
  got = robustness.evaluate(experiment, params, "test", ("reflect",), settings)["reflect"]
  assert list(got) == ["1"]  # one strength, whatever the radii
  source = sources.load_split(experiment.config.data, "test")
  examples = [experiment.eval_transform(source[i], None) for i in range(len(source))]
  inputs = experiment.device_batch({"inputs": np.stack([e["inputs"] for e in examples])})["inputs"]
  labels = np.asarray([e["label"] for e in examples])
  logits = experiment.model.apply({"params": params}, robustness.reflect(jnp.asarray(inputs), "images", 2))
  np.testing.assert_allclose(got["1"]["accuracy"], np.mean(np.argmax(logits, -1) == labels), atol=1e-6)
  assert 0 <= got["1"]["attack_success_rate"] <= 1
