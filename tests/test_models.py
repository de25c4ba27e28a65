"""Linen modules and backbones: every combination trains, limits hold at module level, no leaks.

Every backbone x attention x residual combination inits, jits and differentiates; causal models have
exactly zero Jacobian from later inputs; padding leaves outputs unchanged; at model level GRC with t = 0
is the standard residual and `dot` BSA with no spatial term is standard attention; bandwidths start as
docs/method.md section 2 says; remat and drop-path rate 0 change no numbers; the start-up summary names
each layer's attention path."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilateral_jax import console, diagnostics, ops
from bilateral_jax.models import (MODELS, MultiHeadAttention, Transformer, TransformerConfig, build_model,
                                  recorded_bsa_paths)

TINY = dict(num_layers=2, num_heads=2, model_dim=16, mlp_dim=32, max_length=16)
ATTENTIONS = [dict(attention="standard", position_table="learned"),
              dict(attention="standard", position_table="sinusoidal"),
              dict(attention="alibi"), dict(attention="rope"),
              dict(attention="bilateral", spatial="gaussian"),
              dict(attention="bilateral", spatial="laplacian", content="dot"),
              dict(attention="bilateral", spatial="dot", position_table="sinusoidal"),
              dict(attention="bilateral", spatial="none", position_table="none"),
              dict(attention="bilateral", spatial="none", position_table="learned")]
RESIDUALS = [dict(residual="standard"), dict(residual="grc", grc_form="convex"),
             dict(residual="grc", grc_form="boost", grc_sublayers=("attention", "mlp"), grc_per_channel=True)]
BACKBONES = {
    "lm": (dict(vocab_size=13), np.arange(2 * 8).reshape(2, 8) % 13),
    "classifier": (dict(vocab_size=13, num_classes=3, pooling="cls"), np.arange(2 * 8).reshape(2, 8) % 13),
    "retrieval": (dict(vocab_size=13, num_classes=2, two_tower=True, head_hidden=(8, 4)),
                  np.arange(2 * 16).reshape(2, 2, 8) % 13),
    "vit": (dict(num_classes=3, patch_size=4), np.linspace(0, 1, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)),
    "segmenter": (dict(num_classes=3, patch_size=4), np.linspace(0, 1, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)),
}


def tiny(**overrides):
  return TransformerConfig(**(TINY | overrides))


def attention_id(attention):
  return "-".join(attention.values())


@pytest.mark.parametrize("attention", ATTENTIONS, ids=attention_id)
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_attention_and_residual_inits_jits_and_differentiates(backbone, attention):
  kwargs, inputs = BACKBONES[backbone]
  name = "classifier" if backbone == "retrieval" else backbone
  models = [build_model(name, tiny(**attention, **residual, dropout_rate=0.1), **kwargs) for residual in RESIDUALS]

  def init_loss_and_grad(model, rng):
    def loss(params):
      out = model.apply(params, inputs, deterministic=False, rngs={"dropout": rng})
      return jnp.mean(out.astype(jnp.float32) ** 2)
    return jax.value_and_grad(loss)(model.init(rng, inputs))

  every_residual = lambda rng: [init_loss_and_grad(model, rng) for model in models]
  jax.jit(every_residual).lower(jax.random.key(1))  # traces under jit; XLA compiles each op below, eagerly
  results = every_residual(jax.random.key(1))  # op by op: the ops' compiled kernels are shared across cases
  for residual, (value, grads) in zip(RESIDUALS, results):
    leaves = jax.tree.leaves(grads)
    assert np.isfinite(float(value)), (attention, residual)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves), (attention, residual)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


def test_segmenter_gives_logits_per_pixel_from_the_patch_grid():
  kwargs, images = BACKBONES["segmenter"]
  model = build_model("segmenter", tiny(), **kwargs)
  logits = model.apply(model.init(jax.random.key(0), images), images)
  assert logits.shape == (2, 8, 8, 3)
  assert not np.allclose(logits[:, 0, 0], logits[:, -1, -1])  # upsampled, not one value per image


def test_registry_and_config_errors_name_the_choices():
  assert sorted(MODELS) == ["classifier", "lm", "segmenter", "vit"]
  with pytest.raises(ValueError, match="known: classifier, lm, segmenter, vit"):
    build_model("resnet", tiny())
  with pytest.raises(ValueError, match="attention='linear' is not one of: standard, alibi, rope, bilateral"):
    tiny(attention="linear")
  with pytest.raises(ValueError, match="divisible by num_heads"):
    tiny(model_dim=15)
  with pytest.raises(ValueError, match="grc_t_init"):
    tiny(grc_t_init=0.0)
  with pytest.raises(ValueError, match="position_table"):
    tiny(spatial="dot", position_table="none")
  with pytest.raises(TypeError, match="unexpected keyword"):
    TransformerConfig(num_layer=2)
  with pytest.raises(ValueError, match="exceeds max_length"):
    build_model("lm", tiny(max_length=4), vocab_size=5).init(jax.random.key(0), jnp.ones((1, 8), int))


def test_bandwidths_start_as_method_md_says():
  config = tiny(num_heads=4, model_dim=64, spatial_bandwidth_range=(1.0, 27.0))
  params = build_model("lm", config, vocab_size=7).init(jax.random.key(0), jnp.ones((1, 4), int))
  attention = params["params"]["transformer"]["block_0"]["attention"]["bilateral"]
  np.testing.assert_allclose(jnp.exp(attention["log_h_y"]) ** 2, np.full(4, np.sqrt(16.0)), rtol=1e-6)
  np.testing.assert_allclose(jnp.exp(attention["log_h_p"]), [1.0, 3.0, 9.0, 27.0], rtol=1e-5)


def stack_params_without(params, prefix):
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  return flax.traverse_util.unflatten_dict({k: v for k, v in flat.items() if prefix not in k}, sep="/")


def stack_inputs(length=6, batch=2, dim=16):
  return jax.random.normal(jax.random.key(5), (batch, length, dim)), ops.sequence_coordinates(length)


@pytest.mark.parametrize("form,per_channel", [("convex", False), ("boost", False), ("convex", True)])
def test_grc_with_t_zero_is_the_standard_residual(form, per_channel):
  x, coords = stack_inputs()
  grc = Transformer(tiny(residual="grc", grc_form=form, grc_per_channel=per_channel,
                         grc_sublayers=("attention", "mlp")))
  params = grc.init(jax.random.key(0), x, coords=coords)
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  at_zero = {k: (jnp.full_like(v, -jnp.inf) if "grc_theta" in k else v) for k, v in flat.items()}
  out_grc = grc.apply(flax.traverse_util.unflatten_dict(at_zero, sep="/"), x, coords=coords)
  standard = Transformer(tiny(residual="standard"))
  out_standard = standard.apply(stack_params_without(params, "grc_theta"), x, coords=coords)
  np.testing.assert_array_equal(out_grc, out_standard)
  assert float(jnp.max(jnp.abs(grc.apply(params, x, coords=coords) - out_standard))) > 1e-3


@pytest.mark.parametrize("table", ["none", "learned", "sinusoidal"])
def test_bilateral_dot_without_spatial_term_is_standard_attention_with_a_learned_temperature(table):
  x, coords = stack_inputs()
  bsa = Transformer(tiny(attention="bilateral", content="dot", spatial="none", position_table=table,
                         residual="standard"))
  params = bsa.init(jax.random.key(0), x, coords=coords)
  standard = Transformer(tiny(attention="standard", position_table=table, residual="standard"))
  standard_params = stack_params_without(params, "log_h_y")
  assert jax.tree.structure(standard_params) == jax.tree.structure(standard.init(jax.random.key(0), x, coords=coords))
  np.testing.assert_allclose(bsa.apply(params, x, coords=coords), standard.apply(standard_params, x, coords=coords),
                             rtol=1e-5, atol=1e-5)
  hotter = jax.tree_util.tree_map_with_path(
      lambda path, p: p - 0.5 if "log_h_y" in jax.tree_util.keystr(path) else p, params)
  assert float(jnp.max(jnp.abs(bsa.apply(hotter, x, coords=coords) - bsa.apply(params, x, coords=coords)))) > 1e-3


@pytest.mark.parametrize("backbone", ["lm", "classifier"])
def test_token_embeddings_are_scaled_by_sqrt_d_beside_a_sinusoidal_table_only(backbone):
  kwargs, tokens = BACKBONES[backbone]
  for table, scale in (("sinusoidal", 4.0), ("learned", 1.0), ("none", 1.0)):  # model_dim 16
    model = build_model(backbone, tiny(attention="standard", position_table=table),
                        **(kwargs | ({"pooling": "mean"} if backbone == "classifier" else {})))
    params = model.init(jax.random.key(0), tokens)["params"]
    np.testing.assert_allclose(diagnostics.stack_input(model, params, tokens),
                               scale * params["embed"]["embedding"][tokens], rtol=1e-6)


@pytest.mark.parametrize("base", [10_000.0, 6.0])
def test_rope_layer_rotates_q_and_k_on_every_axis_with_its_base(base):
  x, grid = stack_inputs(length=9)[0], ops.grid_coordinates(3, 3)
  layer = MultiHeadAttention(tiny(attention="rope", position_table="none", rope_base=base))
  params = layer.init(jax.random.key(0), x, coords=grid)["params"]
  project = lambda name, h: jnp.einsum("bnc,chd->bnhd", h, params[name]["kernel"]) + params[name]["bias"]
  q, k, v = (project(name, x) for name in ("query", "key", "value"))
  rotated = lambda t: ops.apply_rope(t, grid, base)
  weights = jax.nn.softmax(jnp.einsum("bnhd,bmhd->bhnm", rotated(q), rotated(k)) / np.sqrt(q.shape[-1]), axis=-1)
  expected = jnp.einsum("bnhd,hdc->bnc", jnp.einsum("bhnm,bmhd->bnhd", weights, v), params["out"]["kernel"])
  np.testing.assert_allclose(layer.apply({"params": params}, x, coords=grid), expected + params["out"]["bias"],
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="rope_base must exceed 1"):
    tiny(attention="rope", rope_base=1.0)


@pytest.mark.parametrize("attention", ATTENTIONS, ids=attention_id)
def test_causal_stack_leaks_nothing_from_the_future(attention):
  x, coords = stack_inputs(length=5, batch=1)
  model = Transformer(tiny(**attention, residual="grc", grc_form="boost"))
  params = model.init(jax.random.key(0), x, coords=coords, is_causal=True)
  jac = jax.jacobian(lambda x: model.apply(params, x, coords=coords, is_causal=True))(x)
  jac = np.asarray(jac)[0, :, :, 0]  # [out_pos, out_dim, in_pos, in_dim]
  for i in range(5):
    assert np.all(jac[i, :, i + 1:] == 0.0), f"output {i} depends on a later input"
    assert np.any(jac[i, :, :i + 1] != 0.0)


@pytest.mark.parametrize("pooling,two_tower", [("mean", False), ("cls", False), ("mean", True)])
@pytest.mark.parametrize("attention", ["standard", "bilateral"])
def test_padding_does_not_change_outputs(pooling, two_tower, attention):
  model = build_model("classifier", tiny(attention=attention), vocab_size=9, num_classes=3, pooling=pooling,
                      two_tower=two_tower)
  tokens = np.array([[3, 1, 4, 1, 5, 0], [2, 7, 1, 8, 0, 0]])
  if two_tower:
    tokens = np.stack([tokens, tokens[::-1]], axis=1)
  padded = np.concatenate([tokens, np.zeros(tokens.shape[:-1] + (5,), int)], axis=-1)
  params = model.init(jax.random.key(0), padded)
  np.testing.assert_allclose(model.apply(params, tokens), model.apply(params, padded), rtol=1e-5, atol=1e-6)
  changed = tokens.copy()
  changed[0, ..., 1] = 6
  assert not np.allclose(model.apply(params, changed), model.apply(params, tokens))


@pytest.mark.parametrize("interaction", ["concat", "nli"])
def test_classifier_heads_follow_lra(interaction):
  """ReLU layers of `head_hidden` widths on the pooled features; two towers see [u, v] or [u, v, uv, u-v]."""
  model = build_model("classifier", tiny(), vocab_size=9, num_classes=3, head_hidden=(8, 4), two_tower=True,
                      interaction=interaction)
  tokens = np.array([[[3, 1, 4, 0], [2, 7, 1, 8]], [[5, 0, 0, 0], [6, 6, 2, 0]]])
  params = model.init(jax.random.key(0), tokens)
  pooled = np.asarray(model.apply(params, tokens.reshape(4, -1), method="encode"), np.float64).reshape(2, 2, -1)
  u, v = pooled[:, 0], pooled[:, 1]
  features = np.concatenate([u, v] + ([u * v, u - v] if interaction == "nli" else []), axis=-1)
  head = params["params"]
  for name in ("hidden_0", "hidden_1"):
    features = np.maximum(features @ np.asarray(head[name]["kernel"]) + np.asarray(head[name]["bias"]), 0.0)
  want = features @ np.asarray(head["head"]["kernel"]) + np.asarray(head["head"]["bias"])
  assert head["hidden_0"]["kernel"].shape == ((4 if interaction == "nli" else 2) * 16, 8)
  np.testing.assert_allclose(model.apply(params, tokens), want, rtol=1e-5, atol=1e-6)


def test_intermediates_on_request_only():
  model = build_model("vit", tiny(), num_classes=3)
  images = jnp.ones((2, 8, 8, 3))
  params = model.init(jax.random.key(0), images)
  plain = model.apply(params, images)
  out, state = model.apply(params, images, mutable=["intermediates"])
  np.testing.assert_array_equal(out, plain)
  inter = state["intermediates"]["transformer"]
  hidden = inter["hidden_states"]
  assert len(hidden) == TINY["num_layers"] + 1 and hidden[0].shape == (2, 5, 16)
  weights = inter["block_1"]["attention"]["bilateral"]["attention_weights"][0]
  assert weights.shape == (2, 2, 5, 5)
  np.testing.assert_allclose(jnp.sum(weights, -1), 1.0, rtol=1e-6)
  assert "intermediates" not in params


def test_cls_token_has_no_spatial_term_in_vit():
  """With h_p -> 0 a patch sees only pairs with no spatial penalty: itself and the place-less CLS."""
  model = build_model("vit", tiny(spatial_bandwidth_range=(1e-2, 1e-2)), num_classes=3)
  images = jax.random.uniform(jax.random.key(1), (1, 8, 8, 3))
  params = model.init(jax.random.key(0), images)
  _, state = model.apply(params, images, mutable=["intermediates"])
  weights = np.asarray(state["intermediates"]["transformer"]["block_0"]["attention"]["bilateral"]["attention_weights"][0])
  patches = weights[0, :, 1:, 1:]  # [heads, patch, patch]
  off_diagonal = patches * (1 - np.eye(patches.shape[-1]))
  assert off_diagonal.max() < 1e-6
  np.testing.assert_allclose(weights[0, :, 1:, 0] + np.diagonal(patches, axis1=-2, axis2=-1), 1.0, rtol=1e-5)
  assert weights[0, :, 0, :].min() > 1e-3  # the CLS row is spread by content alone


def test_sharded_batch_over_eight_devices_matches_one_device():
  assert jax.device_count() == 8
  model = build_model("classifier", tiny(), vocab_size=11, num_classes=3)
  tokens = np.arange(8 * 6).reshape(8, 6) % 11
  params = model.init(jax.random.key(0), tokens)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.device_put(tokens, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  out = jax.jit(model.apply)(params, sharded)
  assert len(out.sharding.device_set) == 8
  np.testing.assert_allclose(out, model.apply(params, tokens), rtol=1e-5, atol=1e-6)


# ViT logits at dropout 0.1 in training mode, recorded before drop-path existed (commit 527144d, under
# conftest's XLA flags): a model with
# drop_path_rate 0 must still give these.
BEFORE_DROP_PATH = {
    "bilateral": [-0.9403908848762512, 0.31635919213294983, -1.0351535081863403, -0.6510494947433472,
                  0.1785607635974884, -0.36586013436317444, -0.658998429775238, -1.1260589361190796,
                  0.8323860168457031, -1.6019091606140137],
    "standard": [-0.5531405210494995, -2.5328738689422607, -1.5835444927215576, 0.1108132004737854,
                 -1.2729750871658325, 0.2665693461894989, -0.7307608127593994, -1.4019050598144531,
                 0.22660405933856964, -1.2675646543502808],
}


def _drop_path_vit(attention, drop_path_rate=0.0, num_layers=3):
  residual = "grc" if attention == "bilateral" else "standard"
  return build_model("vit", dict(num_layers=num_layers, num_heads=2, model_dim=16, mlp_dim=32, max_length=17,
                                 attention=attention, residual=residual, dropout_rate=0.1,
                                 drop_path_rate=drop_path_rate), num_classes=5, patch_size=2)


@pytest.mark.parametrize("attention", sorted(BEFORE_DROP_PATH))
def test_drop_path_rate_zero_is_the_model_before_drop_path(attention):
  model = _drop_path_vit(attention)
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  params = model.init(jax.random.key(0), images)["params"]
  logits = model.apply({"params": params}, images, deterministic=False, rngs={"dropout": jax.random.key(2)})
  # Bit for bit until the logits were accumulated in float32 and BSA dropped the gaussian content's |q|^2
  # row term (which cancels in the softmax); since then, to float32 rounding.
  np.testing.assert_allclose(np.asarray(logits).ravel(), np.float32(BEFORE_DROP_PATH[attention]), rtol=1e-5,
                             atol=1e-5)


def test_drop_path_rises_linearly_from_zero_and_is_identity_at_evaluation():
  assert [tiny(num_layers=4, drop_path_rate=0.3).drop_path(layer) for layer in range(4)] == pytest.approx(
      [0.0, 0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="drop_path_rate"):
    tiny(drop_path_rate=1.0)
  model, plain = _drop_path_vit("bilateral", 0.9, num_layers=2), _drop_path_vit("bilateral", 0.0, num_layers=2)
  images = jax.random.normal(jax.random.key(1), (4000, 4, 4, 3))
  params = model.init(jax.random.key(0), images[:1])["params"]
  np.testing.assert_array_equal(model.apply({"params": params}, images), plain.apply({"params": params}, images))
  # Standard residuals: an example passes a layer unchanged exactly when both of its branches are dropped.
  model = _drop_path_vit("standard", 0.9, num_layers=2)
  params = model.init(jax.random.key(0), images[:1])["params"]
  _, state = model.apply({"params": params}, images, deterministic=False, rngs={"dropout": jax.random.key(3)},
                         mutable=["intermediates"])
  y0, y1, y2 = (np.asarray(y) for y in state["intermediates"]["transformer"]["hidden_states"])
  unchanged = lambda before, after: np.all(before == after, axis=(1, 2))
  assert not unchanged(y0, y1).any()  # layer 0: rate 0
  assert np.mean(unchanged(y1, y2)) == pytest.approx(0.9 ** 2, abs=0.025)  # layer 1: rate 0.9 per branch


def test_remat_policies_give_the_same_gradients_and_parameters():
  # lm: causal, dropout on; classifier: a padding mask and a CLS token through the rematerialised blocks.
  cases = {"lm": (dict(vocab_size=13), np.arange(2 * 8).reshape(2, 8) % 13, ("full", "dots", "dots_no_batch")),
           "classifier": (dict(vocab_size=13, num_classes=3, pooling="cls"), np.arange(2 * 8).reshape(2, 8) % 7,
                          ("full",))}
  for name, (kwargs, inputs, policies) in cases.items():
    def grads(remat):
      model = build_model(name, tiny(dropout_rate=0.1, remat=remat, num_layers=1 + (name == "lm")), **kwargs)
      loss = lambda p: jnp.mean(model.apply({"params": p}, inputs, deterministic=False,
                                            rngs={"dropout": jax.random.key(1)}).astype(jnp.float32) ** 2)
      params = jax.jit(model.init)(jax.random.key(0), inputs)["params"]
      return params, jax.jit(jax.grad(loss))(params)

    params, expected = grads("none")
    for remat in policies:
      remat_params, got = grads(remat)
      assert jax.tree.map(np.shape, remat_params) == jax.tree.map(np.shape, params), (name, remat)
      jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), remat_params, params)
      # float32 rounding of a recomputed forward: to 1e-5 of each gradient's own scale (a scalar's, summed
      # over the batch, moves by a few ulps)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.max(np.abs(b))), got,
                   expected)
  with pytest.raises(ValueError, match="remat='some' is not one of: none, full, dots, dots_no_batch"):
    tiny(remat="some")


def test_full_remat_lowers_the_train_steps_temporary_memory():
  tokens = jnp.zeros((2, 256), jnp.int32)

  def temporary_bytes(remat):
    model = build_model("lm", tiny(num_layers=4, model_dim=32, mlp_dim=64, max_length=256, remat=remat), vocab_size=16)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens)["params"])
    grad = jax.grad(lambda p, x: jnp.mean(model.apply({"params": p}, x).astype(jnp.float32) ** 2))
    return jax.jit(grad).lower(params, tokens).compile().memory_analysis().temp_size_in_bytes

  # Measured on CPU: 18.9 MB without remat, 5.6 MB with `full` (the N x N weights of each layer not kept).
  assert temporary_bytes("full") < 0.5 * temporary_bytes("none")


def test_start_up_summary_names_the_attention_path_of_each_layer():
  model = build_model("segmenter", tiny(num_layers=3, spatial="dot", attention_path="folded", remat="full"),
                      num_classes=3, patch_size=4, decoder="mask_transformer")
  with recorded_bsa_paths() as paths:
    jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
  assert console.attention_summary("bilateral", paths) == (
      "attention: bilateral via folded (layers 0-2), decoder/transformer: bilateral via folded (layers 0-1)")
  with recorded_bsa_paths() as paths:  # auto on CPU: the explicit logits
    jax.eval_shape(build_model("lm", tiny(), vocab_size=13).init, jax.random.key(0), np.zeros((1, 8), np.int32))
  assert console.attention_summary("bilateral", paths) == "attention: bilateral via xla (layers 0-1)"
  mixed = {f"transformer/block_{i}/attention": path for i, path in enumerate(("folded", "xla", "xla"))}
  assert console.attention_summary("bilateral", mixed) == (
      "attention: bilateral via folded (layer 0), bilateral via xla (layers 1-2)")
  assert console.attention_summary("rope", {}) == "attention: rope (explicit logits, all layers)"
