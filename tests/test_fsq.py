"""Properties of the FSQ quantizer (paper Section 3), and parity with the official colab's example."""

import math

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from fsq_ref import fsq


def level_tuples(max_size=2**14):
    """Random level tuples (1-5 channels, 2-10 levels each, binary channels included) whose codebook fits an
    exhaustive check."""
    return st.lists(st.integers(2, 10), min_size=1, max_size=5).filter(lambda l: math.prod(l) <= max_size).map(tuple)


@st.composite
def levels_and_latents(draw, max_size=2**14):
    levels = draw(level_tuples(max_size))
    n = draw(st.integers(1, 16))
    z = draw(hnp.arrays(np.float32, (n, len(levels)), elements=st.floats(-20, 20, width=32)))
    return levels, z


def test_colab_example():
    # The official colab: levels [3, 5, 4], z = [0.25, 0.6, -7] -> code [0, 0.5, -1] -> index 10.
    codes = fsq.quantize(jnp.array([0.25, 0.6, -7.0]), (3, 5, 4))
    np.testing.assert_array_equal(codes, [0.0, 0.5, -1.0])
    assert int(fsq.codes_to_indices(codes, (3, 5, 4))) == 10
    np.testing.assert_array_equal(fsq.indices_to_codes(jnp.array(10), (3, 5, 4)), [0.0, 0.5, -1.0])


@settings(deadline=None, max_examples=30)
@given(level_tuples())
def test_code_index_bijection(levels):
    K = math.prod(levels)
    indices = jnp.arange(K, dtype=jnp.int32)
    codes = fsq.indices_to_codes(indices, levels)
    np.testing.assert_array_equal(fsq.codes_to_indices(codes, levels), indices)
    assert len(np.unique(np.asarray(codes), axis=0)) == K  # distinct codes: a bijection, not just a left inverse
    np.testing.assert_array_equal(fsq.implicit_codebook(levels), codes)


@settings(deadline=None, max_examples=40)
@given(levels_and_latents())
def test_codes_on_grid_within_unit_interval(args):
    levels, z = args
    codes = np.asarray(fsq.quantize(jnp.asarray(z), levels))
    half = np.array([l // 2 for l in levels])
    digits = codes * half
    np.testing.assert_allclose(digits, np.round(digits), atol=1e-6)
    assert np.all(np.abs(codes) <= 1.0)
    assert np.all(np.round(digits) >= -half) and np.all(np.round(digits) <= (np.array(levels) - 1) // 2)
    indices = np.asarray(fsq.codes_to_indices(jnp.asarray(codes), levels))
    assert np.all((indices >= 0) & (indices < math.prod(levels)))


@settings(deadline=None, max_examples=30)
@given(level_tuples())
def test_every_level_of_every_channel_is_reachable(levels):
    z = jnp.tile(jnp.linspace(-8.0, 8.0, 2001)[:, None], (1, len(levels)))
    codes = np.asarray(fsq.quantize(z, levels))
    for i, L in enumerate(levels):
        assert len(np.unique(codes[:, i])) == L


@settings(deadline=None, max_examples=30)
@given(levels_and_latents(), st.integers(0, 2**31 - 1))
def test_straight_through_gradient(args, seed):
    # d codes / dz must equal d (bound / (L // 2)) / dz for both forms: rounding passes the gradient straight through.
    # Saturated latents get the gradient of a flat tanh, 0, and a NaN latent a NaN gradient.
    levels, z = args
    z = np.concatenate([z, np.array([[np.inf], [-np.inf], [3e38], [np.nan]], np.float32).repeat(len(levels), 1)])
    w = jax.random.normal(jax.random.key(seed), z.shape)
    half = jnp.array([l // 2 for l in levels], jnp.float32)
    g_b = jax.grad(lambda z: jnp.sum(w * fsq.bound(z, levels) / half))(jnp.asarray(z))
    for quantize in (fsq.quantize, fsq.quantize_reference):
        g_q = jax.grad(lambda z, quantize=quantize: jnp.sum(w * quantize(z, levels)))(jnp.asarray(z))
        np.testing.assert_allclose(g_q, g_b, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(g_b[-4:-1], 0.0)
    assert np.all(np.isnan(g_b[-1]))


@settings(deadline=None, max_examples=30)
@given(level_tuples(max_size=2**16), st.integers(0, 2**31 - 1))
def test_bfloat16_gives_the_same_indices_as_float32(levels, seed):
    z = (3 * jax.random.normal(jax.random.key(seed), (512, len(levels)))).astype(jnp.bfloat16)
    q = fsq.FSQ(levels)
    out_bf16, _ = q(z)
    out_f32, _ = q(z.astype(jnp.float32))
    assert out_bf16.codes.dtype == jnp.bfloat16 and out_bf16.indices.dtype == jnp.int32
    np.testing.assert_array_equal(out_bf16.indices, out_f32.indices)
    # Levels this small have codes exact enough in bf16 to index from them directly too.
    np.testing.assert_array_equal(fsq.codes_to_indices(out_bf16.codes, levels), out_f32.indices)


def test_bfloat16_large_codebook_reaches_every_index():
    # Another implementation's bug: indices computed in bf16 made 1001 collapse onto 1000. All 64000 codes of
    # [8,8,8,5,5,5] must survive a round trip through bf16 codes.
    levels = (8, 8, 8, 5, 5, 5)
    codes = fsq.indices_to_codes(jnp.arange(64000), levels).astype(jnp.bfloat16)
    np.testing.assert_array_equal(fsq.codes_to_indices(codes, levels), np.arange(64000))


@settings(deadline=None, max_examples=15)
@given(levels_and_latents(max_size=2**12))
def test_jit_and_vmap_match_eager(args):
    levels, z = args
    z = jnp.asarray(z)
    q = fsq.FSQ(levels)
    eager, _ = q(z)
    jitted, _ = jax.jit(q)(z)
    mapped = jax.vmap(lambda row: q(row)[0].indices)(z)
    np.testing.assert_array_equal(jitted.codes, eager.codes)
    np.testing.assert_array_equal(jitted.indices, eager.indices)
    np.testing.assert_array_equal(mapped, eager.indices)
    inv = jax.jit(jax.vmap(lambda i: fsq.indices_to_codes(i, levels)))(eager.indices)
    np.testing.assert_array_equal(inv, eager.codes)


def _exact_bound(z: np.ndarray, levels) -> np.ndarray:
    """bound(z) in extended precision."""
    L = np.asarray(levels, np.longdouble)
    half_l = (L - 1) * (1 - np.longdouble(1e-3)) / 2
    offset = np.where(L % 2 == 0, np.longdouble(0.5), np.longdouble(0))
    shift = np.arctanh(np.where(L == 2, 0, offset / half_l))
    return np.tanh(z.astype(np.longdouble) + shift) * half_l - offset


def _exact_rounded_bound(z: np.ndarray, levels) -> np.ndarray:
    """round(bound(z)), half to even as jnp.round. For L = 2 the sign of z decides, which extended precision cannot
    resolve for tiny |z| (bound(z) = -0.5 - 0.4995 z); subnormal z counts as 0, as XLA flushes it."""
    binary = np.where(z <= -np.finfo(np.float32).tiny, -1.0, 0.0)
    return np.where(np.asarray(levels) == 2, binary, np.rint(_exact_bound(z, levels)))


@settings(deadline=None, max_examples=30)
@given(level_tuples())
def test_rounding_steps_exactly_at_the_decision_thresholds(levels):
    # On each stored threshold a channel takes its next value, on the float32 just below it still the previous one,
    # and both agree with the bound rounded in extended precision.
    thresholds = fsq.decision_thresholds(levels)
    for i, L in enumerate(levels):
        at = thresholds[i, :L - 1]
        below = np.nextafter(at, np.float32(-np.inf))
        below[at == 0] = -np.finfo(np.float32).tiny  # L = 2's threshold 0: XLA flushes subnormals to zero
        z = np.zeros((2 * (L - 1), len(levels)), np.float32)
        z[:, i] = np.concatenate([below, at])
        got = np.asarray(fsq.digits(jnp.asarray(z), levels))[:, i]
        np.testing.assert_array_equal(got, np.concatenate([np.arange(L - 1), np.arange(1, L)]))
        np.testing.assert_array_equal(got - L // 2, _exact_rounded_bound(z, levels)[:, i])


@st.composite
def latents_of_every_class(draw):
    """Levels 2..16 on 1..6 channels, and float32 latents of every kind: normal at scales from 0.01 to 100, each
    channel's decision thresholds with the float32 on either side, +-inf, +-3e38, NaN, and any float32 at all
    (subnormals, -0, huge values)."""
    levels = tuple(draw(st.lists(st.integers(2, 16), min_size=1, max_size=6)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    normal = [scale * rng.standard_normal((64, len(levels))) for scale in (0.01, 0.3, 1, 3, 100)]
    near = []
    for i, L in enumerate(levels):
        at = fsq.decision_thresholds(levels)[i, :L - 1]
        column = np.concatenate([at, np.nextafter(at, np.float32(-np.inf)), np.nextafter(at, np.float32(np.inf))])
        near.append(np.resize(column, 3 * (max(levels) - 1)))  # other channels repeat theirs to the same length
    special = np.array([np.inf, -np.inf, 3e38, -3e38, np.nan])[:, None].repeat(len(levels), 1)
    anything = draw(hnp.arrays(np.float32, (8, len(levels)), elements=st.floats(width=32)))
    z = np.concatenate([*normal, np.stack(near, 1), special]).astype(np.float32)
    return levels, np.concatenate([z, anything])


@settings(deadline=None, max_examples=40)
@given(latents_of_every_class())
def test_the_paper_form_and_the_threshold_form_agree(args):
    # `quantize` is the exactly-rounded bound. `quantize_reference` (the paper's formula in float32) gives the same
    # codes, except where float32 tanh misrounds: there the exact bound is within a couple of float32 ulps (at the
    # bound's largest magnitude, half_l) of the half-integer between two values, i.e. the latent is within a few ulps
    # of a decision threshold, and either neighbouring value is acceptable. NaN latents give NaN codes in both; +-inf
    # and +-3e38 land on the ends of the grid in both. bf16 latents give the same codes as their float32 values.
    levels, z32 = args
    half = np.array([l // 2 for l in levels], np.float32)
    half_l = np.array([(l - 1) * (1 - 1e-3) / 2 for l in levels], np.float32)
    for z in (z32, z32.astype(jnp.bfloat16)):
        exact_bound = _exact_bound(z.astype(np.float32), levels)
        exact = _exact_rounded_bound(z.astype(np.float32), levels)
        fast, paper = fsq.quantize(jnp.asarray(z), levels), fsq.quantize_reference(jnp.asarray(z), levels)
        assert fast.dtype == paper.dtype == z.dtype
        fast, paper = np.asarray(fast, np.float32), np.asarray(paper, np.float32)
        nan = np.isnan(z.astype(np.float32))
        assert np.array_equal(np.isnan(fast), nan) and np.array_equal(np.isnan(paper), nan)
        fast, paper = np.rint(fast * half), np.rint(paper * half)  # the rounded bounds, integers
        np.testing.assert_array_equal(fast[~nan], exact[~nan])
        differ = (fast != paper) & ~nan
        np.testing.assert_array_equal(np.abs(fast - paper)[differ], 1.0)
        to_half_integer = np.abs(exact_bound - np.floor(exact_bound) - 0.5)
        assert np.all((to_half_integer <= 2 * np.spacing(half_l))[differ]), z[differ]


@settings(deadline=None, max_examples=30)
@given(st.lists(st.integers(2, 16), min_size=1, max_size=6).map(tuple))
def test_saturated_latents_index_the_corners_of_the_grid(levels):
    # tanh(+-inf) = +-1: +inf and +3e38 take every channel's top value, -inf and -3e38 its bottom one, and their
    # indices are the corners' (K - 1 and 0), never past the codebook.
    z = jnp.array([np.inf, 3e38, -np.inf, -3e38], jnp.float32)[:, None].repeat(len(levels), 1)
    top = np.array([((l - 1) // 2) / (l // 2) for l in levels], np.float32)
    corners = np.stack([top, top, -np.ones_like(top), -np.ones_like(top)])
    corner_indices = np.asarray(fsq.codes_to_indices(jnp.asarray(corners), levels))
    np.testing.assert_array_equal(corner_indices, [math.prod(levels) - 1] * 2 + [0] * 2)
    for quantize in (fsq.quantize, fsq.quantize_reference):
        np.testing.assert_allclose(quantize(z, levels), corners, rtol=1e-6)  # k / (L // 2) to within float32
        np.testing.assert_array_equal(fsq.codes_to_indices(quantize(z, levels), levels), corner_indices)
    np.testing.assert_array_equal(fsq.FSQ(levels)(z)[0].indices, corner_indices)


@pytest.mark.parametrize("L", [4, 6, 8, 10, 16])
def test_even_levels_are_centred(L):
    # With the exact arctanh shift, bound(0) is the centre of the grid (the listing's tan is off by ~1e-5).
    assert abs(float(fsq.bound(jnp.zeros(1), (L,))[0])) < 1e-6
    grid = np.unique(np.asarray(fsq.quantize(jnp.linspace(-9, 9, 4001)[:, None], (L,))))
    np.testing.assert_allclose(grid, (np.arange(L) - L // 2) / (L // 2))  # asymmetric: L=8 -> -1 ... 0.75


def test_binary_channels_split_at_zero_without_nan():
    # L = 2 (lookup-free quantization's case): codes {-1, 0} as in the official colab, the sign of z picks the bit,
    # and the gradient is finite everywhere (the exact arctanh shift would be NaN here).
    z = jnp.array([[-30.0, 30.0], [-1e-3, 1e-3], [-1.0, 0.0], [0.5, -0.5]])
    codes = fsq.quantize(z, (2, 2))
    np.testing.assert_array_equal(codes, [[-1, 0], [-1, 0], [-1, 0], [0, -1]])
    np.testing.assert_array_equal(fsq.codes_to_indices(codes, (2, 2)), [2, 2, 2, 1])
    assert float(fsq.bound(jnp.zeros(1), (2,))[0]) == -0.5  # the decision point
    grads = jax.vmap(jax.grad(lambda z: jnp.sum(fsq.quantize(z, (2, 2)))))(z)
    assert np.all(np.isfinite(grads)) and float(jnp.max(grads)) == pytest.approx(0.4995)
    np.testing.assert_array_equal(fsq.FSQ((2, 2))(z.astype(jnp.bfloat16))[0].indices, fsq.FSQ((2, 2))(z)[0].indices)


def test_indices_follow_vector_quantize_pytorchs_layout():
    # vector-quantize-pytorch's FSQ: level index = code * (L // 2) + L // 2, index = sum(level index * basis) with
    # basis = cumprod([1] + levels[:-1]) (first channel least significant), and back: (index // basis) % L. Written
    # out by hand here, so that token files move between the two without a table.
    levels = (8, 5, 2, 3)
    half, basis = np.array([4, 2, 1, 1]), np.array([1, 8, 40, 80])
    codes = np.array([[-1.0, -1.0, -1.0, -1.0], [0.75, 1.0, 0.0, 1.0], [0.25, -0.5, -1.0, 0.0]], np.float32)
    expected = ((codes * half + half) * basis).sum(-1).astype(np.int32)
    np.testing.assert_array_equal(expected, [0, 7 + 4 * 8 + 40 + 2 * 80, 5 + 8 + 80])
    np.testing.assert_array_equal(fsq.codes_to_indices(jnp.asarray(codes), levels), expected)
    np.testing.assert_array_equal(fsq.indices_to_codes(jnp.asarray(expected), levels),
                                  ((expected[:, None] // basis) % np.array(levels) - half) / half)


@pytest.mark.parametrize(
    "levels, message",
    [
        ((), "must not be empty"),
        ((8, 2.5), "integers"),
        ((8, 1, 5), ">= 2"),
        ((2**16, 2**16), "int32"),
        (5, "sequence"),
    ],
)
def test_invalid_levels_are_rejected_clearly(levels, message):
    with pytest.raises(ValueError, match=message):
        fsq.quantize(jnp.zeros(3), levels)


def test_channel_mismatch_is_rejected_clearly():
    with pytest.raises(ValueError, match="one channel per level"):
        fsq.quantize(jnp.zeros((4, 3)), (8, 5, 5, 5))
    with pytest.raises(ValueError, match="one channel per level"):
        fsq.codes_to_indices(jnp.zeros((4, 3)), (8, 5))


def test_levels_for_matches_the_paper_table():
    # Levels per target codebook size, copied from the paper (Table 1 and appendix A.4.1; 2^12 as in Table 1), and
    # the "actual size" row of Table 1.
    paper = {16: (5, 3), 64: (8, 8), 256: (8, 6, 5), 512: (8, 8, 8), 1024: (8, 5, 5, 5), 2048: (8, 8, 6, 5),
             4096: (7, 5, 5, 5, 5), 16384: (8, 8, 8, 6, 5), 65536: (8, 8, 8, 5, 5, 5)}
    actual = {16: 15, 64: 64, 256: 240, 512: 512, 1024: 1000, 2048: 1920, 4096: 4375, 16384: 15360, 65536: 64000}
    assert set(fsq.RECOMMENDED_LEVELS) == set(paper)
    for size, levels in paper.items():
        assert fsq.levels_for(size) == levels
        assert fsq.codebook_size(fsq.levels_for(size)) == actual[size]
    with pytest.raises(ValueError, match="1000"):
        fsq.levels_for(1000)


def test_implicit_codebook_is_only_built_on_demand():
    # [4]*16 would be 34 GB (docs/choices.md); asking for it is an error, quantizing with it is fine.
    levels = (5,) * 12
    with pytest.raises(ValueError, match="GiB"):
        fsq.implicit_codebook(levels)
    out, _ = fsq.FSQ(levels)(jnp.ones((2, 12)))
    assert out.indices.shape == (2,)
