"""The hand-written LayerNorm and GELU compute what equinox's LayerNorm and jax.nn.gelu compute, values and gradients."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fsq_ref import ops


def _norm(features: int, key, use_weight: bool = True, use_bias: bool = True) -> eqx.nn.LayerNorm:
    norm = eqx.nn.LayerNorm(features, use_weight=use_weight, use_bias=use_bias)
    w_key, b_key = jr.split(key)
    if use_weight:
        norm = eqx.tree_at(lambda n: n.weight, norm, 1.0 + jr.normal(w_key, (features,)))
    if use_bias:
        norm = eqx.tree_at(lambda n: n.bias, norm, jr.normal(b_key, (features,)))
    return norm


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 9), features=st.sampled_from([2, 7, 32, 128]),
       scale=st.sampled_from([1e-3, 1.0, 1e3]), offset=st.sampled_from([0.0, 5.0, -300.0]),
       affine=st.sampled_from([(True, True), (True, False), (False, False)]))
@example(seed=3618, rows=2, features=2, scale=1.0, offset=5.0, affine=(True, True))  # a row spread 0.014
def test_layer_norm_matches_equinox_with_gradients(seed, rows, features, scale, offset, affine):
    x_key, n_key, c_key = jr.split(jr.key(seed), 3)
    # The offset in units of the spread: far larger, and float32 rounding of the inputs decides the normalised rows.
    x = scale * (offset + jr.normal(x_key, (rows, features)))
    norm = _norm(features, n_key, *affine)
    cotangent = jr.normal(c_key, (rows, features))

    def reference(n, x):
        return jnp.sum(cotangent * jax.vmap(n)(x))

    def ours(n, x):
        return jnp.sum(cotangent * ops.layer_norm(n, x))

    np.testing.assert_allclose(ops.layer_norm(norm, x), jax.vmap(norm)(x), rtol=1e-5, atol=1e-5)
    want = eqx.filter_grad(lambda args: reference(*args))((norm, x))
    got = eqx.filter_grad(lambda args: ours(*args))((norm, x))
    # The input's gradient scales as one over its row's spread (about `scale`, but two features can land much closer
    # than that), and float32 centring of a row far from zero errs by a few eps * max|x|, which the gradient divides
    # by the spread twice; the weight's and the bias's gradients are of order one.
    row = np.asarray(x, np.float64)
    spread = np.std(row, axis=-1, keepdims=True)
    centring = 4 * np.finfo(np.float32).eps * np.max(np.abs(row), axis=-1, keepdims=True) / spread**2
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        atol = 1e-4 * (1.0 + 1.0 / spread) + centring if g.ndim == 2 else 1e-4
        np.testing.assert_array_less(np.abs(g - w), np.broadcast_to(atol, g.shape))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 1.0, 4.0, 30.0]))
def test_gelu_matches_jax_with_gradients(seed, scale):
    x = scale * jr.normal(jr.key(seed), (257,))
    np.testing.assert_allclose(ops.gelu(x), jax.nn.gelu(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(jnp.sin(ops.gelu(v))))(x),
                               jax.grad(lambda v: jnp.sum(jnp.sin(jax.nn.gelu(v))))(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dtypes_are_kept_and_statistics_are_float32(dtype):
    norm = _norm(64, jr.key(0))
    x = (1000.0 + jr.normal(jr.key(1), (3, 64))).astype(dtype)
    out = ops.layer_norm(norm, x)
    assert out.dtype == dtype and ops.gelu(x).dtype == dtype
    # bf16 statistics would lose the rows' spread next to an offset of 1000; computed in float32 they keep it.
    np.testing.assert_allclose(out.astype(jnp.float32), jax.vmap(norm)(x).astype(jnp.float32), atol=0.05)
