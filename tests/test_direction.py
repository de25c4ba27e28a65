"""Direction (docs/method.md section 2): bidirectional models with distance-only spatial kernels are exactly
invariant to their grid's isometries, direction-aware kernels are not, and the shipped configs see
direction. Also the low-precision numerics of BSA and GRC."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilateral_jax import experiments, ops
from bilateral_jax.models import TransformerConfig, build_model
from configs import default, digits_vit
from tests import reference as ref
from tests.test_ops import assert_close, spatial_params

TINY = dict(num_layers=2, num_heads=4, model_dim=16, mlp_dim=32, max_length=17, residual="grc")
ISOTROPIC = [dict(attention="bilateral", spatial="gaussian"), dict(attention="bilateral", spatial="laplacian"),
             dict(attention="bilateral", spatial="none", position_table="none"),
             dict(attention="standard", position_table="none")]
DIRECTIONAL = [dict(attention="bilateral", spatial="shifted"), dict(attention="bilateral", spatial="dot"),
               dict(attention="bilateral", spatial="dot", position_table="sinusoidal"), dict(attention="rope"),
               dict(attention="standard"), dict(attention="bilateral", spatial="none", position_table="learned")]


def relative_change(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def transpose_patch_grid(images, patch: int):
  """Images [b, H, W, c] whose p x p patches are laid out transposed on the grid, each patch's own pixels
  untouched."""
  b, h, w, c = images.shape
  grid = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return grid.transpose(0, 3, 2, 1, 4, 5).reshape(b, w, h, c)


def reversal_change(stack: dict, pooling: str) -> float:
  model = build_model("classifier", TransformerConfig(**(TINY | stack)), vocab_size=11, num_classes=5,
                      pooling=pooling)
  tokens = (np.arange(3 * 12).reshape(3, 12) * 7) % 10 + 1
  params = model.init(jax.random.key(0), tokens)
  apply = jax.jit(model.apply)
  return relative_change(apply(params, tokens), apply(params, tokens[:, ::-1]))


def transposition_change(stack: dict, pooling: str) -> float:
  model = build_model("vit", TransformerConfig(**(TINY | stack)), num_classes=5, patch_size=2, pooling=pooling)
  images = jax.random.uniform(jax.random.key(3), (3, 8, 8, 1))
  params = model.init(jax.random.key(0), images)
  apply = jax.jit(model.apply)
  return relative_change(apply(params, images), apply(params, transpose_patch_grid(images, 2)))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_distance_only_kernels_are_exactly_invariant_and_directional_ones_are_not(pooling):
  for stack in ISOTROPIC:
    assert not TransformerConfig(**(TINY | stack)).sees_direction
    assert reversal_change(stack, pooling) < 1e-5, stack
    assert transposition_change(stack, pooling) < 1e-5, stack
  for stack in DIRECTIONAL + [dict(attention="bilateral", spatial="asymmetric")]:
    assert TransformerConfig(**(TINY | stack)).sees_direction
    assert reversal_change(stack, pooling) > 1e-4, stack
  for stack in DIRECTIONAL:
    assert transposition_change(stack, pooling) > 1e-4, stack


def test_asymmetric_kernel_is_one_dimensional():
  with pytest.raises(ValueError, match="c <= 1"):
    transposition_change(dict(attention="bilateral", spatial="asymmetric"), "cls")


def test_shipped_bidirectional_configs_see_direction():
  """The Done-when of the direction issue: the default and digits models change by > 1e-4 (relative, at
  random initialisation) when their grid is reflected."""
  config = default.get_config()
  model = experiments.make_model(config)
  tokens = (np.arange(4 * 40).reshape(4, 40) * 5) % 15 + 1
  params = model.init(jax.random.key(0), tokens)
  assert model.config.sees_direction
  assert relative_change(model.apply(params, tokens), model.apply(params, tokens[:, ::-1])) > 1e-4

  config = digits_vit.get_config()
  model = experiments.make_model(config)
  images = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
  params = model.init(jax.random.key(0), images)
  assert model.config.sees_direction
  reflected = transpose_patch_grid(images, config.model.patch_size)
  assert relative_change(model.apply(params, images), model.apply(params, reflected)) > 1e-4


def test_cls_token_gets_a_learned_position_with_spatial_dot():
  model = build_model("vit", TransformerConfig(**(TINY | dict(attention="bilateral", spatial="dot"))),
                      num_classes=3, patch_size=2)
  images = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
  params = model.init(jax.random.key(0), images)
  transformer = params["params"]["transformer"]
  assert transformer["position_table"].shape == (2, 17, 8)  # one table per grid axis
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, images) ** 2)))(params)["params"]["transformer"]
  assert float(jnp.max(jnp.abs(grads["placeless_position"]))) > 0
  assert float(jnp.max(jnp.abs(grads[f"block_{TINY['num_layers'] - 1}"]["attention"]["bilateral"]["log_h_p"]))) > 0


@pytest.mark.parametrize("spatial", ["gaussian", "shifted", "laplacian"])
@pytest.mark.parametrize("content", ["gaussian", "dot"])
def test_bfloat16_bsa_is_within_1p5_percent_of_float64_on_the_same_inputs(content, spatial):
  """Logits and softmax run in float32 for bfloat16 inputs; the output is bfloat16."""
  n, heads, dim = 64, 3, 16
  keys = jax.random.split(jax.random.key(4), 3)
  q, k, v = ((3.0 * jax.random.normal(key, (2, n, heads, dim))).astype(jnp.bfloat16) for key in keys)
  pos = ops.grid_coordinates(8, 8)
  h_y = jnp.asarray([1.5, 2.0, 3.0])
  params = spatial_params(spatial, 2)
  out = ops.explicit_bilateral_attention(q, k, v, pos, pos, h_y=h_y, content=content, spatial=spatial, **params)
  assert out.dtype == jnp.bfloat16
  logits = ref.bilateral_logits(np.float64(q), np.float64(k), pos, pos, h_y, params["h_p"], content, spatial,
                                params["shift"])
  want = ref.attention(logits, np.float64(v), np.ones(logits.shape, bool))
  error = np.max(np.abs(np.float64(out) - want)) / np.max(np.abs(want))
  assert error < 0.015, error


def test_grc_keeps_the_residual_streams_dtype():
  y = jnp.ones((2, 3, 4), jnp.bfloat16)
  assert ops.generalized_residual(y, y, y, jax.nn.sigmoid(jnp.float32(0.3))).dtype == jnp.bfloat16
  v = jnp.ones((2, 3, 2, 2), jnp.bfloat16)
  assert ops.boosted_values(v, v, jnp.full((2, 2), 0.2, jnp.float32)).dtype == jnp.bfloat16
  model = build_model("classifier", TransformerConfig(**(TINY | dict(dtype="bfloat16"))), vocab_size=11,
                      num_classes=3)
  tokens = np.arange(2 * 6).reshape(2, 6) % 10 + 1
  params = model.init(jax.random.key(0), tokens)
  _, state = model.apply(params, tokens, mutable=["intermediates"])
  hidden = state["intermediates"]["transformer"]["hidden_states"]
  assert all(h.dtype == jnp.bfloat16 for h in hidden)


@pytest.mark.parametrize("spatial,path", [("shifted", "xla"), ("asymmetric", "xla"), ("shifted", "pallas")])
def test_direction_parameters_are_learned_on_every_path(spatial, path):
  """The bandwidths and the shift receive finite, non-zero gradients, the same on the flash path."""
  def grads(path):
    stack = TransformerConfig(**(TINY | dict(attention="bilateral", spatial=spatial,
                                             attention_path=path)))
    model = build_model("classifier", stack, vocab_size=11, num_classes=3, pooling="cls")
    tokens = (np.arange(2 * 9).reshape(2, 9) * 7) % 10 + 1
    params = model.init(jax.random.key(0), tokens)
    loss = lambda p: jnp.sum(model.apply(p, tokens) ** 2)
    return jax.jit(jax.grad(loss))(params)["params"]["transformer"]["block_0"]

  got = grads(path)["attention"]["bilateral"]
  names = ["log_h_p"] + (["shift_per_h_p"] if spatial == "shifted" else [])
  for name in names:
    assert bool(jnp.all(jnp.isfinite(got[name]))) and float(jnp.max(jnp.abs(got[name]))) > 0, name
  if path != "xla":
    want = grads("xla")["attention"]["bilateral"]
    for name in names:
      assert_close(got[name], want[name], rtol=1e-4)
