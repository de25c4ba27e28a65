"""FGSM/PGD and word-swap contamination (bilateral_jax/robustness.py), and eval.py --attacks.

FGSM and PGD equal a closed-form numpy attack on softmax regression (images in both conventions, token
embeddings), stay in their ball and range, and raise a trained model's loss above that of random
perturbations of the same norm; the success rate counts the clean-correct examples made wrong; word and
character contamination are checked against their definitions written out in the test; the reflect probe
transposes the patch grid or reverses the real tokens."""
import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilateral_jax import robustness, trainer
from bilateral_jax.data import core, corpora, sources
from tests import independent
from tests.test_training import run_script, small_config


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


class LinearImageClassifier(nn.Module):
  """Softmax regression on the flattened image."""
  classes: int

  @nn.compact
  def __call__(self, images):
    return nn.Dense(self.classes, name="head")(images.reshape(images.shape[0], -1))


class LinearTokenClassifier(nn.Module):
  """Softmax regression on the mean of the token embeddings."""
  vocab: int
  dim: int
  classes: int

  @nn.compact
  def __call__(self, tokens):
    embedded = nn.Embed(self.vocab, self.dim, name="embed")(tokens)
    return nn.Dense(self.classes, name="head")(jnp.mean(embedded, axis=1))


def softmax64(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def numpy_linf_attack(gradient, delta, low, high, *, steps, step_size):
  """`steps` signed-gradient steps of `step_size` from delta, each clipped to [low, high], in float64."""
  delta = np.clip(delta, low, high)
  for _ in range(steps):
    delta = np.clip(delta + step_size * np.sign(gradient(delta)), low, high)
  return delta


@pytest.mark.parametrize("case", ["images normalized", "images pixel", "tokens"])
def test_fgsm_and_pgd_on_softmax_regression_equal_a_closed_form_numpy_attack(case):
  """On a linear model the cross-entropy's input gradient is W^T (softmax - onehot) (times the chain rule's
  positive factors): FGSM is the radius times its sign, PGD the same signed steps from the uniform start,
  both clipped to the ball (and the pixels to [0, 1]); an example of weight 0 is not moved."""
  rng = np.random.default_rng(0)
  batch_size, classes = 6, 4
  weight = np.asarray([1, 1, 1, 1, 1, 0], np.float32)
  labels = rng.integers(0, classes, batch_size)
  settings = robustness.AttackSettings(epsilons=(8.0,), pgd_steps=5,
                                       convention="pixel" if case == "images pixel" else "normalized")
  if case == "tokens":
    vocab, dim, n = 7, 5, 4
    model = LinearTokenClassifier(vocab, dim, classes)
    table, kernel = rng.standard_normal((vocab, dim)), rng.standard_normal((dim, classes))
    params = {"embed": {"embedding": table}, "head": {"kernel": kernel, "bias": rng.standard_normal(classes)}}
    inputs = rng.integers(1, vocab, (batch_size, n))
    embedded = table[inputs]
    radius = 0.5 * np.mean(np.linalg.norm(table[1:], axis=-1)) / np.sqrt(dim)  # ε = 0.5 of the mean row norm
    epsilon, low, high, shape, stats = 0.5, -radius, radius, embedded.shape, None
    logits_of = lambda delta: np.mean(embedded + delta, axis=1) @ kernel + params["head"]["bias"]
    onehot = np.eye(classes)[labels]
    gradient = lambda delta: np.repeat(
        (weight[:, None] * (softmax64(logits_of(delta)) - onehot) @ kernel.T)[:, None] / n, n, axis=1)
  else:
    height, width, channels = 2, 3, 3
    model = LinearImageClassifier(classes)
    kernel = rng.standard_normal((height * width * channels, classes))
    params = {"head": {"kernel": kernel, "bias": rng.standard_normal(classes)}}
    pixels = rng.uniform(0, 1, (batch_size, height, width, channels))
    pixels[:, 0, 0] = [0.0, 0.01, 0.995]  # within the radius of 0 and 1: the pixel bounds bind
    mean, std = np.asarray([0.4, 0.5, 0.6]), np.asarray([0.2, 0.25, 0.3])
    inputs, stats = ((pixels - mean) / std).astype(np.float32), (mean, std)
    pixels = np.asarray(inputs, np.float64) * std + mean
    epsilon, radius, shape = 8.0, 8.0 / 255, inputs.shape
    if settings.convention == "normalized":  # x + δ, unclipped, against the clean predictions
      low, high = -radius, radius
      model_input = lambda delta: np.asarray(inputs, np.float64) + delta
      clean = model_input(0.0).reshape(batch_size, -1) @ kernel + params["head"]["bias"]
      onehot = np.eye(classes)[np.argmax(clean, -1)]
      chain = 1.0
    else:  # the pixels p + δ in [0, 1], normalised, against the true labels
      low, high = np.maximum(-pixels, -radius), np.minimum(1 - pixels, radius)
      model_input = lambda delta: (np.clip(pixels + delta, 0, 1) - mean) / std
      onehot, chain = np.eye(classes)[labels], 1 / std
    logits_of = lambda delta: model_input(delta).reshape(batch_size, -1) @ kernel + params["head"]["bias"]
    gradient = lambda delta: chain * (weight[:, None] * (softmax64(logits_of(delta)) - onehot) @ kernel.T).reshape(
        shape)
  batch = {"inputs": jnp.asarray(inputs), "label": jnp.asarray(labels), "weight": jnp.asarray(weight)}
  params = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), params)
  start = np.asarray(jax.random.uniform(jax.random.key(1), shape, minval=-1.0, maxval=1.0), np.float64) * radius
  want = {"fgsm": numpy_linf_attack(gradient, np.zeros(shape), low, high, steps=1, step_size=radius),
          "pgd": numpy_linf_attack(gradient, start, low, high, steps=5, step_size=0.15 * radius)}
  for attack in ("fgsm", "pgd"):
    logits, delta = robustness.attacked_logits(model, params, batch, attack=attack, epsilon=epsilon,
                                               input_kind=case.split()[0], settings=settings, image_stats=stats,
                                               rng=jax.random.key(1))
    np.testing.assert_allclose(delta, want[attack], rtol=0, atol=2e-7)  # float32 pixels and bounds
    np.testing.assert_allclose(logits, logits_of(want[attack]), rtol=1e-5, atol=1e-5)
    if attack == "fgsm":
      assert np.all(np.asarray(delta)[-1] == 0)  # weight 0: no gradient (PGD: its start, compared above)
    assert np.abs(want[attack][:-1]).max() == pytest.approx(radius)  # the corners of the ball


def linear_image_case(seed: int, classes: int = 4):
  """A softmax regression on 2 x 3 x 3 images with random parameters, and a batch of 6 pixel images."""
  rng = np.random.default_rng(seed)
  params = {"head": {"kernel": jnp.asarray(rng.standard_normal((18, classes)), jnp.float32),
                     "bias": jnp.asarray(rng.standard_normal(classes), jnp.float32)}}
  batch = {"inputs": jnp.asarray(rng.uniform(0, 1, (6, 2, 3, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, classes, 6)), "weight": jnp.ones(6)}
  return LinearImageClassifier(classes), params, batch


def test_pgd_restarts_keep_each_examples_worst_restart():
  model, params, batch = linear_image_case(0)
  one = robustness.AttackSettings(epsilons=(32.0,), pgd_steps=3, convention="pixel")
  attack = lambda settings, rng: robustness.attacked_logits(
      model, params, batch, attack="pgd", epsilon=32.0, input_kind="images", settings=settings,
      image_stats=((0.0,) * 3, (1.0,) * 3), rng=rng)
  key = jax.random.key(3)
  keys = [key] + [jax.random.fold_in(key, restart) for restart in (1, 2)]
  singles = [attack(one, k) for k in keys]  # each one PGD start, checked against numpy above
  losses = np.stack([-np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(batch["label"])[:, None],
                                         -1)[:, 0] for logits, _ in singles])  # [restarts, examples]
  assert len(set(losses.argmax(0))) > 1  # the best restart differs between examples
  want = np.stack([singles[r][1][i] for i, r in enumerate(losses.argmax(0))])
  logits, delta = attack(dataclasses.replace(one, pgd_restarts=3), key)
  np.testing.assert_array_equal(delta, want)
  np.testing.assert_allclose(logits, np.stack([singles[r][0][i] for i, r in enumerate(losses.argmax(0))]), rtol=1e-6)
  with pytest.raises(ValueError, match="pgd_restarts=2 must be 1, or more with a random start"):
    robustness.AttackSettings(epsilons=(1.0,), pgd_restarts=2, random_start=False)


def test_transfer_attacks_craft_on_the_source_model_and_score_the_target():
  target, target_params, batch = linear_image_case(0)
  source, source_params, _ = linear_image_case(1)
  settings = robustness.AttackSettings(epsilons=(16.0,), pgd_steps=4, convention="pixel")
  stats = ((0.0,) * 3, (1.0,) * 3)
  attack = lambda model, params, crafted_by=None: robustness.attacked_logits(
      model, params, batch, attack="pgd", epsilon=16.0, input_kind="images", settings=settings, image_stats=stats,
      rng=jax.random.key(0), crafted_by=crafted_by)
  _, crafted = attack(source, source_params)
  logits, delta = attack(target, target_params, crafted_by=(source, source_params))
  np.testing.assert_array_equal(delta, crafted)
  np.testing.assert_allclose(logits, target.apply({"params": target_params}, jnp.clip(batch["inputs"] + crafted, 0, 1)),
                             rtol=1e-6)
  white_box = attack(target, target_params)
  assert not np.allclose(white_box[1], crafted)
  for got, want in zip(attack(target, target_params, crafted_by=(target, target_params)), white_box):
    np.testing.assert_array_equal(got, want)
  tokens = LinearTokenClassifier(7, 5, 4)
  token_params = tokens.init(jax.random.key(0), jnp.ones((2, 3), jnp.int32))["params"]
  with pytest.raises(ValueError, match="a transfer attack needs inputs both models read alike"):
    robustness.attacked_logits(tokens, token_params, {"inputs": jnp.ones((2, 3), jnp.int32), "label": jnp.zeros(2, int),
                                                      "weight": jnp.ones(2)}, attack="pgd", epsilon=0.1,
                               input_kind="tokens", settings=settings, rng=jax.random.key(0),
                               crafted_by=(tokens, token_params))


@pytest.fixture(scope="session")  # built once per test worker, whatever order its tests run in
def trained_digits(tmp_path_factory):
  """A small ViT trained for a few hundred steps on the digits, and its parameters."""
  workdir = tmp_path_factory.mktemp("digits")
  config = small_config("digits_vit", workdir, **{"train.num_steps": 300, "train.eval_every": 300, "train.batch_size": 64,
                                                  "train.checkpoint_every": 300, "train.log_every": 100,
                                                  "model.transformer.model_dim": 32, "model.transformer.mlp_dim": 64,
                                                  "eval.batch_size": 360, "optimizer.warmup_steps": 10})
  trainer.train_and_evaluate(config, str(workdir))
  data = sources.describe_eval(config)
  experiment, _, params = trainer.restore_params(config, str(workdir), data)
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


def _summed_cross_entropy(logits, labels, weight):
  logits = np.asarray(logits, np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  return -np.sum(np.asarray(weight) * np.take_along_axis(log_probs, np.asarray(labels)[:, None], -1)[:, 0])


@pytest.mark.parametrize("convention", robustness.CONVENTIONS)
def test_fgsm_and_pgd_raise_the_loss_above_random_perturbations_of_the_same_norm(trained_digits, convention):
  """The attacks' loss (on the labels each convention attacks) beats random sign vectors times the radius
  (clipped to the valid pixels as the attacks are): an attack that does nothing, or a random one, fails."""
  experiment, params, _ = trained_digits
  source = sources.load_split(experiment.config.data, "test")
  batch = experiment.device_batch({name: np.stack([experiment.eval_transform(source[i], None)[name] for i in range(64)])
                                   for name in ("inputs", "label", "weight")})
  mean, std = (np.asarray(v, np.float64) for v in experiment.info.image_stats)
  x = np.asarray(batch["inputs"], np.float64)
  forward = jax.jit(lambda inputs: experiment.model.apply({"params": params}, inputs))
  apply = lambda inputs: forward(jnp.asarray(inputs, jnp.float32))
  if convention == "normalized":
    labels, perturb = np.argmax(apply(x), -1), lambda delta: x + delta
  else:
    labels, perturb = np.asarray(batch["label"]), lambda delta: (np.clip(x * std + mean + delta, 0, 1) - mean) / std
  loss = lambda inputs: _summed_cross_entropy(apply(inputs), labels, batch["weight"])
  radius = 4.0 / 255
  signs = np.random.default_rng(0).choice([-1.0, 1.0], (5,) + x.shape)
  random = max(loss(perturb(radius * sign)) for sign in signs)
  clean = loss(x)
  assert random > clean  # the radius is not negligible
  settings = robustness.AttackSettings(epsilons=(4.0,), convention=convention)
  for attack in ("fgsm", "pgd"):
    logits, _ = jax.jit(lambda p, b, attack=attack: robustness.attacked_logits(
        experiment.model, p, b, attack=attack, epsilon=4.0, input_kind="images", settings=settings,
        image_stats=experiment.info.image_stats, rng=jax.random.key(1)))(params, batch)
    assert _summed_cross_entropy(logits, labels, batch["weight"]) - clean > 2 * (random - clean), attack


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
  # a transfer attack from the model itself is its white-box attack, through evaluate's compiled steps
  transferred = robustness.evaluate(experiment, params, "test", ("fgsm",), settings,
                                    crafted_by=(experiment.model, params))["fgsm"]["16"]
  assert transferred == got


def test_token_attacks_perturb_the_embeddings_within_the_relative_radius(trained_tiny_run):
  config, workdir = trained_tiny_run
  data = sources.describe_eval(config)
  experiment, _, params = trainer.restore_params(config, str(workdir), data)
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


WORDS = ("the quick brown fox jumps over the lazy dog and then The fox sleeps <eos> a Dog barks at "
         "night , but nobody hears it x1 1984 co-op <eos>").split()


def eligible_word(word):
  """The docstring's definition: a word with an ASCII letter that is not a stopword (in any case) nor a
  special token (<eos>, <unk>)."""
  return (any(c.isascii() and c.isalpha() for c in word) and word.lower() not in robustness.STOPWORDS
          and not word.startswith("<"))


def _word_info():
  vocabulary = ("<pad>", "<unk>", "<eos>") + tuple(sorted(set(WORDS) - {"<eos>"}))
  return core.DatasetInfo(vocab_size=len(vocabulary), vocabulary=vocabulary, tokenizer="words")


@pytest.mark.parametrize("replacement", robustness.REPLACEMENTS)
def test_contamination_of_words_swaps_exactly_the_fraction_of_eligible_words(replacement):
  """Against the docstring's definition written here: round(fraction x eligible) eligible words become
  <unk> (oov) or an eligible vocabulary word (random); nothing else changes."""
  assert {"the", "a", "at", "but", "it", "and", "then", "over"} <= robustness.STOPWORDS
  info = _word_info()
  index = {word: i for i, word in enumerate(info.vocabulary)}
  ids = np.asarray([index[w] for w in WORDS * 20])
  words = [info.vocabulary[i] for i in ids]
  eligible = np.asarray([eligible_word(w) for w in words])
  assert eligible.sum() == 20 * 15  # quick brown fox jumps lazy dog fox sleeps Dog barks night nobody hears x1 co-op
  fraction = 0.125  # 37.5 words: rounds up
  out, inserted, replaced, counted = robustness.contaminate(ids, info, fraction, seed=3, replacement=replacement)
  assert counted == eligible.sum() and replaced == 38 == round(fraction * eligible.sum())
  assert inserted.sum() == replaced and np.all(eligible[inserted])  # stopwords, <eos>, ',', 1984 never
  np.testing.assert_array_equal(out[~inserted], ids[~inserted])
  if replacement == "oov":
    assert np.all(out[inserted] == index["<unk>"])
  else:
    assert all(eligible_word(info.vocabulary[i]) for i in out[inserted])
    assert np.sum(out != ids) > replaced // 2  # mostly other words
  again = robustness.contaminate(ids, info, fraction, seed=3, replacement=replacement)
  np.testing.assert_array_equal(again.stream, out)
  np.testing.assert_array_equal(again.inserted, inserted)
  assert not np.array_equal(robustness.contaminate(ids, info, fraction, seed=4, replacement=replacement).inserted,
                            inserted)


def _decode(ids, vocabulary, tokenizer):
  if tokenizer == "chars":
    return "".join(vocabulary[i] if i >= 2 else "\0" for i in ids)
  return "".join(chr(i - 1) if i else "\0" for i in ids)


def check_character_contamination(clean_ids, contaminated, vocabulary, tokenizer, fraction, replacement="oov"):
  """Checks a character or byte stream's `Contamination` against the definition, written here: the words are
  the maximal runs of letters; round(fraction x eligible) eligible ones become letters of the same length
  (oov: not a word of the text; random: another word of the text); `inserted` marks exactly their
  characters; nothing else changes."""
  out, inserted, replaced, counted = contaminated
  before, after = _decode(clean_ids, vocabulary, tokenizer), _decode(out, vocabulary, tokenizer)
  assert len(after) == len(before) == len(inserted)
  runs = independent.letter_runs(before)
  eligible = [(start, end, word) for start, end, word in runs if word.lower() not in robustness.STOPWORDS]
  known = {word.lower() for _, _, word in runs}
  assert counted == len(eligible) and replaced == round(fraction * len(eligible)) > 0
  swapped = [(start, end, word) for start, end, word in eligible if after[start:end] != word]
  assert len(swapped) == replaced
  want = np.zeros(len(before), bool)
  for start, end, word in swapped:
    new = after[start:end]
    assert new.isascii() and new.isalpha() and new == new.lower()
    assert (new not in known) if replacement == "oov" else (new in known and new != word.lower())
    assert not after[start - 1:start].isalpha() and not after[end:end + 1].isalpha()  # the same length
    want[start:end] = True
  np.testing.assert_array_equal(inserted, want)
  np.testing.assert_array_equal(np.asarray(out)[~want], np.asarray(clean_ids)[~want])


@pytest.mark.parametrize("tokenizer, replacement", [("chars", "oov"), ("bytes", "oov"), ("chars", "random")])
def test_contamination_of_characters_keeps_the_length(tokenizer, replacement):
  text = " ".join(WORDS * 10)
  if tokenizer == "chars":
    vocabulary = ("<pad>", "<unk>") + tuple(sorted(set(text)))
    ids = np.asarray([vocabulary.index(c) for c in text])
  else:
    vocabulary = ("<pad>",) + tuple(range(256))
    ids = np.frombuffer(text.encode(), np.uint8).astype(np.int64) + 1
  info = core.DatasetInfo(vocab_size=len(vocabulary), vocabulary=vocabulary, tokenizer=tokenizer)
  contaminated = robustness.contaminate(ids, info, 0.25, seed=0, replacement=replacement)
  assert contaminated.stream.shape == ids.shape
  check_character_contamination(ids, contaminated, vocabulary, tokenizer, 0.25, replacement)
  np.testing.assert_array_equal(robustness.contaminate(ids, info, 0.25, seed=0, replacement=replacement).stream,
                                contaminated.stream)


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
  data = sources.describe_eval(config)
  experiment, _, params = trainer.restore_params(config, str(tmp_path / "run"), data)
  settings = robustness.AttackSettings(epsilons=(), contamination=0.5)
  got = robustness.evaluate(experiment, params, "test", ("contamination",), settings)["contamination"]["0.5"]
  source = sources.load_split(experiment.config.data, "test")
  windows, replaced, eligible = robustness.contaminated_source(source, 0.5)
  assert (replaced, eligible) == (got["replaced"], got["eligible"])
  # the windowed text against the definition, and the uncontaminated targets from the text's own changes
  clean, stream = corpora.window_stream(source), corpora.window_stream(windows.windows)
  inserted = corpora.window_stream(windows.flags) == 0
  check_character_contamination(clean, robustness.Contamination(stream, inserted, replaced, eligible),
                                source.info.vocabulary, source.info.tokenizer, 0.5)
  assert not isinstance(source, corpora.StreamWindows)  # contiguous windows: window i's targets are i L + 1..
  length = source.arrays["inputs"].shape[1]
  items = [windows[i] for i in range(len(windows))]
  for i, item in enumerate(items):
    np.testing.assert_array_equal(item["inputs"], stream[i * length:(i + 1) * length])
    np.testing.assert_array_equal(item["uncontaminated"], ~inserted[i * length + 1:(i + 1) * length + 1])
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
