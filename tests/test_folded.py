"""The folded BSA path equals the explicit ops, forward and backward, wherever it applies.

Forward to 1e-5 and every gradient (h_y and h_p included) to 1e-4, with padding, causal masks, place-less
rows, 1-D and 2-D coordinates and rows with no key at all, alone and inside whole models (each parameter's
gradient to 1e-4 of its own scale, on every path); cases it cannot fold are refused; on GPU it asks for
cuDNN only where cuDNN applies."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilateral_jax import ops
from bilateral_jax.ops import target
from bilateral_jax.ops.folded import cudnn_applies, foldable, folded_bilateral_attention
from tests.test_ops import B, D, H, H_P, H_Y, N, assert_close, assert_leaves_close, positions, qkv, spatial_params

CASES = [(content, spatial, layout, causal)
         for content in ("dot", "gaussian")
         for spatial, layout, causal in (("none", None, False), ("none", None, True), ("dot", 2, False),
                                         ("dot", "per_head", True), ("laplacian", 1, True), ("asymmetric", 1, True))]


def case_inputs(spatial, layout):
  if spatial == "none":
    return None, None
  if spatial in ("laplacian", "asymmetric"):
    coords = ops.sequence_coordinates(N) * 1.5 + 2.0  # increasing, not unit-spaced
    return coords, coords
  pos = positions("dot", layout, N)  # with a place-less first row
  return pos, pos


@pytest.mark.parametrize("content,spatial,layout,causal", CASES)
def test_folded_equals_explicit_forward_and_gradients(content, spatial, layout, causal):
  q, k, v = qkv(seed=7)
  q_pos, k_pos = case_inputs(spatial, layout)
  padding = np.ones((B, N), bool)
  padding[1, -2:] = False
  padding[0, :2 if causal else N] = False  # rows with no key to attend: uniform weights, as the explicit ops
  mask = jnp.asarray(padding)[:, None, None, :]
  spatial_arg = None if spatial == "none" else spatial
  assert foldable(spatial_arg, causal, q_pos, k_pos)
  cotangent = jax.random.normal(jax.random.key(3), (B, N, H, D))

  args = dict(q=q, k=k, v=v, h_y=H_Y) | ({} if spatial == "none" else {"h_p": spatial_params(spatial, 1)["h_p"]})

  def loss(attention, q, k, v, h_y, h_p=None):
    out = attention(q, k, v, q_pos, k_pos, h_y=h_y, h_p=h_p, content=content, spatial=spatial_arg, mask=mask,
                    is_causal=causal)
    return jnp.sum(out * cotangent), out

  grads = lambda f: jax.value_and_grad(lambda *a: loss(f, *a), argnums=range(len(args)), has_aux=True)(*args.values())
  (_, folded), folded_grads = grads(folded_bilateral_attention)
  (_, explicit), explicit_grads = grads(ops.explicit_bilateral_attention)
  assert_close(folded, explicit)
  for got, want in zip(folded_grads, explicit_grads):
    assert_close(got, want, rtol=1e-4)


def test_unfoldable_cases_are_refused():
  coords = ops.sequence_coordinates(N)
  assert not foldable("gaussian", True, coords, coords)
  assert not foldable("laplacian", False, coords, coords)
  assert not foldable("laplacian", True, coords[::-1], coords[::-1])
  assert not foldable("laplacian", True, ops.grid_coordinates(2, 3), ops.grid_coordinates(2, 3))
  q, k, v = qkv()
  with pytest.raises(ValueError, match="cannot be folded"):
    folded_bilateral_attention(q, k, v, coords, coords, h_y=H_Y, h_p=H_P, spatial="gaussian")


def test_models_give_the_same_outputs_and_gradients_on_every_path():
  from bilateral_jax.models import TransformerConfig, build_model
  tokens = np.arange(2 * 8).reshape(2, 8) % 11
  for settings in (dict(content="dot", spatial="laplacian"), dict(content="gaussian", spatial="none"),
                   dict(spatial="dot", position_table="sinusoidal")):
    outputs = {}
    for path in ("xla", "folded"):
      config = TransformerConfig(num_layers=2, num_heads=2, model_dim=16, mlp_dim=32, max_length=16,
                                 attention_path=path, **settings)
      model = build_model("lm", config, vocab_size=11)
      params = model.init(jax.random.key(0), tokens)
      loss = lambda p: jnp.mean(model.apply(p, tokens) ** 2)
      outputs[path] = jax.jit(lambda p: (model.apply(p, tokens), jax.grad(loss)(p)))(params)
    assert_close(outputs["folded"][0], outputs["xla"][0])
    assert_leaves_close(outputs["folded"][1], outputs["xla"][1], rtol=1e-4)
  images = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  cls_outputs = []
  for path in ("xla", "folded"):  # TUPE features with a place-less CLS token
    model = build_model("vit", TransformerConfig(num_layers=1, num_heads=2, model_dim=16, mlp_dim=32, max_length=16,
                                                 spatial="dot", attention_path=path),
                        num_classes=3)
    params = model.init(jax.random.key(0), images)
    loss = lambda p: jnp.sum(model.apply(p, images) ** 2)
    cls_outputs.append(jax.jit(lambda p: (model.apply(p, images), jax.grad(loss)(p)))(params))
  assert_close(cls_outputs[1][0], cls_outputs[0][0])
  assert_leaves_close(cls_outputs[1][1], cls_outputs[0][1], rtol=1e-4)
  vit = build_model("vit", TransformerConfig(num_layers=1, num_heads=2, model_dim=16, mlp_dim=32, max_length=16,
                                            attention_path="folded"), num_classes=3)
  with pytest.raises(ValueError, match="attention_path='folded' does not apply to spatial='gaussian'"):
    vit.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))


def test_the_folded_path_asks_for_cudnn_only_where_it_applies():
  assert not cudnn_applies(jnp.bfloat16, 66, None)  # a CPU target
  with target.compiling_for("gpu"):
    assert cudnn_applies(jnp.bfloat16, 66, None) and cudnn_applies(jnp.float16, 128, None)
    assert not cudnn_applies(jnp.float32, 66, None)  # cuDNN's attention is half precision
    assert not cudnn_applies(jnp.bfloat16, 130, None)  # a folded head wider than 128
    assert not cudnn_applies(jnp.bfloat16, 66, jnp.ones((2, 1, 1, 8), bool))
