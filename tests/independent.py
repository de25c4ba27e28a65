"""Float64 numpy references written from the definitions, sharing no code with the library: a sequence
classifier's Transformer stack read from its params tree, and the letter runs that character
contamination counts as words."""
import numpy as np

from tests import reference


def layer_norm(x, params, epsilon=1e-6):
  """flax.linen.LayerNorm over the last axis (biased variance, epsilon inside the root)."""
  centred = x - x.mean(-1, keepdims=True)
  return centred / np.sqrt(np.mean(centred**2, -1, keepdims=True) + epsilon) * params["scale"] + params["bias"]


def gelu(x):
  """The tanh approximation (flax.linen.gelu's default)."""
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def dense(x, params, in_axes=1):
  """A Dense/DenseGeneral layer: x [..., in] x kernel [in..., out...] + bias."""
  kernel = params["kernel"]
  x = x.reshape(x.shape[:x.ndim - in_axes] + (-1,)) if in_axes > 1 else x
  out = np.tensordot(x, kernel.reshape((-1,) + kernel.shape[in_axes:]), axes=1)
  return out + params["bias"] if "bias" in params else out


def sinusoids(length, dim):
  """Vaswani et al.'s table [length, dim]: sin(pos / 10000^(2i / dim)) at channel 2i, cos at 2i + 1."""
  table = np.zeros((length, dim))
  for pos in range(length):
    for i in range(0, dim, 2):
      table[pos, i] = np.sin(pos / 10000 ** (i / dim))
      if i + 1 < dim:
        table[pos, i + 1] = np.cos(pos / 10000 ** (i / dim))
  return table


def sequence_stack(cfg, params, tokens, *, pooling="mean", y0_noise=None):
  """A `SequenceClassifier`'s Transformer (`cfg`: its TransformerConfig, pre-norm; standard attention with an
  additive learned or sinusoidal table, or bilateral attention; a standard or convex GRC residual) on tokens
  [b, n] (0 = padding; `cls` pooling prepends the CLS token, which has no place) -> (Y_0 .. Y_L [b, n', d],
  each layer's attention weights [b, heads, n', n'], the real tokens [b, n']: no padding, no CLS, each
  layer's attention sublayer output [b, n', d])."""
  params = _float64(params)
  tokens = np.asarray(tokens)
  heads, head_dim = cfg.num_heads, cfg.model_dim // cfg.num_heads
  assert cfg.norm == "pre", cfg.norm
  vaswani = cfg.attention == "standard" and cfg.position_table == "sinusoidal"  # embeddings x sqrt(d) beside sinusoids
  x = params["embed"]["embedding"][tokens] * (np.sqrt(cfg.model_dim) if vaswani else 1.0)
  attend = tokens != 0
  coords = np.arange(tokens.shape[1], dtype=np.float64)[:, None]
  real = attend
  if pooling == "cls":
    x = np.concatenate([np.broadcast_to(params["cls_token"], (len(x), 1, x.shape[-1])), x], axis=1)
    attend = np.concatenate([np.ones((len(x), 1), bool), attend], axis=1)
    real = np.concatenate([np.zeros((len(x), 1), bool), real], axis=1)
    coords = np.concatenate([[[np.nan]], coords])
  b, n = attend.shape
  keep = reference.keep_mask(b, heads, n, n, padding=attend)
  y0 = x
  if cfg.attention == "standard" and cfg.position_table == "learned":
    y0 = y0 + params["transformer"]["position_table"][:n]
  elif cfg.attention == "standard" and cfg.position_table == "sinusoidal":
    y0 = y0 + sinusoids(n, cfg.model_dim)
  if y0_noise is not None:
    y0 = y0 + np.asarray(y0_noise, np.float64)
  hidden, weights, outputs = [y0], [], []
  y = y0
  for layer in range(cfg.num_layers):
    block = params["transformer"][f"block_{layer}"]
    attention = block["attention"]
    h = layer_norm(y, block["norm_attention"])
    q, k, v = (dense(h, attention[name]) for name in ("query", "key", "value"))  # [b, n, heads, head_dim]
    if cfg.attention == "standard":
      logits = np.einsum("bihd,bjhd->bhij", q, k) / np.sqrt(head_dim)
    elif cfg.attention == "bilateral":
      bsa = attention["bilateral"]
      logits = reference.bilateral_logits(q, k, coords, coords, np.exp(bsa["log_h_y"]), np.exp(bsa["log_h_p"]),
                                          cfg.content, cfg.spatial)
    else:
      raise ValueError(cfg.attention)
    w = reference.masked_softmax(logits, keep)
    weights.append(w)
    fy = dense(np.einsum("bhij,bjhd->bihd", w, v), attention["out"], in_axes=2)
    outputs.append(fy)
    y = _residual(cfg, block, "attention", y, fy, y0)
    fy = dense(gelu(dense(layer_norm(y, block["norm_mlp"]), block["mlp"]["fc1"])), block["mlp"]["fc2"])
    y = _residual(cfg, block, "mlp", y, fy, y0)
    hidden.append(y)
  return hidden, weights, real, outputs


def _residual(cfg, block, sublayer, y, fy, y0):
  if cfg.residual != "grc" or sublayer not in cfg.grc_sublayers:
    return y + fy
  assert cfg.grc_form == "convex", cfg.grc_form
  t = 1.0 / (1.0 + np.exp(-block[f"grc_theta_{sublayer}"]))
  return (1.0 - t) * (y + fy) + t * y0


def _float64(tree):
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {key: _float64(value) for key, value in tree.items()}
  return np.asarray(tree, np.float64)


def letter_runs(text):
  """[(start, end, word)]: the maximal runs of ASCII letters of `text`."""
  runs, start = [], None
  for i, char in enumerate(text + "\0"):
    letter = char.isascii() and char.isalpha()
    if letter and start is None:
      start = i
    elif not letter and start is not None:
      runs.append((start, i, text[start:i]))
      start = None
  return runs
