"""Sampling from a causal LM (`models.CausalLM`) with a key-value cache (`generate.py`).

The prompt fills each layer's cache in one call, then every new token is one call on a single position:
its query attends to the cached keys, which keep their positions (BSA's spatial term, ALiBi's distance;
RoPE keys are cached rotated). The cache has the model's max_length slots: when it is full, decoding
restarts from the last max_length // 2 tokens (positions from 0 again, as in training's windows).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from bilateral_jax.data import builders
from bilateral_jax.data.core import DatasetInfo
from bilateral_jax.models.backbones import AdaptiveOutput, CausalLM

UNKNOWN = 1  # id 1 is `<unk>` in every word and character vocabulary (`data.builders.vocabulary`)


def encode(text: str, info: DatasetInfo) -> np.ndarray:
  """A prompt -> ids [n] in the corpus's vocabulary: characters, bytes, or words (lines joined by
  `<eos>`, as the corpus reads; no `<eos>` after the last line). Unknown tokens -> `<unk>`."""
  if info.tokenizer == "bytes":
    return builders.byte_ids(text)
  if info.tokenizer not in ("chars", "words") or info.vocabulary is None:
    raise ValueError(f"cannot encode text for a corpus with tokenizer {info.tokenizer!r} and "
                     f"{'no' if info.vocabulary is None else 'a'} vocabulary")
  if info.tokenizer == "chars":
    pieces = list(text)
  else:
    pieces = [word for i, line in enumerate(text.split("\n")) for word in (["<eos>"] if i else []) + line.split()]
  index = {token: i for i, token in enumerate(info.vocabulary)}
  return np.asarray([index.get(piece, UNKNOWN) for piece in pieces], np.int32)


def decode(ids, info: DatasetInfo) -> str:
  """ids -> the text that continues a prompt (`encode`'s inverse): words each after a space but at a line
  start, `<eos>` as a line break."""
  ids = [int(i) for i in ids]
  if info.tokenizer == "bytes":
    return bytes(i - 1 for i in ids if i > 0).decode("utf-8", errors="replace")
  if info.tokenizer == "chars":
    return "".join(info.vocabulary[i] for i in ids)
  pieces = []
  for word in (info.vocabulary[i] for i in ids):
    pieces.append("\n" if word == "<eos>" else ("" if pieces and pieces[-1] == "\n" else " ") + word)
  return "".join(pieces)


def never_drawn(info: DatasetInfo) -> tuple[int, ...]:
  """The ids that are not text: padding, and for characters `<unk>` (a word corpus has `<unk>` words)."""
  return (0, UNKNOWN) if info.tokenizer == "chars" else (0,)


def next_token(logits, rng, *, temperature: float, top_k: int, banned: tuple[int, ...] = (0,)) -> jax.Array:
  """logits [b, vocab] -> ids [b]: the most probable with temperature 0, else drawn from
  softmax(logits / temperature) over the top_k most probable (top_k 0: all); `banned` ids never."""
  logits = logits.astype(jnp.float32).at[:, list(banned)].set(-jnp.inf)
  if temperature == 0:
    return jnp.argmax(logits, axis=-1)
  if 0 < top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits / temperature, axis=-1)


def last_log_probs(model: CausalLM, params, cache, tokens, index):
  """Runs tokens [b, n] at positions index.. against the cache (None: an empty one) -> (log p of the
  next token after the last [b, vocab], the updated cache)."""
  variables = {"params": params} | ({} if cache is None else {"cache": cache})
  output, state = model.apply(variables, tokens, cache_index=index, mutable=["cache"])
  last = (dataclasses.replace(output, hidden=output.hidden[:, -1:]).log_probs() if isinstance(output, AdaptiveOutput)
          else jax.nn.log_softmax(output[:, -1:].astype(jnp.float32)))
  return last[:, 0], state["cache"]


def generate(model: CausalLM, params, prompt, length: int, *, temperature: float = 1.0, top_k: int = 0,
             seed: int = 0, banned: tuple[int, ...] = (0,)) -> np.ndarray:
  """prompt ids [n] (n >= 1) -> `length` new ids, drawn by `next_token` (the same seed, the same ids)."""
  if not isinstance(model, CausalLM):
    raise ValueError(f"sampling needs a causal language model, not {type(model).__name__}")
  if len(prompt) < 1 or length < 0 or temperature < 0 or top_k < 0:
    raise ValueError(f"need a non-empty prompt (got {len(prompt)} tokens), length >= 0 ({length}), "
                     f"temperature >= 0 ({temperature}) and top_k >= 0 ({top_k})")
  model = model.clone(config=dataclasses.replace(model.config, remat="none"))
  window = model.config.max_length
  run = jax.jit(functools.partial(last_log_probs, model))
  draw = jax.jit(functools.partial(next_token, temperature=temperature, top_k=top_k, banned=tuple(banned)))
  rng = jax.random.key(seed)
  tokens = [int(i) for i in prompt]
  pending, cache, cached = tokens[-window:], None, 0  # pending: the tokens not yet in the cache
  for _ in range(length):
    if cached + len(pending) > window:  # the cache is full: restart from the latest half window
      pending, cache, cached = tokens[-(window // 2):], None, 0
    log_probs, cache = run(params, cache, jnp.asarray([pending], jnp.int32), jnp.int32(cached))
    cached += len(pending)
    rng, key = jax.random.split(rng)
    pending = [int(draw(log_probs, key)[0])]
    tokens.append(pending[0])
  return np.asarray(tokens[len(prompt):], np.int32)
