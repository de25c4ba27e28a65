"""The pure-jax ops against explicit float64 references, their limits, and their gradients.

Every op is checked against the numpy references of tests/reference.py to 1e-5 relative, for every content
x spatial kernel, 1-D and 2-D coordinates, padding masks and causal masking; gradients with respect to q,
k, v, h_y and h_p against central finite differences (1e-4). Limits (docs/method.md sections 1-3): h_p = inf
equals content-only attention exactly; `dot` content with h_y^2 = sqrt(d) and no spatial term equals
`jax.nn.dot_product_attention`; ALiBi equals causal Laplacian BSA with h_p = 1/m_h, and every slope is
Press et al.'s (head counts that are powers of two and others); GRC with t = 0 equals the standard
residual exactly; the attention output minimises the weighted least-squares objective; masked keys get
weight exactly 0 and place-less tokens no spatial term, with finite gradients."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilateral_jax import ops
from tests import reference as ref

B, N, H, D = 2, 6, 3, 4
KERNELS = list(itertools.product(ops.CONTENT_KERNELS, ops.SPATIAL_KERNELS))


def row_centred(logits):
  """Logits without their per-query constant (BSA's gaussian content drops -|q_i|^2 / (2 h_y^2))."""
  logits = np.asarray(logits, np.float64)
  return logits - logits.mean(-1, keepdims=True)


def assert_close(actual, expected, rtol=1e-5):
  """Elementwise closeness relative to the array's scale (float32 vs a float64 reference)."""
  expected = np.asarray(expected, np.float64)
  scale = max(np.max(np.abs(expected)), 1e-30)
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=rtol * scale)


def assert_leaves_close(actual, expected, rtol=1e-5, floor=1e-7):
  """Two pytrees (e.g. parameter gradients) close leaf by leaf, each relative to its own scale, with an
  absolute `floor` x the largest leaf's scale: the float32 round-off of a gradient that is zero in exact
  arithmetic (a key projection's bias under a softmax that ignores per-query shifts)."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  wants = [np.asarray(want, np.float64) for want in jax.tree.leaves(expected)]
  largest = max(np.max(np.abs(want)) for want in wants)
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(actual), wants):
    atol = max(rtol * np.max(np.abs(want)), floor * largest)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def qkv(seed=0, n=N, m=N):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kq, (B, n, H, D)), jax.random.normal(kk, (B, m, H, D)),
          jax.random.normal(kv, (B, m, H, D)))


def positions(spatial, dims, n, seed=1, placeless=1):
  """Coordinates [n, dims] (or per-head dot features [n, H, dims]) with `placeless` leading NaN rows."""
  rng = np.random.default_rng(seed)
  if spatial == "dot" and dims == "per_head":
    feats = rng.normal(size=(n, H, 3)).astype(np.float32)
  elif spatial == "dot":
    feats = rng.normal(size=(n, 2)).astype(np.float32)
  elif dims == 1:
    feats = np.arange(n, dtype=np.float32)[:, None]
  else:
    feats = np.asarray(ops.grid_coordinates(2, (n + 1) // 2))[:n]
  feats = np.array(feats)
  feats[:placeless] = np.nan
  return jnp.asarray(feats)


H_Y = jnp.asarray([0.8, 1.3, 2.1])
H_P = jnp.asarray([0.7, 2.0, 5.0])


SHIFT = {1: jnp.asarray([[0.6], [-1.4], [2.5]]), 2: jnp.asarray([[0.6, -0.3], [-1.4, 0.0], [2.5, 1.1]])}


def layouts(spatial):
  return {"dot": ["per_head", 2], "asymmetric": [1]}.get(spatial, [1, 2])


def spatial_params(spatial, layout):
  """The bandwidths (and shift) a kernel takes, for H heads: {h_p, shift}."""
  h_p = jnp.stack([H_P, H_P[::-1] * 1.7], -1) if spatial == "asymmetric" else H_P
  return {"h_p": h_p, "shift": SHIFT[layout] if spatial == "shifted" else None}


def reference_logits(q, k, pos, content, spatial, layout, q_pos=None):
  params = spatial_params(spatial, layout)
  return ref.bilateral_logits(q, k, pos if q_pos is None else q_pos, pos, H_Y, params["h_p"], content, spatial,
                              params["shift"])


@pytest.mark.parametrize("content,spatial", KERNELS)
def test_bilateral_logits_match_reference(content, spatial):
  q, k, _ = qkv()
  for layout in layouts(spatial):
    pos = positions(spatial, layout, N)
    got = ops.bilateral_logits(q, k, pos, pos, h_y=H_Y, content=content, spatial=spatial,
                               **spatial_params(spatial, layout))
    want = reference_logits(q, k, pos, content, spatial, layout)
    assert got.shape == (B, H, N, N) and got.dtype == jnp.float32
    assert_close(row_centred(got), row_centred(want))


@pytest.mark.parametrize("content,spatial", KERNELS)
@pytest.mark.parametrize("causal", [False, True])
def test_bilateral_attention_matches_reference(content, spatial, causal):
  q, k, v = qkv()
  padding = np.ones((B, N), bool)
  padding[1, -2:] = False
  for layout in layouts(spatial):
    pos = positions(spatial, layout, N)
    got = ops.explicit_bilateral_attention(q, k, v, pos, pos, h_y=H_Y, content=content, spatial=spatial,
                                  mask=padding[:, None, None, :], is_causal=causal, **spatial_params(spatial, layout))
    logits = reference_logits(q, k, pos, content, spatial, layout)
    want = ref.attention(logits, v, ref.keep_mask(B, H, N, N, padding, causal))
    assert_close(got, want)


def test_cross_attention_lengths_and_single_shared_coordinates():
  q, k, v = qkv(n=4, m=7)
  q_pos, k_pos = positions("gaussian", 2, 4, placeless=0), positions("gaussian", 2, 7, placeless=2)
  got = ops.explicit_bilateral_attention(q, k, v, q_pos, k_pos, h_y=H_Y, h_p=H_P)
  want = ref.attention(ref.bilateral_logits(q, k, q_pos, k_pos, H_Y, H_P, "gaussian", "gaussian"), v,
                       ref.keep_mask(B, H, 4, 7))
  assert got.shape == (B, 4, H, D)
  assert_close(got, want)


def numeric_gradient(f, x, eps=1e-6):
  """Central finite differences of a float64 scalar function, elementwise."""
  x = np.array(x, np.float64)
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += eps
    down[idx] -= eps
    grad[idx] = (f(up) - f(down)) / (2 * eps)
  return grad


@pytest.mark.parametrize("content,spatial", KERNELS)
@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_finite_differences(content, spatial, causal):
  n = 5
  q, k, v = qkv(seed=3, n=n, m=n)
  layout = layouts(spatial)[-1]
  pos = positions(spatial, layout, n)
  padding = np.ones((B, n), bool)
  padding[0, -1] = False
  keep = ref.keep_mask(B, H, n, n, padding, causal=causal)
  cotangent = np.random.default_rng(0).normal(size=(B, n, H, D))
  args = dict(q=q, k=k, v=v, h_y=H_Y) | {name: x for name, x in spatial_params(spatial, layout).items() if x is not None}

  def loss(q, k, v, h_y, h_p, shift=None):
    out = ops.explicit_bilateral_attention(q, k, v, pos, pos, h_y=h_y, h_p=h_p, shift=shift, content=content,
                                  spatial=spatial, mask=padding[:, None, None, :], is_causal=causal)
    return jnp.sum(out * cotangent)

  grads = jax.grad(loss, argnums=range(len(args)))(*args.values())
  for (name, value), grad in zip(args.items(), grads):
    def ref_loss(x, name=name):
      a = {key: np.float64(val) for key, val in args.items()} | {name: x}
      logits = ref.bilateral_logits(a["q"], a["k"], pos, pos, a["h_y"], a["h_p"], content, spatial, a.get("shift"))
      return np.sum(ref.attention(logits, a["v"], keep) * cotangent)

    assert_close(grad, numeric_gradient(ref_loss, value), rtol=1e-4)


def test_infinite_spatial_bandwidth_is_non_local_means():
  q, k, v = qkv()
  pos = positions("gaussian", 2, N)
  content_only = ops.explicit_bilateral_attention(q, k, v, None, None, h_y=H_Y, h_p=None)
  for spatial in ("gaussian", "laplacian"):
    exact = ops.explicit_bilateral_attention(q, k, v, pos, pos, h_y=H_Y, h_p=jnp.full((H,), jnp.inf), spatial=spatial)
    np.testing.assert_array_equal(exact, content_only)
    for h_p, tol in ((1e3, 1e-2), (1e6, 1e-5)):
      wide = ops.explicit_bilateral_attention(q, k, v, pos, pos, h_y=H_Y, h_p=jnp.full((H,), h_p), spatial=spatial)
      assert_close(wide, content_only, rtol=tol)


@pytest.mark.parametrize("causal", [False, True])
def test_dot_content_with_standard_bandwidth_is_standard_attention(causal):
  q, k, v = qkv()
  padding = jnp.asarray(np.arange(N)[None, :] < np.array([[N], [N - 2]]))
  mask = padding[:, None, None, :]
  h_y = jnp.full((H,), D**0.25)
  bsa = ops.explicit_bilateral_attention(q, k, v, None, None, h_y=h_y, h_p=None, content="dot", mask=mask,
                                is_causal=causal)
  expected = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
  assert_close(bsa, expected)
  assert_close(ops.standard_attention(q, k, v, mask=mask, is_causal=causal), expected)


def test_standard_attention_bias_matches_jax_nn():
  q, k, v = qkv()
  bias = jax.random.normal(jax.random.key(9), (1, H, N, N))
  assert_close(ops.standard_attention(q, k, v, bias=bias), jax.nn.dot_product_attention(q, k, v, bias=bias))


def press_alibi_slopes(heads):
  """ALiBi's slopes as Press et al. (2022) define them (their reference `get_slopes`): for a power of two n,
  start**(i + 1) with start = 2**(-8 / n); otherwise the closest smaller power of two's slopes, then every
  other slope of twice that count."""
  if heads & (heads - 1) == 0:
    start = 2.0 ** (-8.0 / heads)
    return [start ** (i + 1) for i in range(heads)]
  closest = 2 ** int(np.floor(np.log2(heads)))
  return press_alibi_slopes(closest) + press_alibi_slopes(2 * closest)[0::2][:heads - closest]


def test_alibi_slopes_are_press_et_als_for_every_head_count():
  np.testing.assert_allclose(press_alibi_slopes(6), [2.0 ** -e for e in (2, 4, 6, 8, 1, 3)])  # the reference
  for heads in (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32):
    np.testing.assert_allclose(ops.alibi_slopes(heads), press_alibi_slopes(heads), rtol=1e-6, err_msg=str(heads))


def test_alibi_is_causal_laplacian_bsa_with_fixed_bandwidths():
  q, k, v = qkv()
  coords = ops.sequence_coordinates(N)
  slopes = ops.alibi_slopes(H)
  i, j = np.arange(N)[:, None], np.arange(N)[None, :]
  explicit_bias = -np.asarray(slopes)[:, None, None] * np.abs(i - j)[None]
  assert_close(ops.alibi_bias(coords, coords, slopes)[0], explicit_bias)
  alibi = ops.standard_attention(q, k, v, bias=ops.alibi_bias(coords, coords, slopes), is_causal=True)
  bsa = ops.explicit_bilateral_attention(q, k, v, coords, coords, h_y=jnp.full((H,), D**0.25), h_p=1.0 / slopes,
                                content="dot", spatial="laplacian", is_causal=True)
  assert_close(bsa, alibi)
  want = ref.attention(ref.bilateral_logits(q, k, None, None, np.full(H, D**0.25), None, "dot", None)
                       + explicit_bias[None], v, ref.keep_mask(B, H, N, N, causal=True))
  assert_close(alibi, want)


def test_gaussian_content_is_dot_content_minus_key_norm():
  """docs/method.md: gaussian = dot - ||k_j||^2 / (2 h_y^2); the ||q_i||^2 part cancels in the softmax."""
  q, k, v = qkv()
  key_norm = -jnp.einsum("bmhd,bmhd->bhm", k, k)[:, :, None, :] / (2 * H_Y[None, :, None, None] ** 2)
  dot_weights = ops.attention_weights(ops.content_logits(q, k, h_y=H_Y, content="dot") + key_norm)
  gaussian_weights = ops.attention_weights(ops.content_logits(q, k, h_y=H_Y, content="gaussian"))
  assert_close(gaussian_weights, dot_weights)


def test_attention_output_is_weighted_least_squares_solution():
  """Theorem 3.1: u_i = sum_j w_ij v_j / sum_j w_ij minimises sum_j w_ij ||v_j - u||^2."""
  q, k, v = qkv()
  weights = ops.attention_weights(ops.bilateral_logits(q, k, None, None, h_y=H_Y, h_p=None))
  u = ops.filter_values(weights, v)

  def objective(u):  # [b, n, h, d] -> [b, h, n]
    residual = v[:, None, :, :, :] - u[:, :, None, :, :]  # [b, n, m, h, d]
    return jnp.einsum("bhnm,bnmh->bhn", weights, jnp.sum(residual**2, axis=-1))

  grad = jax.grad(lambda u: jnp.sum(objective(u)))(u)
  assert float(jnp.max(jnp.abs(grad))) < 1e-5
  for seed in range(3):
    delta = 1e-2 * jax.random.normal(jax.random.key(seed), u.shape)
    assert bool(jnp.all(objective(u + delta) > objective(u)))


def test_masked_keys_get_exactly_zero_weight_and_gradient():
  q, k, v = qkv()
  padding = jnp.asarray(np.arange(N) < N - 2)[None, None, None, :]
  weights = ops.attention_weights(ops.bilateral_logits(q, k, None, None, h_y=H_Y, h_p=None), mask=padding)
  assert float(jnp.max(weights[..., -2:])) == 0.0
  dk = jax.grad(lambda k: jnp.sum(ops.explicit_bilateral_attention(q, k, v, None, None, h_y=H_Y, h_p=None,
                                                          mask=padding) ** 2))(k)
  assert float(jnp.max(jnp.abs(dk[:, -2:]))) == 0.0


def test_placeless_tokens_get_no_spatial_term_and_finite_gradients():
  coords = ops.prepend_placeless(ops.grid_coordinates(2, 2), 1)
  for spatial in ("gaussian", "laplacian", "dot"):
    s = ops.spatial_logits(coords, coords, h_p=H_P, spatial=spatial)
    assert float(jnp.max(jnp.abs(s[..., 0, :]))) == 0.0 and float(jnp.max(jnp.abs(s[..., :, 0]))) == 0.0
    for wrt in (0, 1):
      g = jax.grad(lambda c, h: jnp.sum(ops.spatial_logits(c, c, h_p=h, spatial=spatial)), argnums=wrt)(
          coords, H_P)
      assert bool(jnp.all(jnp.isfinite(g[1:] if wrt == 0 else g)))


def test_unknown_kernel_names_the_known_ones():
  q, k, _ = qkv()
  with pytest.raises(ValueError, match="gaussian, dot"):
    ops.content_logits(q, k, h_y=H_Y, content="cosine")
  with pytest.raises(ValueError, match="gaussian, laplacian, shifted, asymmetric, dot"):
    ops.spatial_logits(positions("gaussian", 1, N), positions("gaussian", 1, N), h_p=H_P, spatial="box")
  with pytest.raises(ValueError, match="both"):
    ops.bilateral_logits(q, k, positions("gaussian", 1, N), None, h_y=H_Y, h_p=H_P)


def test_generalized_residual_formula_and_limits():
  rng = np.random.default_rng(0)
  y, fy, y0 = (rng.normal(size=(2, 5, 8)).astype(np.float32) for _ in range(3))
  t = rng.uniform(size=(8,)).astype(np.float32)
  assert_close(ops.generalized_residual(y, fy, y0, t),
               (1 - np.float64(t)) * (np.float64(y) + fy) + np.float64(t) * y0)
  np.testing.assert_array_equal(ops.generalized_residual(y, fy, y0, 0.0), y + fy)
  np.testing.assert_array_equal(ops.generalized_residual(y, fy, y0, 1.0), y0)
  v, v0 = (rng.normal(size=(2, 5, 2, 4)).astype(np.float32) for _ in range(2))
  np.testing.assert_array_equal(ops.boosted_values(v, v0, 0.0), v)
  assert_close(ops.boosted_values(v, v0, 0.3), 0.7 * np.float64(v) + 0.3 * (np.float64(v0) - v))


@pytest.mark.parametrize("base", [10_000.0, 6.0])
def test_rope_matches_complex_rotation_and_is_relative(base):
  x = jax.random.normal(jax.random.key(0), (1, N, H, D))
  coords = ops.sequence_coordinates(N)
  got = ops.apply_rope(x, coords, base)
  xn = np.float64(x)
  half = D // 2
  z = xn[..., :half] + 1j * xn[..., half:]
  theta = base ** (-np.arange(0, D, 2) / D)
  z = z * np.exp(1j * np.arange(N)[None, :, None, None] * theta)
  assert_close(got, np.concatenate([z.real, z.imag], axis=-1))
  # the logit depends on positions only through their difference
  q, k = qkv()[:2]
  shifted = ops.sequence_coordinates(N) + 7.0
  assert_close(ops.standard_logits(ops.apply_rope(q, shifted), ops.apply_rope(k, shifted)),
               ops.standard_logits(ops.apply_rope(q, coords), ops.apply_rope(k, coords)), rtol=1e-4)
  placeless = jnp.full((N, 1), jnp.nan)
  np.testing.assert_array_equal(ops.apply_rope(x, placeless), x)
  with pytest.raises(ValueError, match="divisible"):
    ops.apply_rope(jnp.ones((1, 4, 1, 6)), ops.grid_coordinates(2, 2))


def test_position_tables_and_coordinates():
  table = np.asarray(ops.sinusoidal_table(7, 6))
  pos, i = np.arange(7)[:, None], np.arange(3)[None, :]
  np.testing.assert_allclose(table[:, 0::2], np.sin(pos / 10_000 ** (2 * i / 6)), atol=1e-6)
  np.testing.assert_allclose(table[:, 1::2], np.cos(pos / 10_000 ** (2 * i / 6)), atol=1e-6)
  np.testing.assert_array_equal(ops.grid_coordinates(2, 3), [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
  bw = np.asarray(ops.geometric_bandwidths(4, 1.0, 64.0))
  np.testing.assert_allclose(bw, [1.0, 4.0, 16.0, 64.0], rtol=1e-6)
  assert ops.causal_mask(2, 3).tolist() == [[True, False, False], [True, True, False]]
