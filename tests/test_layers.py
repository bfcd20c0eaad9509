"""The FSQ layers users configure (`fsq_ref.layers`): the bottleneck with projections and several codebooks, and
residual FSQ. Properties over Hypothesis inputs, then the behaviours a user relies on."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsq_ref import fsq
from fsq_ref.common.errors import InputError
from fsq_ref.layers import FSQBottleneck, ResidualFSQ, residual_ratios
from fsq_ref.quantizers import usage_metrics

levels_3up = st.lists(st.integers(3, 9), min_size=1, max_size=4).map(tuple)
special = st.sampled_from([np.inf, -np.inf, 3e38, -3e38, 0.0, -0.0, 1e-30])
values = st.one_of(st.floats(-50, 50, width=32), special)


def latents(levels, rows):
    return st.lists(st.lists(values, min_size=len(levels), max_size=len(levels)), min_size=1, max_size=rows).map(
        lambda xs: jnp.asarray(xs, jnp.float32))


def bounded(z, levels):
    """The bounded latent all stages together approximate: bound(z) / (L // 2), in [-1, 1]."""
    return fsq.bound(z, levels) / np.asarray([l // 2 for l in levels], np.float32)


@settings(max_examples=15, deadline=None)
@given(st.data(), levels_3up, st.integers(1, 4))
def test_residual_indices_in_range_and_decoding_gives_the_output(data, levels, stages):
    z = data.draw(latents(levels, 8))
    layer = ResidualFSQ(levels, stages)
    (out, indices, loss, _), state = layer(z)
    assert indices.shape == z.shape[:-1] + (stages,) and indices.dtype == jnp.int32 and state is None
    assert int(indices.min()) >= 0 and int(indices.max()) < fsq.codebook_size(levels)
    np.testing.assert_array_equal(layer.indices_to_codes(indices), out)
    assert float(loss) == 0.0


@settings(max_examples=15, deadline=None)
@given(st.data(), levels_3up)
def test_each_residual_stage_lowers_the_error(data, levels):
    z = data.draw(latents(levels, 8))
    layer = ResidualFSQ(levels, 4)
    indices = layer(z)[0].indices
    target = bounded(z, levels)
    errors = [float(jnp.max(jnp.abs(layer.indices_to_codes(indices[:, :n]) - target))) for n in range(1, 5)]
    # Stage n leaves at most half a step of its grid (plus float32 rounding of the bound itself).
    step = 1 / np.asarray([l // 2 for l in levels])
    for n, error in enumerate(errors):
        assert error <= np.max(step / 2 * residual_ratios(levels) ** n) + 1e-6
    assert all(b <= a + 1e-7 for a, b in zip(errors, errors[1:]))


def test_residual_error_on_normal_latents_falls_geometrically():
    levels = (8, 5, 5, 5)
    z = jax.random.normal(jax.random.key(0), (4096, 4))
    layer = ResidualFSQ(levels, 4)
    indices = layer(z)[0].indices
    mse = [float(jnp.mean((layer.indices_to_codes(indices[:, :n]) - bounded(z, levels)) ** 2)) for n in (1, 2, 4)]
    assert mse[0] > 4 * mse[1] > 16 * mse[2] > 0


@settings(max_examples=10, deadline=None)
@given(st.data(), levels_3up, st.integers(2, 4), st.integers(0, 2**31 - 1))
def test_quantize_dropout_keeps_a_prefix_of_stages(data, levels, stages, seed):
    z = data.draw(latents(levels, 16))
    layer = ResidualFSQ(levels, stages, quantize_dropout=True)
    q, _ = layer(z, key=jax.random.key(seed), train=True)
    for row in range(z.shape[0]):
        prefixes = [layer.indices_to_codes(q.indices[row, :n]) for n in range(1, stages + 1)]
        assert any(np.array_equal(q.codes[row], p) for p in prefixes)
    np.testing.assert_array_equal(layer(z)[0].codes, layer.indices_to_codes(layer(z)[0].indices))  # eval: all


def test_quantize_dropout_draws_per_example_and_needs_a_key():
    layer = ResidualFSQ((5, 5, 5), 4, quantize_dropout=True)
    z = jax.random.normal(jax.random.key(0), (256, 3))
    q, _ = layer(z, key=jax.random.key(1), train=True)
    full = layer.indices_to_codes(q.indices)
    kept = [next(n for n in range(1, 5) if np.array_equal(q.codes[i], layer.indices_to_codes(q.indices[i, :n])))
            for i in range(256)]
    assert set(kept) == {1, 2, 3, 4} and not np.array_equal(q.codes, full)
    with pytest.raises(InputError, match="key"):
        layer(z, train=True)


@settings(max_examples=10, deadline=None)
@given(st.data(), levels_3up)
def test_straight_through_gradients_are_the_bounds(data, levels):
    z = data.draw(latents(levels, 4))
    w = jnp.arange(z.size, dtype=jnp.float32).reshape(z.shape) / z.size - 0.5
    expected = jax.grad(lambda x: jnp.sum(bounded(x, levels) * w))(z)
    for layer in (ResidualFSQ(levels, 3), FSQBottleneck(levels)):
        grad = jax.grad(lambda x: jnp.sum(layer(x)[0].codes * w))(z)
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


@settings(max_examples=15, deadline=None)
@given(st.data(), st.lists(st.integers(2, 9), min_size=1, max_size=4).map(tuple), st.integers(1, 3))
def test_bottleneck_without_projection_is_fsq_per_codebook(data, levels, books):
    z = data.draw(st.lists(st.lists(values, min_size=books * len(levels), max_size=books * len(levels)),
                           min_size=1, max_size=6).map(lambda xs: jnp.asarray(xs, jnp.float32)))
    layer = FSQBottleneck(levels, num_codebooks=books)
    (out, indices, _, _), _ = layer(z)
    per_book = z.reshape(z.shape[0], books, len(levels))
    np.testing.assert_array_equal(out, fsq.quantize(per_book, levels).reshape(z.shape))
    np.testing.assert_array_equal(indices, fsq.codes_to_indices(fsq.quantize(per_book, levels), levels))
    assert indices.shape == (z.shape[0], books) and 0 <= int(indices.min()) and int(indices.max()) < np.prod(levels)
    np.testing.assert_array_equal(layer.indices_to_codes(indices), out)


def test_bottleneck_projects_decodes_and_trains():
    layer = FSQBottleneck((8, 5, 5, 5), 64, num_codebooks=2, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (32, 64))
    (out, indices, _, metrics), _ = layer(x)
    assert out.shape == (32, 64) and indices.shape == (32, 2) and layer.dim == 64 and layer.codebook_size == 1000
    np.testing.assert_allclose(layer.indices_to_codes(indices), out, atol=1e-6)
    assert 0 < float(metrics["usage"]) <= 64 / 1000 and 1 <= float(metrics["perplexity"]) <= 64
    grads = eqx.filter_grad(lambda m: jnp.mean(m(x)[0].codes ** 2))(layer)
    assert float(jnp.abs(grads.project_in.weight).sum()) > 0  # the gradient reaches through the rounding


def test_channel_first_is_the_same_layer_on_transposed_images():
    levels, key = (5, 5, 4), jax.random.key(0)
    first = FSQBottleneck(levels, 16, channel_first=True, key=key)
    last = FSQBottleneck(levels, 16, key=key)
    image = jax.random.normal(jax.random.key(1), (16, 6, 7))  # [C, H, W]
    a, b = first(image)[0], last(jnp.moveaxis(image, 0, -1))[0]
    np.testing.assert_allclose(a.codes, jnp.moveaxis(b.codes, -1, 0), atol=1e-6)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(first.indices_to_codes(a.indices), a.codes, atol=1e-6)
    batched = jax.vmap(lambda x: first(x)[0].codes)(jnp.stack([image, image]))
    np.testing.assert_allclose(batched[1], a.codes, atol=1e-6)


@pytest.mark.parametrize("make", [lambda k: FSQBottleneck((8, 5, 5, 5), 32, key=k),
                                  lambda k: ResidualFSQ((8, 5, 5, 5), 4, 32, key=k)])
def test_bf16_in_bf16_out_with_float32_indices(make):
    layer = make(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (64, 32)).astype(jnp.bfloat16)
    low, high = jax.jit(lambda v: layer(v)[0])(x), layer(x.astype(jnp.float32))[0]
    assert low.codes.dtype == jnp.bfloat16
    np.testing.assert_array_equal(low.indices, high.indices)


def test_residual_with_projection_decodes_to_dim():
    layer = ResidualFSQ((8, 5, 5, 5), 4, 512, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8, 512))
    (out, indices, _, _), _ = layer(x)
    assert out.shape == (8, 512) and indices.shape == (8, 4)
    np.testing.assert_allclose(layer.indices_to_codes(indices), out, atol=1e-5)
    np.testing.assert_array_equal(layer.indices_to_output(indices), layer.indices_to_codes(indices))
    assert layer.indices_to_codes(indices[:, :2]).shape == (8, 512)


def test_bad_configurations_are_one_line_errors():
    with pytest.raises(InputError, match="level >= 3"):
        ResidualFSQ((2, 5), 2)
    with pytest.raises(InputError, match="num_stages"):
        ResidualFSQ((5, 5), 0)
    with pytest.raises(InputError, match="num_codebooks"):
        FSQBottleneck((5, 5), num_codebooks=0)
    with pytest.raises(InputError, match="key="):
        FSQBottleneck((5, 5), 64)
    with pytest.raises(InputError, match="channels"):
        FSQBottleneck((5, 5), 64, key=jax.random.key(0))(jnp.ones((3, 63)))
    with pytest.raises(InputError, match="stages"):
        ResidualFSQ((5, 5), 2).indices_to_codes(jnp.zeros((3, 3), jnp.int32))


def test_residual_ratios_cover_the_previous_stages_error():
    for L in range(3, 17):
        (ratio,) = residual_ratios((L,))
        half_step = 1 / (L // 2) / 2  # what a stage of scale 1 leaves, either side
        grid = (np.arange(L) - L // 2) / (L // 2)  # the next stage's grid, before scaling
        assert ratio * grid.min() <= -half_step + 1e-7 and ratio * grid.max() >= half_step - 1e-7


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=200), st.integers(41, 2**31 - 1))
def test_usage_metrics_count_the_distinct_codes(indices, size):
    counts = np.bincount(indices)
    p = counts[counts > 0] / len(indices)
    metrics = usage_metrics(jnp.asarray(indices, jnp.int32), size)
    assert float(metrics["usage"]) == pytest.approx(len(p) / size, rel=1e-6)
    assert float(metrics["perplexity"]) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-4)
