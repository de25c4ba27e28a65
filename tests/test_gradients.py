"""Whole-model gradients against central finite differences in float64, for every learned parameter.

Comparing two attention paths cannot see an error in the model code they share (where a layer reads h_y,
h_p, a shift, the TUPE projections or GRC's t); finite differences of the model's own forward can. The
models run in float64 (`jax.enable_x64`; the explicit path computes in float64 when its inputs are), so the
differences are accurate to about 1e-9 of each gradient and the check holds to 1e-6: h_y, h_p, a shift,
TUPE's projections and CLS position, GRC's t scalar and per channel, convex on either sublayer and boost,
pre- and post-LN. A gradient 1% off where the model reads a parameter fails.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from bilateral_jax import ops
from bilateral_jax.models import Transformer, TransformerConfig

N = 7
LINE = np.asarray(ops.sequence_coordinates(N))
CLS_THEN_LINE = np.concatenate([np.full((1, 1), np.nan, np.float32), LINE[:-1]])  # a place-less first token
CLS_THEN_GRID = np.concatenate([np.full((1, 2), np.nan, np.float32), ops.grid_coordinates(2, 3)])
PADDING = np.array([[True] * N, [True] * (N - 2) + [False] * 2])
# name -> (stack fields, coordinates, padding mask, causal). Together they learn every BSA and GRC
# parameter: h_y, h_p (one per head; before/after), a shift, TUPE's projections and CLS position, and t
# (scalar and per channel; convex on attention and MLP, boost; pre- and post-LN).
CASES = {
    "causal-laplacian-convex": (dict(spatial="laplacian", grc_sublayers=("attention", "mlp"), grc_t_init=0.3),
                                LINE, None, True),
    "grid-shifted-boost-per-channel": (dict(spatial="shifted", grc_form="boost", grc_per_channel=True,
                                            spatial_bandwidth_range=(1.0, 3.0)), CLS_THEN_GRID, None, False),
    "tupe-post-ln-per-channel": (dict(content="dot", spatial="dot", norm="post", grc_per_channel=True,
                                      grc_t_init=0.4), CLS_THEN_LINE, PADDING, False),
    "asymmetric-mlp-t": (dict(spatial="asymmetric", grc_sublayers=("mlp",), spatial_bandwidth_range=(1.0, 4.0)),
                         LINE, PADDING, False),
}
BSA_AND_GRC = ("log_h_y", "log_h_p", "shift_per_h_p", "pos_query", "pos_key", "placeless_position", "grc_theta")


def float64_stack(fields):
  config = TransformerConfig(num_layers=2, num_heads=2, model_dim=8, mlp_dim=16, max_length=N,
                             attention_path="xla", **fields)
  object.__setattr__(config, "dtype", "float64")  # not a training dtype: this check's only
  return Transformer(config)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_parameters_gradient_matches_finite_differences_in_float64(case):
  fields, coords, padding, causal = CASES[case]
  with jax.enable_x64(True):
    stack = float64_stack(fields)
    x = jax.random.normal(jax.random.key(3), (2, N, 8), jnp.float64)
    apply = lambda p: stack.apply({"params": p}, x, coords=coords, mask=padding, is_causal=causal)
    params = stack.init(jax.random.key(0), x, coords=coords, mask=padding, is_causal=causal)["params"]
    params = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float64), params)
    # Away from their initial values, so that no gradient is zero or symmetric by construction.
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda leaf: leaf + 0.1 * jax.random.normal(next(keys), leaf.shape, leaf.dtype), params)
    cotangent = jax.random.normal(jax.random.key(2), x.shape, jnp.float64)
    loss = jax.jit(lambda p: jnp.sum(jnp.tanh(apply(p)) * cotangent))
    assert loss(params).dtype == jnp.float64
    grads = jax.jit(jax.grad(loss))(params)

    # One random direction on each leaf at a time; both sides of every difference in one vmapped call.
    flat, unravel = ravel_pytree(params)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    directions, offset, rng = np.zeros((len(leaves), flat.size)), 0, np.random.default_rng(0)
    for row, (_, leaf) in enumerate(leaves):
      directions[row, offset:offset + leaf.size] = rng.normal(size=leaf.size)
      offset += leaf.size
    eps = 1e-5
    sides = jax.jit(jax.vmap(lambda v: loss(unravel(v))))(flat + eps * np.concatenate([directions, -directions]))
    want = (sides[:len(leaves)] - sides[len(leaves):]) / (2 * eps)
    got = directions @ ravel_pytree(grads)[0]
    names = [jax.tree_util.keystr(path) for path, _ in leaves]
    for name, got_one, want_one in zip(names, np.asarray(got), np.asarray(want)):
      assert got_one == pytest.approx(want_one, rel=1e-6, abs=1e-9), name
  checked = {kind for kind in BSA_AND_GRC for name in names if kind in name}
  spatial = fields.get("spatial")
  expected = {"log_h_y", "log_h_p", "grc_theta"}
  expected |= {"shift_per_h_p"} if spatial == "shifted" else set()
  expected |= {"pos_query", "pos_key", "placeless_position"} if spatial == "dot" else set()
  assert checked == expected, checked
