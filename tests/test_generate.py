"""Sampling from causal LMs (bilateral_jax/sampling.py, generate.py): decoding with the key-value cache equals
recomputing the whole sequence for every attention and residual variant (the standard residual, GRC on
either sublayer, scalar and per-channel t drawn at random, boost) and the adaptive softmax; the loop
is seeded, greedy decoding follows the full model, and generate.py runs on a trained character model (the
word-level one with its adaptive softmax: tests/test_language_model.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilateral_jax import sampling, trainer
from bilateral_jax.data.core import DatasetInfo
from bilateral_jax.models import build_model
from tests.test_models import ATTENTIONS, tiny
from tests.test_training import run_script, small_config

VOCAB = 13
CACHED_VARIANTS = ATTENTIONS + [
    dict(attention="bilateral", spatial="asymmetric", content="dot"),
    dict(attention="bilateral", spatial="shifted"),
    dict(attention="bilateral", spatial="laplacian", residual="grc", grc_form="boost"),
    dict(attention="bilateral", spatial="laplacian", residual="standard"),
    dict(attention="bilateral", spatial="gaussian", grc_sublayers=("attention", "mlp"), grc_per_channel=True),
    dict(attention="bilateral", spatial="laplacian", grc_form="boost", grc_sublayers=("attention", "mlp"),
         grc_per_channel=True),
]


def variant_id(variant):
  return "-".join("+".join(value) if isinstance(value, tuple) else "per_channel" if value is True else str(value)
                  for value in variant.values())


def random_grc_t(params, seed=0):
  """Every GRC theta drawn at random (each channel its own t): at init they are all equal, so a per-channel t
  read in the wrong order, or a scalar read in place of it, would go unseen."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [
      jax.random.normal(key, leaf.shape, leaf.dtype) if "grc_theta" in jax.tree_util.keystr(path) else leaf
      for key, (path, leaf) in zip(keys, leaves)])


def full_and_cached(model, tokens, prefill=3):
  """Logits [b, n, ...] of the whole sequence at once, and of the cache filled by its first `prefill` tokens,
  then fed one token at a time."""
  params = model.init(jax.random.key(0), tokens)["params"]
  params = random_grc_t(params)
  full = model.apply({"params": params}, tokens)
  pieces, cache = [], None
  for start, stop in [(0, prefill)] + [(i, i + 1) for i in range(prefill, tokens.shape[1])]:
    variables = {"params": params} | ({} if cache is None else {"cache": cache})
    out, state = model.apply(variables, tokens[:, start:stop], cache_index=jnp.int32(start), mutable=["cache"])
    pieces.append(out)
    cache = state["cache"]
  return full, pieces


@pytest.mark.parametrize("variant", CACHED_VARIANTS, ids=variant_id)
def test_cached_decoding_equals_full_recomputation(variant):
  model = build_model("lm", tiny(**variant), vocab_size=VOCAB)
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, VOCAB, (2, 9)), jnp.int32)
  full, pieces = full_and_cached(model, tokens)
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)


def test_cached_decoding_with_an_adaptive_softmax():
  model = build_model("lm", tiny(spatial="laplacian"), vocab_size=23, adaptive_cutoffs=(5, 11), adaptive_div_val=2)
  tokens = jnp.asarray(np.random.default_rng(1).integers(1, 23, (1, 7)), jnp.int32)
  full, pieces = full_and_cached(model, tokens)
  cached = np.concatenate([piece.log_probs() for piece in pieces], axis=1)
  np.testing.assert_allclose(cached, full.log_probs(), rtol=1e-5, atol=1e-5)


def test_the_cache_refuses_what_it_cannot_decode():
  model = build_model("classifier", tiny(), vocab_size=VOCAB, num_classes=2)
  with pytest.raises(ValueError, match="sampling needs a causal language model"):
    sampling.generate(model, {}, [1, 2], 4)
  lm = build_model("lm", tiny(), vocab_size=VOCAB)
  with pytest.raises(ValueError, match="non-empty prompt"):
    sampling.generate(lm, {}, [], 4)
  tokens = jnp.ones((1, 4), jnp.int32)
  params = lm.init(jax.random.key(0), tokens)["params"]
  with pytest.raises(ValueError, match="decoding 4 tokens at position 13 overflows the cache of max_length 16"):
    lm.apply({"params": params}, tokens, cache_index=13, mutable=["cache"])


def test_generation_is_seeded_follows_the_model_greedily_and_runs_past_the_context():
  model = build_model("lm", tiny(spatial="laplacian", max_length=16), vocab_size=VOCAB)
  params = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
  prompt = np.asarray([3, 5, 7], np.int32)
  first = sampling.generate(model, params, prompt, 40, seed=4)  # past 16 slots: restarts from half a window
  assert first.shape == (40,) and first.min() >= 1 and first.max() < VOCAB
  np.testing.assert_array_equal(first, sampling.generate(model, params, prompt, 40, seed=4))
  assert not np.array_equal(first, sampling.generate(model, params, prompt, 40, seed=5))
  greedy = sampling.generate(model, params, prompt, 10, temperature=0)
  # The whole sequence at once: a causal model's logits at each place are those of its prefix alone
  # (test_causal_stack_leaks_nothing_from_the_future), so each is the next token's greedy choice.
  sequence = np.concatenate([prompt, greedy])
  logits = np.asarray(model.apply({"params": params}, jnp.asarray(sequence[None])))[0, len(prompt) - 1:-1]
  np.testing.assert_array_equal(greedy, np.argmax(logits[:, 1:], axis=-1) + 1)
  top_one = sampling.generate(model, params, prompt, 10, temperature=2.0, top_k=1, seed=9)
  np.testing.assert_array_equal(top_one, greedy)
  assert sampling.generate(model, params, prompt, 1, temperature=0, banned=(0, int(greedy[0])))[0] != greedy[0]


def test_prompts_encode_and_decode_in_the_corpus_vocabulary():
  chars = DatasetInfo(vocab_size=6, vocabulary=("<pad>", "<unk>", "\n", "a", "b", " "), tokenizer="chars")
  np.testing.assert_array_equal(sampling.encode("ab\nz", chars), [3, 4, 2, 1])
  assert sampling.decode([3, 5, 4, 2], chars) == "a b\n"
  words = DatasetInfo(vocab_size=5, vocabulary=("<pad>", "<unk>", "<eos>", "the", "cat"), tokenizer="words")
  np.testing.assert_array_equal(sampling.encode("the  cat\nthe dog", words), [3, 4, 2, 3, 1])
  assert sampling.decode([4, 2, 3, 4], words) == " cat\nthe cat"
  assert sampling.decode(sampling.encode("é!", DatasetInfo(tokenizer="bytes")), DatasetInfo(tokenizer="bytes")) == "é!"


def test_generate_py_continues_a_trained_character_model(tmp_path):
  config = small_config("shakespeare_char_lm", tmp_path, **{"train.num_steps": 2})
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  flags = ["--prompt=FOOL. What", "--length=30", "--temperature=0.8", "--top_k=5"]
  runs = [run_script("generate.py", tmp_path / "run", {}, devices=1, extra=flags + [f"--seed={seed}"])
          for seed in (1, 1, 2)]
  for run in runs:
    assert run.returncode == 0, run.stderr
  texts = [run.stdout[run.stdout.index("FOOL. What"):] for run in runs]  # after the dataset's build note
  continuation = texts[0][len("FOOL. What"):-1]
  assert len(continuation) == 30 and "<unk>" not in continuation, texts[0]
  assert texts[1] == texts[0] and texts[2] != texts[0]
  refused = run_script("generate.py", tmp_path / "run", {}, devices=1, extra=["--prompt=x", "--length=-1"])
  assert refused.returncode != 0 and "length" in refused.stderr

