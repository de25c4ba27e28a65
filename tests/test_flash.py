"""The Pallas flash path equals the explicit ops (forward and every gradient), lowers to Triton for a GPU,
and dispatch picks an exact path or says why it cannot.

Forward to 1e-5 and every gradient (h_y and h_p included) to 1e-4, with padding, causal masks, place-less
rows, 1-D and 2-D coordinates, lengths that are not a multiple of the tile and rows with no key at all,
alone and inside whole models; the Triton kernels are lowered for an abstract H100 (CI has no GPU)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilateral_jax import ops
from bilateral_jax.ops import dispatch
from bilateral_jax.ops.flash import flash_applies, flash_bilateral_attention
from tests.test_ops import B, D, H, H_P, H_Y, assert_close, assert_leaves_close, positions, qkv, spatial_params

N = 37  # three 16-wide tiles, the last one padded

CASES = [("gaussian", "gaussian", 2, False), ("gaussian", "gaussian", 1, True), ("dot", "laplacian", 1, True),
         ("gaussian", "laplacian", 2, False), ("dot", "none", None, True), ("gaussian", "shifted", 2, False),
         ("dot", "asymmetric", 1, False)]


@pytest.mark.parametrize("content,spatial,dims,causal", CASES)
def test_flash_equals_explicit_forward_and_gradients(content, spatial, dims, causal):
  q, k, v = qkv(seed=3, n=N, m=N)
  pos = None if spatial == "none" else positions(spatial, dims, N)  # first row: no place
  padding = np.ones((B, N), bool)
  padding[1, -5:] = False
  mask = jnp.asarray(padding)[:, None, None, :]
  cotangent = jax.random.normal(jax.random.key(9), (B, N, H, D))

  params = {name: x for name, x in spatial_params(spatial, dims).items() if x is not None and spatial != "none"}
  args = dict(q=q, k=k, v=v, h_y=H_Y) | params

  def loss(attention, q, k, v, h_y, h_p=None, shift=None):
    out = attention(q, k, v, pos, pos, h_y=h_y, h_p=h_p, shift=shift, content=content, spatial=spatial, mask=mask,
                    is_causal=causal)
    return jnp.sum(out * cotangent), out

  flash = lambda *a, **kw: flash_bilateral_attention(*a, block_size=16, **kw)
  grad = lambda f: jax.value_and_grad(lambda *a: loss(f, *a), argnums=range(len(args)), has_aux=True)(*args.values())
  (_, got), got_grads = grad(flash)
  (_, want), want_grads = grad(ops.explicit_bilateral_attention)
  assert_close(got, want)
  for name, got_grad, want_grad in zip(args, got_grads, want_grads):
    assert_close(got_grad, want_grad, rtol=1e-4)


@pytest.mark.parametrize("content,layout,causal", [("gaussian", "per_head", False), ("dot", 2, True)])
def test_pallas_path_on_folded_features_equals_explicit(content, layout, causal):
  """Spatial `dot` (TUPE) has no in-tile form: the pallas path runs the flash kernel on the folded q, k."""
  q, k, v = qkv(seed=5)
  pos = positions("dot", layout, q.shape[1])  # with a place-less first row
  mask = jnp.ones((B, 1, 1, q.shape[1]), bool).at[1, ..., -2:].set(False)
  kwargs = dict(content=content, spatial="dot", mask=mask, is_causal=causal)
  loss = lambda f, *a: jnp.sum(jnp.sin(f(*a[:3], pos, pos, h_y=a[3], h_p=a[4], **kwargs)))
  args = (q, k, v, H_Y, H_P)
  assert_close(dispatch.pallas_attention(*args[:3], pos, pos, h_y=H_Y, h_p=H_P, **kwargs),
               ops.explicit_bilateral_attention(*args[:3], pos, pos, h_y=H_Y, h_p=H_P, **kwargs))
  got = jax.grad(lambda *a: loss(dispatch.pallas_attention, *a), argnums=range(5))(*args)
  want = jax.grad(lambda *a: loss(ops.explicit_bilateral_attention, *a), argnums=range(5))(*args)
  for got_grad, want_grad in zip(got, want):
    assert_close(got_grad, want_grad, rtol=1e-4)


def test_rows_with_no_key_are_uniform_as_in_the_explicit_ops():
  q, k, v = qkv(seed=4, n=N, m=N)
  pos = positions("gaussian", 1, N, placeless=0)
  padding = np.ones((B, N), bool)
  padding[0] = False
  kwargs = dict(h_y=H_Y, h_p=H_P, mask=jnp.asarray(padding)[:, None, None, :])
  flash = lambda q, k, v: flash_bilateral_attention(q, k, v, pos, pos, block_size=16, **kwargs)
  explicit = lambda q, k, v: ops.explicit_bilateral_attention(q, k, v, pos, pos, **kwargs)
  assert_close(flash(q, k, v), explicit(q, k, v))
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
  for got, want in zip(jax.grad(loss(flash), argnums=range(3))(q, k, v),
                       jax.grad(loss(explicit), argnums=range(3))(q, k, v)):
    assert_close(got, want, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
@pytest.mark.parametrize("content,spatial,causal", [("gaussian", "gaussian", False), ("dot", "laplacian", True)])
def test_kernels_lower_to_triton_for_an_h100(content, spatial, causal):
  """CI has no GPU: lower forward + backward for an abstract H100 (bf16, non-power-of-two length and head
  width, padding mask; 2-D coordinates, or 1-D with causal block skipping) to check that the kernels are
  valid Triton programs."""
  n, head_dim = 80, 48
  q = jnp.zeros((2, n, H, head_dim), jnp.bfloat16)
  coords = ops.grid_coordinates(8, 10) if spatial == "gaussian" else ops.sequence_coordinates(n)
  mask = jnp.ones((2, 1, 1, n), bool)
  ones = jnp.ones((H,))

  def loss(q, h_y, h_p):
    out = flash_bilateral_attention(q, q, q, coords, coords, h_y=h_y, h_p=h_p, content=content, spatial=spatial,
                                    mask=mask, is_causal=causal, interpret=False)
    return jnp.sum(out.astype(jnp.float32))

  device = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=None, platform="cuda")
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)):
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, ones, ones).lower(lowering_platforms=("cuda",))
  assert lowered.as_text().count("xla.gpu.triton") == 3  # forward, key gradients, query gradients


def test_dispatch_takes_an_exact_path_or_refuses():
  coords = ops.sequence_coordinates(8)
  key_mask = jnp.ones((2, 1, 1, 8), bool)
  case = dict(q_pos=coords, k_pos=coords, mask=key_mask, is_causal=True)
  assert dispatch.choose_path("auto", "cpu", spatial="laplacian", **case) == "xla"
  assert dispatch.choose_path("auto", "gpu", spatial="laplacian", **case) == "folded"
  assert dispatch.choose_path("auto", "gpu", spatial="gaussian", **case) == "xla"
  assert dispatch.choose_path("pallas", "cpu", spatial="gaussian", **case) == "pallas"
  features = jnp.ones((8, H, 3))  # TUPE: the flash kernel on the folded q and k
  assert dispatch.choose_path("pallas", "gpu", spatial="dot", q_pos=features, k_pos=features, mask=None,
                              is_causal=False) == "pallas"
  with pytest.raises(ValueError, match="'pallas' does not apply"):  # a mask that depends on the query
    dispatch.choose_path("pallas", "gpu", spatial="gaussian", **{**case, "mask": jnp.ones((2, 1, 8, 8), bool)})
  assert dispatch.choose_path("auto", "tpu", spatial="gaussian", **case) == "pallas"  # the Mosaic kernel
  assert dispatch.choose_path("auto", "tpu", spatial="dot", q_pos=features, k_pos=features, mask=None,
                              is_causal=False) == "pallas"
  assert dispatch.choose_path("auto", "tpu", spatial="gaussian", **{**case, "mask": jnp.ones((2, 1, 8, 8), bool)}) == "xla"
  with pytest.raises(ValueError, match="attention_path='triton' is not one of"):
    dispatch.choose_path("triton", "gpu", spatial="gaussian", **case)
  assert not flash_applies("gaussian", jnp.ones((8, 4)))  # more than 3 coordinates


def test_models_match_on_the_pallas_path():
  from bilateral_jax.models import TransformerConfig, build_model
  tokens = jnp.asarray(np.arange(2 * 12).reshape(2, 12) % 11).at[1, -3:].set(0)  # padding in the classifier
  images = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  cases = [("lm", dict(vocab_size=11), tokens, {}),  # causal, 1-D
           ("classifier", dict(vocab_size=11, num_classes=3, pooling="cls"), tokens, {}),  # padding, place-less CLS
           ("vit", dict(num_classes=3), images, {}),  # 2-D grid
           ("lm", dict(vocab_size=11), tokens, dict(spatial="dot", position_table="sinusoidal"))]  # TUPE, folded
  for kind, sizes, inputs, settings in cases:
    results = []
    for path in ("xla", "pallas"):
      config = TransformerConfig(num_layers=1, num_heads=2, model_dim=16, mlp_dim=32, max_length=16,
                                 attention_path=path, **settings)
      model = build_model(kind, config, **sizes)
      params = model.init(jax.random.key(0), inputs)
      loss = lambda p: jnp.sum(model.apply(p, inputs) ** 2)
      results.append(jax.jit(lambda p: (model.apply(p, inputs), jax.grad(loss)(p)))(params))
    assert_close(results[1][0], results[0][0])
    assert_leaves_close(results[1][1], results[0][1], rtol=1e-4)
