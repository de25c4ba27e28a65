"""Attacks of the paper's robustness claims, as pure jax over a model's apply function.

- `linf_attack`: L-infinity FGSM (one step of the whole radius from the clean input) and PGD (steps of
  `step_fraction` x radius from a uniform random start, projected back onto the ball each step),
  maximising the cross-entropy of `labels`.
- What is perturbed, per task input (`tasks.Task.inputs`), and what ε means:
  * images, `normalized` convention (default; as cleverhans evaluates DeiT with no labels given): the
    normalised model input x, radius ε/255 in its units, no clipping, the attack's labels are the model's
    own clean predictions (no label leaking); accuracy is counted against the true labels.
  * images, `pixel` convention: the pixels p = x std + mean in [0, 1], radius ε/255, p + δ clipped to
    [0, 1], then normalised; the attack's labels are the true labels.
  * tokens (ListOps, Text): the token embeddings e (the output of the model's `nn.Embed`), radius
    ε m / sqrt(d) per coordinate, where m is the mean L2 norm of the embedding rows (padding excluded) and
    d their width: a corner of the ball moves a token by ε m in L2, so ε is a fraction of a typical
    embedding's length. True labels.
- Attacks are compared at unequal clean accuracy: beside the accuracy under attack, `evaluate` reports
  `attack_success_rate`, the fraction of the examples classified correctly when clean (`clean_correct` of
  them) that the attack makes wrong (`success_sums` counts them in the attack step).
- `reflect`: not an attack but a probe of what a model learned about direction (docs/method.md section 2
  "Direction"): accuracy on the inputs laid out reflected on their grid, each image's patch grid
  transposed (every patch's own pixels untouched) or each sequence's real tokens reversed (padding stays
  at the end). A model that sees no direction scores exactly its clean accuracy; reported at strength 1.
- `contaminate`: the word-swap contamination of a language model's evaluation text (the authors' group
  replaces 1.5% of WikiText-103's words, stopwords excepted): exactly round(fraction x eligible) words
  (words with a letter, not stopwords, chosen by a seeded draw) become a word outside the vocabulary
  (`oov`: `<unk>` for word vocabularies; for character or byte vocabularies a random string of letters of
  the same length that is not a word of the text) or a random vocabulary word (`random`; characters: a
  word of the text of the same length). Beside the perplexity of the whole contaminated text, `evaluate`
  reports `uncontaminated_perplexity` (and `_loss`, `_accuracy`) over the `uncontaminated_targets` only:
  the targets that are not tokens of an inserted word, whose own loss says little about the model.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bilateral_jax import parallel
from bilateral_jax.data import core, corpora, sources

IMAGE_ATTACKS = ("fgsm", "pgd")
REFLECTION = "reflect"
ATTACKS = IMAGE_ATTACKS + (REFLECTION, "contamination")
CONVENTIONS = ("normalized", "pixel")
REPLACEMENTS = ("oov", "random")

# NLTK's English stopword list.
STOPWORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
herself it its itself they them their theirs themselves what which who whom this that these those am is
are was were be been being have has had having do does did doing a an the and but if or because as until
while of at by for with about against between into through during before after above below to from up
down in out on off over under again further then once here there when where why how all any both each few
more most other some such no nor not only own same so than too very s t can will just don should now d ll
m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma mightn mustn needn shan shouldn wasn weren
won wouldn""".split())


@dataclasses.dataclass(frozen=True)
class AttackSettings:
  """epsilons: in the task's units (images: 1/255; tokens: fractions of the mean embedding norm; for
  `contamination` the fraction of eligible words is `contamination`)."""
  epsilons: tuple[float, ...]
  convention: str = "normalized"
  pgd_steps: int = 20
  pgd_step_fraction: float = 0.15
  random_start: bool = True
  pgd_restarts: int = 1
  contamination: float = 0.015
  replacement: str = "oov"
  seed: int = 0

  def __post_init__(self):
    if self.convention not in CONVENTIONS:
      raise ValueError(f"attack convention {self.convention!r} is not one of: {', '.join(CONVENTIONS)}")
    if self.replacement not in REPLACEMENTS:
      raise ValueError(f"contamination replacement {self.replacement!r} is not one of: {', '.join(REPLACEMENTS)}")
    if min(self.epsilons, default=0) < 0 or self.pgd_steps < 1 or self.pgd_step_fraction <= 0:
      raise ValueError("epsilons must be >= 0, pgd_steps >= 1 and pgd_step_fraction > 0")
    if self.pgd_restarts < 1 or (self.pgd_restarts > 1 and not self.random_start):
      raise ValueError(f"pgd_restarts={self.pgd_restarts} must be 1, or more with a random start")
    if not 0 <= self.contamination <= 1:
      raise ValueError(f"contamination={self.contamination} must lie in [0, 1]")


def linf_attack(loss_fn, shape, *, radius, steps: int, step_size, random_start: bool, rng, bounds=None):
  """-> δ of `shape` with |δ| <= radius (and low <= δ <= high for bounds=(low, high)) that ascends
  loss_fn(δ): `steps` signed-gradient steps of `step_size` from 0 or a uniform random start."""
  low, high = (-radius, radius) if bounds is None else (jnp.maximum(bounds[0], -radius), jnp.minimum(bounds[1], radius))
  project = lambda delta: jnp.clip(delta, low, high)
  start = jax.random.uniform(rng, shape, minval=-1.0, maxval=1.0) * radius if random_start else jnp.zeros(shape)
  ascend = lambda _, delta: project(delta + step_size * jnp.sign(jax.grad(loss_fn)(delta)))
  return jax.lax.fori_loop(0, steps, ascend, project(start))


def _embedding_perturbation(model: nn.Module, params, tokens, delta):
  """Logits of `model` on `tokens` with δ added to the output of its token embedding."""

  def add(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.Embed) and context.method_name == "__call__":
      out = out + delta.reshape(out.shape).astype(out.dtype)
    return out

  with nn.intercept_methods(add):
    return model.apply({"params": params}, tokens)


def mean_embedding_norm(params) -> jax.Array:
  """The mean L2 norm of the token embedding rows (row 0, padding, excluded)."""
  table = params["embed"]["embedding"].astype(jnp.float32)
  return jnp.mean(jnp.linalg.norm(table[1:], axis=-1))


def reflect(inputs, input_kind: str, patch_size: int | None = None):
  """Images [b, h, w, c] with their patch grid transposed, or token ids [..., n] (0 = padding, at the end)
  with their real tokens reversed."""
  if input_kind == "images":
    b, h, w, c = inputs.shape
    p = patch_size
    grid = inputs.reshape(b, h // p, p, w // p, p, c)
    return grid.transpose(0, 3, 2, 1, 4, 5).reshape(b, w, h, c)
  tokens = inputs.reshape(-1, inputs.shape[-1])
  lengths = jnp.sum(tokens != 0, axis=-1, keepdims=True)
  position = jnp.arange(tokens.shape[-1])[None]
  index = jnp.where(position < lengths, lengths - 1 - position, position)
  return jnp.take_along_axis(tokens, index, axis=-1).reshape(inputs.shape)


def perturbed(model: nn.Module, params, inputs, *, epsilon, input_kind: str, settings: AttackSettings,
              image_stats=None):
  """How an attack perturbs `inputs` (module docstring: units and conventions) -> (apply: δ -> logits of
  `model`, radius, bounds of δ or None, δ's shape)."""
  if input_kind == "images":
    if settings.convention == "normalized":
      return lambda delta: model.apply({"params": params}, inputs + delta), epsilon / 255.0, None, inputs.shape
    mean, std = (jnp.asarray(value, jnp.float32) for value in image_stats)
    pixels = inputs * std + mean
    apply = lambda delta: model.apply({"params": params}, (jnp.clip(pixels + delta, 0.0, 1.0) - mean) / std)
    return apply, epsilon / 255.0, (-pixels, 1.0 - pixels), inputs.shape
  if input_kind == "tokens":
    dim = params["embed"]["embedding"].shape[-1]
    apply = lambda delta: _embedding_perturbation(model, params, inputs, delta)
    return apply, epsilon * mean_embedding_norm(params) / np.sqrt(dim), None, inputs.shape + (dim,)
  raise ValueError(f"FGSM and PGD perturb images or token embeddings, not {input_kind!r} inputs")


def attacked_logits(model: nn.Module, params, batch, *, attack: str, epsilon, input_kind: str, settings: AttackSettings,
                    image_stats=None, rng=None, crafted_by=None):
  """(logits of `model` on `batch["inputs"]` perturbed by FGSM or PGD at `epsilon`, or reflected; δ) (see
  the module docstring for the units and labels of each input kind and convention). PGD with
  `settings.pgd_restarts` > 1 keeps, per example, the restart of the highest loss. crafted_by: (model,
  params) of another model of the same images that crafts δ (a transfer attack); the logits are `model`'s."""
  inputs, weight = batch["inputs"], batch["weight"]
  if attack == REFLECTION:
    reflected = reflect(inputs, input_kind, getattr(model, "patch_size", None))
    return model.apply({"params": params}, reflected), reflected - inputs
  if crafted_by is not None and input_kind != "images":
    raise ValueError(f"a transfer attack needs inputs both models read alike (images), not {input_kind!r}")
  space = functools.partial(perturbed, inputs=inputs, epsilon=epsilon, input_kind=input_kind, settings=settings,
                            image_stats=image_stats)
  apply, radius, bounds, shape = space(model, params)
  craft = apply if crafted_by is None else space(*crafted_by)[0]
  clean = craft(jnp.zeros(shape))
  labels = (jnp.argmax(clean, -1) if input_kind == "images" and settings.convention == "normalized"
            else batch["label"])
  per_example = lambda delta: optax.softmax_cross_entropy_with_integer_labels(craft(delta).astype(jnp.float32), labels)
  loss = lambda delta: jnp.sum(weight * per_example(delta))
  if attack == "fgsm":
    delta = linf_attack(loss, shape, radius=radius, steps=1, step_size=radius, random_start=False, rng=rng,
                        bounds=bounds)
  elif attack == "pgd":
    pgd = lambda key: linf_attack(loss, shape, radius=radius, steps=settings.pgd_steps,
                                  step_size=settings.pgd_step_fraction * radius, random_start=settings.random_start,
                                  rng=key, bounds=bounds)
    delta = pgd(rng)
    if settings.pgd_restarts > 1:
      best = per_example(delta)
      for restart in range(1, settings.pgd_restarts):
        other = pgd(jax.random.fold_in(rng, restart))
        other_loss = per_example(other)
        better = other_loss > best
        delta = jnp.where(better.reshape((-1,) + (1,) * (len(shape) - 1)), other, delta)
        best = jnp.where(better, other_loss, best)
  else:
    raise ValueError(f"unknown attack {attack!r}; known: {', '.join(IMAGE_ATTACKS)}")
  return apply(delta), delta


def success_sums(clean_logits, attacked_logits, batch) -> dict[str, jax.Array]:
  """clean and attacked logits [b, classes], batch label [b], weight [b] -> weighted counts of the examples
  classified correctly when clean (`clean_correct`) and of those the attack makes wrong
  (`attack_successes`)."""
  labels, weight = batch["label"], batch["weight"]
  correct = jnp.argmax(clean_logits, axis=-1) == labels
  broken = correct & (jnp.argmax(attacked_logits, axis=-1) != labels)
  return {"clean_correct": jnp.sum(weight * correct), "attack_successes": jnp.sum(weight * broken)}


def _success_rate(metrics: dict) -> dict:
  """Metrics finalised from sums with `success_sums` (each divided by the weight) -> the same with
  `clean_correct` as a count and `attack_success_rate` (None when no example is correct when clean)."""
  metrics = dict(metrics)
  correct, successes = metrics.pop("clean_correct"), metrics.pop("attack_successes")
  metrics["clean_correct"] = int(round(correct * metrics["examples"]))
  metrics["attack_success_rate"] = successes / correct if metrics["clean_correct"] else None
  return metrics


WORD = re.compile(r"[A-Za-z]+")


def _eligible(word: str) -> bool:
  return bool(WORD.search(word)) and word.lower() not in STOPWORDS and not word.startswith("<")


class Contamination(NamedTuple):
  """stream [n]: the contaminated token stream; inserted [n]: True at the tokens of inserted words;
  replaced, eligible: counts of words."""
  stream: np.ndarray
  inserted: np.ndarray
  replaced: int
  eligible: int


def contaminate(ids: np.ndarray, info: core.DatasetInfo, fraction: float, *, seed: int = 0,
                replacement: str = "oov") -> Contamination:
  """A token stream [n] -> its `Contamination`; see the module docstring. Deterministic for a seed; the
  stream keeps its length."""
  rng = np.random.default_rng(seed)
  ids = np.asarray(ids)
  if info.tokenizer == "words":
    vocabulary = np.asarray([str(token) for token in info.vocabulary], object)
    eligible_vocab = np.asarray([_eligible(token) for token in vocabulary])
    positions = np.flatnonzero(eligible_vocab[ids])
    chosen = np.sort(rng.choice(positions, round(fraction * len(positions)), replace=False))
    out, inserted = ids.copy(), np.zeros(len(ids), bool)
    out[chosen] = 1 if replacement == "oov" else rng.choice(np.flatnonzero(eligible_vocab), len(chosen))
    inserted[chosen] = True
    return Contamination(out, inserted, len(chosen), len(positions))
  if info.tokenizer == "chars":
    index = {token: i for i, token in enumerate(info.vocabulary)}
    text = "".join(info.vocabulary[i] if i >= 2 else "\0" for i in ids)  # <pad>, <unk>: no letter
    encode = lambda string: [index.get(char, 1) for char in string]
    letters = [char for char in "abcdefghijklmnopqrstuvwxyz" if char in index]
  elif info.tokenizer == "bytes":
    text = "".join(chr(i - 1) if i else "\0" for i in ids)
    encode = lambda string: [ord(char) + 1 for char in string]
    letters = list("abcdefghijklmnopqrstuvwxyz")
  else:
    raise ValueError(f"contamination needs a word, char or byte vocabulary, not {info.tokenizer!r}")
  words = [match for match in WORD.finditer(text) if _eligible(match.group())]
  known = {match.group().lower() for match in WORD.finditer(text)}
  by_length: dict[int, list[str]] = {}
  for word in sorted(known):
    by_length.setdefault(len(word), []).append(word)
  chosen = np.sort(rng.choice(len(words), round(fraction * len(words)), replace=False))
  out, inserted = ids.copy(), np.zeros(len(ids), bool)
  for k in chosen:
    match = words[k]
    length = len(match.group())
    if replacement == "random" and len(by_length.get(length, [])) > 1:
      new = match.group().lower()
      while new == match.group().lower():
        new = by_length[length][rng.integers(len(by_length[length]))]
    else:
      for _ in range(100):  # a short word may have no unused spelling: then the last draw stands
        new = "".join(rng.choice(letters, length))
        if new not in known:
          break
    out[match.start():match.end()] = encode(new)
    inserted[match.start():match.end()] = True
  return Contamination(out, inserted, len(chosen), len(words))


@dataclasses.dataclass
class ContaminatedWindows:
  """The windows of a contaminated text (`windows`, cut as the clean ones) whose examples also hold
  `uncontaminated` [length]: 1.0 where the target is not a token of an inserted word (`flags`: the same
  windows over that 0/1 stream)."""
  windows: Any
  flags: Any

  @property
  def info(self) -> core.DatasetInfo:
    return self.windows.info

  def __len__(self) -> int:
    return len(self.windows)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return self.windows[index] | {"uncontaminated": self.flags[index]["targets"]}


def contaminated_source(source, fraction: float, *, seed: int = 0,
                        replacement: str = "oov") -> tuple[ContaminatedWindows, int, int]:
  """A language model's windows (contiguous or sliding) with the text under them contaminated -> (the
  same windows of the contaminated text with their `uncontaminated` targets, replaced, eligible)."""
  stream, inserted, replaced, eligible = contaminate(corpora.window_stream(source), source.info, fraction,
                                                     seed=seed, replacement=replacement)
  clean = (~inserted).astype(np.float32)
  if isinstance(source, corpora.StreamWindows):
    cut = lambda s: corpora.StreamWindows(s, source.length, source.stride, source.info)
  else:
    cut = lambda s: corpora.stream_windows(s, source.arrays["inputs"].shape[1], source.info)
  return ContaminatedWindows(cut(stream), cut(clean)), replaced, eligible


def _contamination_step(experiment):
  """jit: (params, batch of `ContaminatedWindows`) -> the task's sums over every target, and the same sums
  over the uncontaminated targets (prefixed `uncontaminated_`), from one forward pass."""

  def step(params, batch):
    output = experiment.model.apply({"params": params}, batch["inputs"])
    kept = experiment.task.sums(output, batch | {"weight": batch["weight"] * batch["uncontaminated"]})
    return experiment.task.sums(output, batch) | {f"uncontaminated_{name}": value for name, value in kept.items()}

  return experiment.jit(step, out_shardings=parallel.replicated(experiment.mesh))


def _uncontaminated(metrics: dict) -> dict:
  """Metrics finalised from `_contamination_step`'s sums (each divided by the whole weight) -> the same
  with the uncontaminated targets' own means, perplexity and count."""
  metrics = dict(metrics)
  share = metrics.pop("uncontaminated_weight")  # of the scored targets
  metrics["uncontaminated_targets"] = int(round(share * metrics["examples"]))
  for name in ("loss", "accuracy"):
    metrics[f"uncontaminated_{name}"] = metrics[f"uncontaminated_{name}"] / share if share else None
  metrics["uncontaminated_perplexity"] = (float(np.exp(min(metrics["uncontaminated_loss"], 700.0))) if share
                                          else None)
  return metrics


def evaluate(experiment, params, split: str, attacks: tuple[str, ...], settings: AttackSettings,
             crafted_by=None) -> dict:
  """Metrics of `split` under each attack: {attack: {ε or fraction (str): metrics}}. FGSM and PGD add
  `clean_correct` and `attack_success_rate`; contamination adds the `uncontaminated_` metrics and the
  `replaced` and `eligible` word counts. `experiment` is an `experiments.Experiment`. crafted_by: (model,
  params) that craft FGSM's and PGD's perturbations (transfer attacks; `attacked_logits`)."""
  refused = [attack for attack in attacks if attack not in experiment.task.attacks]
  if refused:
    raise ValueError(f"attacks {', '.join(refused)} do not apply to model {experiment.config.model.name!r}; "
                     f"its attacks: {', '.join(experiment.task.attacks) or 'none'}")
  source = sources.shared_split(experiment.config.data, split)
  results = {}
  for attack in attacks:
    if attack == "contamination":
      contaminated, replaced, eligible = contaminated_source(source, settings.contamination, seed=settings.seed,
                                                             replacement=settings.replacement)
      metrics = experiment.evaluate(params, split, contaminated, _contamination_step(experiment))
      results[attack] = {str(settings.contamination): _uncontaminated(metrics)
                         | {"replaced": replaced, "eligible": eligible}}
      continue
    step = experiment.attack_step(attack, settings, None if crafted_by is None else crafted_by[0])
    source_params = () if crafted_by is None else (crafted_by[1],)
    results[attack] = {}
    for epsilon in (1.0,) if attack == REFLECTION else settings.epsilons:
      batches = itertools.count()  # PGD's random start: its own key per batch, the same in every run
      attacked = lambda p, batch: step(p, batch, jnp.float32(epsilon),
                                       jax.random.fold_in(jax.random.key(settings.seed), next(batches)),
                                       *source_params)
      results[attack][f"{epsilon:g}"] = _success_rate(experiment.evaluate(params, split, source, attacked))
  return results


def headline(task) -> str:
  """The metric an attack is reported by: perplexity for language models, else accuracy."""
  return "perplexity" if "perplexity" in task.metrics else "accuracy"


def companion(attack: str) -> str:
  """What is reported beside the headline metric under `attack`: the perplexity over the uncontaminated
  targets (contamination), else the attack's success rate on the examples correct when clean."""
  return "uncontaminated_perplexity" if attack == "contamination" else "attack_success_rate"


def curve(clean: dict, attacked: dict, metric: str) -> dict[str, tuple[list, list]]:
  """One split's clean metrics and attack results -> {attack: (ε or fraction with 0 first, metric)}; the
  reflection probe, which has no strength, is left out."""
  return {attack: ([0.0] + [float(key) for key in by_strength],
                   [clean[metric]] + [result[metric] for result in by_strength.values()])
          for attack, by_strength in attacked.items() if attack != REFLECTION}
