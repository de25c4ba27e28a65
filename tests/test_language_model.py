"""Language modelling as lmtool-fwms runs WikiText-103: the adaptive softmax and input (against dense
references), the LM without cutoffs unchanged, sliding-window evaluation (against per-token scoring), and
the `:small` / `:medium` settings."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bilateral_jax import experiments, ops, robustness, tasks, trainer
from bilateral_jax.data import builders, core, corpora, pipeline, sources
from bilateral_jax.models import TransformerConfig
from bilateral_jax.models.backbones import CausalLM
from tests.samples import write_wikitext
from tests.test_training import read_metrics, run_script, small_config, tiny_config

STACK = TransformerConfig(num_layers=1, num_heads=2, model_dim=8, mlp_dim=16, max_length=16)


def random_softmax(rng, dims, sizes, model_dim, projected):
  """An AdaptiveSoftmax of float64 arrays: tables [size_i, dim_i], projections [dim_i, model_dim]."""
  normal = lambda *shape: rng.standard_normal(shape)
  return ops.AdaptiveSoftmax(
      tables=tuple(normal(s, d) for s, d in zip(sizes, dims)), bias=tuple(normal(s) for s in sizes),
      projections=tuple(normal(d, model_dim) if projected else None for d in dims),
      cluster_weight=normal(len(sizes) - 1, dims[0]), cluster_bias=normal(len(sizes) - 1))


def reference_log_probs(hidden, softmax):
  """Dense float64 softmaxes, one position and one word at a time: log p(w) [positions, vocab]."""
  sm = jax.tree.map(np.asarray, softmax)
  project = lambda h, i: h if sm.projections[i] is None else sm.projections[i] @ h
  softmax_of = lambda z: np.exp(z - z.max()) / np.sum(np.exp(z - z.max()))
  out = []
  for h in np.asarray(hidden).reshape(-1, hidden.shape[-1]):
    head = softmax_of(np.concatenate([sm.tables[0], sm.cluster_weight]) @ project(h, 0)
                      + np.concatenate([sm.bias[0], sm.cluster_bias]))
    probs = list(head[:len(sm.tables[0])])
    for i in range(1, len(sm.tables)):
      probs += list(head[len(sm.tables[0]) + i - 1] * softmax_of(sm.tables[i] @ project(h, i) + sm.bias[i]))
    out.append(np.log(probs))
  return np.array(out)


@pytest.mark.parametrize("div_val", [1, 2])
def test_adaptive_softmax_against_dense_softmaxes_and_chunked_scores(div_val):
  rng = np.random.default_rng(div_val)
  bounds = ops.cluster_bounds((5, 11, 40), vocab_size=23)  # 40 is past the vocabulary: dropped
  assert bounds == (0, 5, 11, 23)
  sizes = np.diff(bounds).tolist()
  dims = ops.cluster_dims(8, div_val, len(sizes))
  with jax.enable_x64(True):
    softmax = jax.tree.map(jnp.asarray, random_softmax(rng, dims, sizes, 8, projected=div_val > 1))
    hidden = jnp.asarray(rng.standard_normal((2, 7, 8)))
    targets = jnp.asarray(rng.integers(0, 23, (2, 7)))
    weight = jnp.asarray(rng.random((2, 7)))
    full = ops.adaptive_log_probs(hidden, softmax)
    assert full.shape == (2, 7, 23) and full.dtype == jnp.float64
    np.testing.assert_allclose(np.exp(np.asarray(full)).sum(-1), 1.0, atol=1e-13)
    np.testing.assert_allclose(np.asarray(full).reshape(-1, 23), reference_log_probs(hidden, softmax), atol=1e-12)

    scored, predicted = ops.adaptive_target_log_probs(hidden, targets, softmax, chunk=3)  # 7 = 2 x 3 + 1 per row
    np.testing.assert_allclose(scored, jnp.take_along_axis(full, targets[..., None], -1)[..., 0], atol=1e-12)
    np.testing.assert_array_equal(predicted, jnp.argmax(full, -1))

    chunked_loss = lambda h, s: -jnp.sum(ops.adaptive_target_log_probs(h, targets, s, chunk=3)[0] * weight)
    full_loss = lambda h, s: -jnp.sum(jnp.take_along_axis(ops.adaptive_log_probs(h, s), targets[..., None], -1)[..., 0]
                                      * weight)
    got, want = (jax.grad(f, argnums=(0, 1))(hidden, softmax) for f in (chunked_loss, full_loss))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-11), got, want)

    tokens = jnp.asarray(rng.integers(0, 23, (3, 4)))
    embedded = ops.adaptive_embed(tokens, softmax.tables, softmax.projections)
    cluster = np.searchsorted(bounds, np.asarray(tokens), side="right") - 1
    for (b, n), c in np.ndenumerate(cluster):
      row = np.asarray(softmax.tables[c])[int(tokens[b, n]) - bounds[c]]
      want_row = row if softmax.projections[c] is None else row @ np.asarray(softmax.projections[c])
      np.testing.assert_allclose(embedded[b, n], want_row, atol=1e-13)


class TodaysCausalLM(nn.Module):
  """CausalLM as it was before adaptive cutoffs (commit fe27166), kept verbatim as the pin."""
  config: TransformerConfig
  vocab_size: int
  tie_embeddings: bool = True

  @nn.compact
  def __call__(self, tokens, *, deterministic=True):
    embed = nn.Embed(self.vocab_size, self.config.model_dim, embedding_init=nn.initializers.normal(0.02),
                     name="embed")
    coords = ops.sequence_coordinates(tokens.shape[1])
    from bilateral_jax.models.transformer import Transformer
    y = Transformer(self.config, name="transformer")(embed(tokens), coords=coords, is_causal=True,
                                                     deterministic=deterministic)
    if self.tie_embeddings:
      return embed.attend(y.astype(jnp.float32))
    return nn.Dense(self.vocab_size, name="head")(y.astype(jnp.float32))


@pytest.mark.parametrize("tie", [True, False])
def test_without_cutoffs_the_lm_is_bit_identical_to_before(tie):
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 30, (2, 12)))
  new, old = CausalLM(STACK, 30, tie, adaptive_cutoffs=()), TodaysCausalLM(STACK, 30, tie)
  params = new.init(jax.random.key(1), tokens)
  old_params = old.init(jax.random.key(1), tokens)
  assert jax.tree.structure(params) == jax.tree.structure(old_params)
  jax.tree.map(np.testing.assert_array_equal, params, old_params)
  np.testing.assert_array_equal(new.apply(params, tokens), old.apply(params, tokens))


@pytest.fixture(scope="session")  # built once per test worker, whatever order its tests run in
def adaptive_lm():
  """A tiny LM with an adaptive softmax, its parameters, and jitted scorers: log p of every word after the
  last token of a context [1, n], and the task's sums of a batch of windows."""
  model = CausalLM(STACK, 23, adaptive_cutoffs=(5, 11), adaptive_div_val=2, adaptive_chunk=16)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  last = jax.jit(lambda context: model.apply(params, context).log_probs()[0, -1])
  sums = jax.jit(lambda batch: tasks.language_modeling(model.apply(params, batch["inputs"]), batch))
  return last, sums


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_sliding_window_perplexity_equals_scoring_each_token_on_its_context(stride, adaptive_lm):
  """Each target is scored once, by the earliest window that holds it, on the tokens of that window before
  it (stride 1: the `length` tokens before it); the batched, padded evaluation gives the same perplexity."""
  length, stream = 8, np.random.default_rng(stride).integers(0, 23, 31).astype(np.int32)
  windows = corpora.StreamWindows(stream, length, stride, core.DatasetInfo(vocab_size=23))
  scored = np.zeros(len(stream))
  for k in range(len(windows)):
    example, start = windows[k], windows.starts[k]
    np.testing.assert_array_equal(example["targets"], stream[start + 1: start + length + 1])
    scored[start + 1 + np.flatnonzero(example["weight"])] += 1
    assert k == 0 or example["weight"].sum() <= stride
  np.testing.assert_array_equal(scored, [0] + [1] * (len(stream) - 1))  # every token but the first, once

  last, sums = adaptive_lm
  log_p = []
  for t in range(1, len(stream)):
    start = min(s for s in windows.starts if s + length >= t)
    if stride == 1:
      assert start == max(0, t - length)
    assert t <= length or t - start >= length - stride + 1
    context = stream[None, start:t]
    log_p.append(float(last(context)[stream[t]]))
  want = np.exp(-np.mean(log_p))

  totals = {}
  for batch in pipeline.eval_batches(windows, global_batch=4):  # the last batch padded with weight-0 rows
    for name, value in sums(batch).items():
      totals[name] = totals.get(name, 0.0) + np.asarray(value, np.float64)
  metrics = tasks.finalize(totals, tasks.get("lm"))
  assert metrics["examples"] == len(stream) - 1
  np.testing.assert_allclose(metrics["perplexity"], want, rtol=2e-5)


def test_wikitext_frequency_ids_and_sliding_evaluation_windows(tmp_path):
  write_wikitext(tmp_path)
  config = lambda **fields: ml_collections.ConfigDict(dict(name="wikitext", directory=str(tmp_path),
                                                          tfds_dir=str(tmp_path / "tfds"), max_length=8) | fields)
  plain = sources.load_split(config(), "validation")
  default = sources.load_split(config(eval_stride=8, vocabulary_order="sorted"), "validation")
  for name in ("inputs", "targets", "weight"):  # eval_stride 0 or max_length: the contiguous windows as before
    np.testing.assert_array_equal(default.arrays[name], plain.arrays[name])
  train = sources.load_split(config(vocabulary_order="frequency"), "train")
  words = lambda source: [source.info.vocabulary[i] for i in corpora.window_stream(source)]
  assert words(train) == words(sources.load_split(config(), "train"))  # the same text, renumbered
  text = builders.tokens((tmp_path / "wiki.train.tokens").read_text(), "words")
  order = [(-text.count(word), word) for word in train.info.vocabulary[3:]]
  assert train.info.vocabulary[:3] == ("<pad>", "<unk>", "<eos>") and order == sorted(order)  # ties: sorted

  sliding = sources.load_split(config(eval_stride=3, vocabulary_order="frequency"), "validation")
  assert isinstance(sliding, corpora.StreamWindows) and sliding.info.vocabulary == train.info.vocabulary
  assert words(sliding)[:len(words(plain))] == words(plain)  # the whole stream (contiguous windows drop a tail)
  assert sum(sliding[k]["weight"].sum() for k in range(len(sliding))) == len(sliding.stream) - 1
  contaminated, replaced, eligible = robustness.contaminated_source(sliding, 0.5, seed=0)
  assert replaced == round(0.5 * eligible) > 0 and isinstance(contaminated.windows, corpora.StreamWindows)
  assert (contaminated.windows.stride, len(contaminated)) == (3, len(sliding))  # the same windows as the clean score
  inserted = robustness.contaminate(corpora.window_stream(sliding), sliding.info, 0.5, seed=0).inserted
  for k in range(len(contaminated)):  # flags: 0 exactly at the targets that are tokens of inserted words
    start, item = sliding.starts[k], contaminated[k]
    np.testing.assert_array_equal(item["uncontaminated"], ~inserted[start + 1:start + 1 + sliding.length])
    np.testing.assert_array_equal(item["weight"], sliding[k]["weight"])
  assert inserted.any()


def test_small_and_medium_are_lmtools_settings():
  from bilateral_jax import cli
  from configs import wikitext103_lm
  for variant, (width, heads, context, batch, steps) in wikitext103_lm.LMTOOL.items():
    config = wikitext103_lm.get_config(variant)
    experiments.check_settings(config)
    stack = config.model.transformer
    assert (stack.num_layers, stack.model_dim, stack.num_heads, stack.mlp_dim, stack.max_length, stack.dropout_rate,
            stack.norm) == (16, width, heads, 2048, context, 0.1, "post")
    assert width // heads == {"small": 16, "medium": 32}[variant]
    assert (config.model.adaptive_cutoffs, config.model.adaptive_div_val, config.model.tie_embeddings) == (
        (20_000, 40_000, 200_000), 1, True)
    assert (config.data.max_length, config.data.eval_stride, config.data.vocabulary_order) == (context, 1, "frequency")
    assert (config.train.batch_size, config.train.num_steps) == (batch, steps)
    opt = config.optimizer
    assert (opt.learning_rate, opt.warmup_steps, opt.schedule, opt.weight_decay, opt.clip_norm, opt.b2) == (
        2.5e-4, 2_000, "cosine", 0.0, 0.25, 0.999)
    assert cli.default_workdir(f"configs/wikitext103_lm.py:{variant}") == f"runs/wikitext103_lm_{variant}"
  with config.unlocked():
    config.model.vocab_size = 267_736  # WikiText-103's train words and <pad>
  model = experiments.make_model(config)
  tokens = jax.ShapeDtypeStruct((1, 384), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens)["params"]
  assert params["embed"]["embedding"].shape == (267_736, 256) and params["cluster_weight"].shape == (3, 256)
  output = jax.eval_shape(lambda p, t: model.apply({"params": p}, t), params, tokens)
  assert output.hidden.shape == (1, 384, 256)
  with pytest.raises(ValueError, match="unknown config variant"):
    wikitext103_lm.get_config("large")


def test_train_py_lowers_the_loss_with_the_adaptive_softmax_and_sliding_evaluation(tmp_path):
  write_wikitext(tmp_path / "data")
  overrides = {
      "data.directory": str(tmp_path / "data"), "data.max_length": 16, "data.eval_stride": 4,
      "model.transformer.num_layers": 1, "model.transformer.model_dim": 16, "model.transformer.num_heads": 2,
      "model.transformer.mlp_dim": 32, "model.transformer.max_length": 16, "model.adaptive_cutoffs": "(4,10)",
      "model.adaptive_div_val": 2, "train.batch_size": 8, "train.num_steps": 24, "train.log_every": 1,
      "train.eval_every": 24, "train.checkpoint_every": 24, "eval.batch_size": 8, "optimizer.learning_rate": 1e-2,
      "optimizer.warmup_steps": 2}
  done = run_script("train.py", tmp_path / "run", overrides, devices=1, config="configs/wikitext103_lm.py:small")
  assert done.returncode == 0, done.stderr[-3000:]
  losses = [line["loss"] for line in read_metrics(tmp_path / "run")]
  assert len(losses) == 24 and np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.5, losses
  validation = read_metrics(tmp_path / "run", "validation")[-1]
  valid_tokens = corpora.window_stream(sources.load_split(ml_collections.ConfigDict(dict(
      name="wikitext", directory=str(tmp_path / "data"), tfds_dir=str(tmp_path / "run" / "tfds"), max_length=16,
      eval_stride=4)), "validation"))
  assert validation["examples"] == len(valid_tokens) - 1  # each validation token scored once
  np.testing.assert_allclose(validation["perplexity"], np.exp(validation["loss"]), rtol=1e-6)
  evaluated = run_script("eval.py", tmp_path / "run", {}, devices=1, extra=["--best"])  # the docstring's eval command
  assert evaluated.returncode == 0 and "perplexity" in evaluated.stdout, evaluated.stderr[-3000:]
  generated = run_script("generate.py", tmp_path / "run", {}, devices=1,  # word-level sampling, greedy
                         extra=["--prompt=the", "--length=6", "--temperature=0"])
  assert generated.returncode == 0, generated.stderr[-3000:]
  continuation = generated.stdout[len("the"):-1]
  assert len(continuation.split()) + continuation.count("\n") == 6, generated.stdout


def test_eval_at_another_length_scores_the_trained_model_and_refuses_a_learned_table(tmp_path):
  """eval.py --eval_length: at the training context it reproduces the training's evaluation; at twice it
  scores longer windows with the same parameters (and diagnose.py --long_range measures the model there); a learned position table, whose rows end at the trained
  length, is refused in one line before anything is restored; a classifier is refused too."""
  config = small_config("shakespeare_char_lm", tmp_path, **{"train.num_steps": 2, "train.eval_every": 2,
                                                               "model.transformer.max_length": 16})
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  logged = {split: read_metrics(tmp_path / "run", split)[-1] for split in ("validation", "test")}
  same = run_script("eval.py", tmp_path / "run", {}, devices=1, extra=["--eval_length=16"])
  assert same.returncode == 0, same.stderr
  at_16 = json.loads((tmp_path / "run" / "eval" / "2_length_16.json").read_text())
  for split in ("validation", "test"):
    assert at_16["results"][split]["perplexity"] == pytest.approx(logged[split]["perplexity"], rel=1e-6)
  longer = run_script("eval.py", tmp_path / "run", {}, devices=1, extra=["--eval_length=32"])
  assert longer.returncode == 0, longer.stderr
  at_32 = json.loads((tmp_path / "run" / "eval" / "2_length_32.json").read_text())
  assert at_32["eval_length"] == 32 and np.isfinite(at_32["results"]["test"]["perplexity"])
  assert at_32["results"]["test"]["examples"] == at_16["results"]["test"]["examples"]  # the same targets scored
  assert at_32["results"]["test"]["perplexity"] != at_16["results"]["test"]["perplexity"]  # on longer contexts
  stability = run_script("diagnose.py", tmp_path / "run", {}, devices=1,
                         extra=["--long_range", "--lengths=16,32", "--examples=4"])
  assert stability.returncode == 0, stability.stderr
  long_range = json.loads((tmp_path / "run" / "diagnostics" / "long_range.json").read_text())
  assert long_range["N"] == [16, 32] and long_range["trained_length"] == 16 and long_range["step"] == 2
  assert all(value > 0 for value in long_range["sensitivity"])
  learned = {"model.transformer.attention": "standard", "model.transformer.position_table": "learned"}
  refused = run_script("eval.py", tmp_path / "run", learned, devices=1, extra=["--eval_length=32"])
  assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].endswith(
      "train a scheme defined at any length (RoPE, ALiBi, BSA's coordinate kernels, sinusoidal, none)")
  assert "learned position table has rows for 16 positions only" in refused.stderr
  assert experiments.at_eval_length(config, 64).eval.batch_size == max(1, config.eval.batch_size // 4)  # same tokens
  with pytest.raises(ValueError, match="model 'classifier' is not a language model"):
    experiments.at_eval_length(tiny_config(), 64)
