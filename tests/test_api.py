"""`ops.bilateral_attention`, the public entry point: every call gives the explicit op's numbers or a clear
refusal, never a silently wrong result (ambiguous masks, traced coordinates, scalar bandwidths, per-example
coordinates, unbatched inputs, every path); `models.BilateralAttention`, the Linen layer, in one's own model;
and the functional-API snippet of docs/api.md runs as shown."""
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilateral_jax import models, ops
from bilateral_jax.ops import target
from tests.test_ops import B, D, H, H_P, H_Y, assert_close, positions, qkv

N = 8


def test_a_mask_must_name_its_axes():
  """A [batch, k_len] key mask with batch == k_len would broadcast as a query x key mask: refused."""
  q, k, v = (jax.random.normal(key, (N, N, H, D)) for key in jax.random.split(jax.random.key(0), 3))
  coords = ops.sequence_coordinates(N)
  keys = jnp.asarray(np.arange(N)[None, :] < np.arange(1, N + 1)[:, None])  # [batch, k_len]
  with pytest.raises(ValueError, match=r"mask of shape \(8, 8\) does not fit attention of shape \(8, 3, 8, 8\).*"
                                       r"mask\[:, None, None, :\]"):
    ops.bilateral_attention(q, k, v, coords, coords, h_y=H_Y, h_p=H_P, mask=keys)
  with pytest.raises(ValueError, match="does not fit"):
    ops.bilateral_attention(q, k, v, coords, coords, h_y=H_Y, h_p=H_P, mask=keys[:, None, :, None][:, :, :3])
  got = ops.bilateral_attention(q, k, v, coords, coords, h_y=H_Y, h_p=H_P, mask=keys[:, None, None, :])
  assert_close(got, ops.explicit_bilateral_attention(q, k, v, coords, coords, h_y=H_Y, h_p=H_P,
                                                      mask=keys[:, None, None, :]))


def test_traced_coordinates_are_never_folded_on_trust():
  """The folded causal Laplacian needs increasing positions: with r_i = -i under jit it is refused when
  asked for, and `auto` (on a GPU target, where it would fold) takes the explicit logits."""
  q, k, v = qkv(seed=1, n=N, m=N)
  kwargs = dict(h_y=H_Y, h_p=H_P, content="dot", spatial="laplacian", is_causal=True)
  decreasing = -ops.sequence_coordinates(N)
  want = ops.explicit_bilateral_attention(q, k, v, decreasing, decreasing, **kwargs)
  with target.compiling_for("gpu"):
    got = jax.jit(lambda c: ops.bilateral_attention(q, k, v, c, c, **kwargs))(decreasing)
    with pytest.raises(ValueError, match="'folded' does not apply"):
      jax.jit(lambda c: ops.bilateral_attention(q, k, v, c, c, path="folded", **kwargs))(decreasing)
    assert_close(got, want)
    increasing = ops.sequence_coordinates(N)  # a numpy constant: checked, and folded
    folded = jax.jit(lambda q: ops.bilateral_attention(q, k, v, increasing, increasing, path="folded", **kwargs))(q)
  assert_close(folded, ops.explicit_bilateral_attention(q, k, v, increasing, increasing, **kwargs))


def test_scalar_bandwidths_are_every_heads():
  q, k, v = qkv(seed=2, n=N, m=N)
  for spatial, dims, h_p, per_head in (("gaussian", 2, 1.7, jnp.full((H,), 1.7)),
                                       ("asymmetric", 1, 1.7, jnp.full((H, 2), 1.7)),
                                       ("asymmetric", 1, jnp.asarray([0.5, 3.0]), jnp.tile(jnp.asarray([0.5, 3.0]), (H, 1)))):
    pos = positions(spatial, dims, N)
    got = ops.bilateral_attention(q, k, v, pos, pos, h_y=2.0, h_p=h_p, spatial=spatial)
    assert_close(got, ops.explicit_bilateral_attention(q, k, v, pos, pos, h_y=jnp.full((H,), 2.0), h_p=per_head,
                                                       spatial=spatial))


@pytest.mark.parametrize("path", ["xla", "pallas"])
def test_per_example_coordinates(path):
  """Coordinates [batch, len, c]: each example attends with its own (here, images of different sizes
  padded to one grid, and a sequence with an offset)."""
  q, k, v = qkv(seed=3, n=N, m=N)
  per_example = jnp.stack([positions("gaussian", 2, N), positions("gaussian", 2, N, placeless=3) + 5.0])
  mask = jnp.ones((B, 1, 1, N), bool).at[1, ..., -2:].set(False)
  kwargs = dict(h_y=H_Y, h_p=H_P, spatial="gaussian")
  got = ops.bilateral_attention(q, k, v, per_example, per_example, mask=mask, path=path, **kwargs)
  for b in range(B):
    want = ops.explicit_bilateral_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], per_example[b], per_example[b],
                                            mask=mask[b:b + 1], **kwargs)
    assert_close(got[b:b + 1], want)
  with pytest.raises(ValueError, match="must lead with the batch"):
    ops.bilateral_attention(q, k, v, per_example[:1], per_example[:1], **kwargs)


def test_unbatched_inputs_and_vmap_over_them():
  q, k, v = qkv(seed=4, n=N, m=N)
  pos = positions("shifted", 2, N)
  kwargs = dict(h_y=H_Y, h_p=H_P, spatial="shifted", shift=jnp.zeros((H, 2)))
  batched = ops.bilateral_attention(q, k, v, pos, pos, **kwargs)
  unbatched = jax.vmap(lambda q, k, v: ops.bilateral_attention(q, k, v, pos, pos, **kwargs))(q, k, v)
  assert unbatched.shape == (B, N, H, D)
  assert_close(unbatched, batched)
  assert_close(ops.bilateral_attention(q[0], k[0], v[0], pos, pos, mask=jnp.ones((1, 1, N), bool), **kwargs),
               batched[0])


@pytest.mark.parametrize("spatial,dims,causal", [("laplacian", 1, True), ("dot", 2, False)])
def test_every_path_gives_the_explicit_numbers(spatial, dims, causal):
  q, k, v = qkv(seed=5, n=N, m=N)
  pos = ops.sequence_coordinates(N) if spatial == "laplacian" else positions(spatial, dims, N)
  kwargs = dict(h_y=H_Y, h_p=H_P, content="dot", spatial=spatial, is_causal=causal)
  want = ops.explicit_bilateral_attention(q, k, v, pos, pos, **kwargs)
  for path in ("auto", "xla", "folded", "pallas"):
    assert_close(jax.jit(lambda q, p=path: ops.bilateral_attention(q, k, v, pos, pos, path=p, **kwargs))(q), want)
  with pytest.raises(ValueError, match="attention_path='cudnn' is not one of"):
    ops.bilateral_attention(q, k, v, pos, pos, path="cudnn", **kwargs)


class OwnModel(nn.Module):
  """A researcher's own attention layer around `models.BilateralAttention`: their projections, BSA's filter."""
  attention_path: str = "auto"
  spatial: str = "shifted"

  @nn.compact
  def __call__(self, x, coords):
    q, k, v = (nn.DenseGeneral((H, D), name=name)(x) for name in "qkv")
    return models.BilateralAttention(H, D, spatial=self.spatial, bandwidth_range=(1.0, 4.0),
                                     attention_path=self.attention_path, name="bsa")(q, k, v, coords)


def test_the_bsa_module_in_ones_own_model_is_the_explicit_op():
  x, coords = jax.random.normal(jax.random.key(6), (B, N, 10)), positions("shifted", 2, N)
  model = OwnModel()
  params = model.init(jax.random.key(0), x, coords)["params"]
  bsa = params["bsa"]
  np.testing.assert_allclose(jnp.exp(bsa["log_h_y"]) ** 2, np.full(H, np.sqrt(D)), rtol=1e-6)
  np.testing.assert_allclose(jnp.exp(bsa["log_h_p"]), [1.0, 2.0, 4.0], rtol=1e-6)
  q, k, v = (jnp.einsum("bnc,chd->bnhd", x, params[name]["kernel"]) + params[name]["bias"] for name in "qkv")
  h_p = jnp.exp(bsa["log_h_p"])
  want = ops.explicit_bilateral_attention(q, k, v, coords, coords, h_y=jnp.exp(bsa["log_h_y"]), h_p=h_p,
                                          spatial="shifted", shift=bsa["shift_per_h_p"] * h_p[:, None])
  assert_close(model.apply({"params": params}, x, coords), want)
  assert_close(OwnModel(attention_path="pallas").apply({"params": params}, x, coords), want)


def test_the_bsa_module_checks_its_input_and_never_switches_path():
  x, coords = jax.random.normal(jax.random.key(7), (B, N, 10)), ops.sequence_coordinates(N)
  params = OwnModel(spatial="laplacian").init(jax.random.key(0), x, coords)
  q = jnp.ones((B, N, H, 2 * D))
  with pytest.raises(ValueError, match=r"BilateralAttention\(num_heads=3, head_dim=4\) got q, k, v of shapes "
                                       r"\(2, 8, 3, 8\)"):
    models.BilateralAttention(H, D).init(jax.random.key(0), q, q, q, coords)
  with pytest.raises(ValueError, match="needs the tokens' positions"):
    models.BilateralAttention(H, D).init(jax.random.key(0), q[..., :D], q[..., :D], q[..., :D])
  with pytest.raises(ValueError, match="'folded' does not apply to spatial='laplacian'"):  # not causal: not foldable
    OwnModel(attention_path="folded", spatial="laplacian").apply(params, x, coords)
  with pytest.raises(ValueError, match="attention weights were requested .* 'pallas' path does not form them"):
    OwnModel(attention_path="pallas", spatial="laplacian").apply(params, x, coords, mutable=["intermediates"])
  out, state = OwnModel(attention_path="xla", spatial="laplacian").apply(params, x, coords, mutable=["intermediates"])
  weights = state["intermediates"]["bsa"]["attention_weights"][0]
  assert weights.shape == (B, H, N, N)
  np.testing.assert_allclose(jnp.sum(weights, -1), 1.0, rtol=1e-6)
  stack = models.TransformerConfig(num_layers=1, num_heads=2, model_dim=16, mlp_dim=32)
  with pytest.raises(ValueError, match="MultiHeadAttention of model_dim 16 got an input of width 10"):
    models.MultiHeadAttention(stack).init(jax.random.key(0), x, coords=coords)


def test_the_docs_functional_api_snippet_runs():
  """The python block under docs/api.md's "## Functional API" heading, executed as it stands."""
  api = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
  section = api[api.index("\n## Functional API\n"):]
  section = section[:section.index("\n## ", 1)]
  snippet = section[section.index("```python\n") + len("```python\n"):section.index("\n```", section.index("```python"))]
  scope = {}
  exec(compile(snippet, "docs/api.md (functional API)", "exec"), scope)  # noqa: S102 - the docs' own code
  assert scope["out"].shape == (2, 16, 4, 8) and scope["one"].shape == (16, 4, 8)
  assert scope["sweep"].shape == (3, 2, 16, 4, 8) and scope["logits"].shape == (2, 4, 16, 16)
  assert bool(jnp.all(jnp.isfinite(scope["y"])))
  assert set(scope["variables"]["params"]) == {"log_h_y", "log_h_p"}
