"""Properties of the VQ baseline: nearest-neighbour lookup, gradients, EMA dictionary, splitting, data parallelism."""

import math

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

try:
    from jax import shard_map
except ImportError:  # older JAX has it only under jax.experimental
    from jax.experimental.shard_map import shard_map

from fsq_ref import vq
from fsq_ref.quantizer_config import QuantizerConfig


@settings(deadline=None, max_examples=30)
@given(
    hnp.arrays(np.float32, (24, 4), elements=st.floats(-5, 5, width=32)),
    hnp.arrays(np.float32, (16, 4), elements=st.floats(-5, 5, width=32), unique=True),
)
def test_index_is_the_brute_force_nearest_neighbour(x, codebook):
    indices, _ = vq.nearest(jnp.asarray(x), jnp.asarray(codebook))
    dist = ((x[:, None, :].astype(np.float64) - codebook[None].astype(np.float64)) ** 2).sum(-1)
    best = dist.min(axis=1)
    chosen = dist[np.arange(len(x)), np.asarray(indices)]
    # The chosen code is at the minimum distance (ties and float32 rounding may pick an equally near one).
    np.testing.assert_allclose(chosen, best, rtol=1e-4, atol=1e-4)


def test_gradient_reaches_the_input_and_the_codebook(key):
    q = vq.VQ(16, 4, entropy_weight=0.1, key=key)
    z = jr.normal(jr.key(1), (2, 3, 3, 4))

    def loss(q, z):
        out, _ = q(z, train=True)
        return jnp.sum(out.codes**2) + out.loss

    g_q, g_z = jax.grad(loss, argnums=(0, 1))(q, z)
    assert jnp.all(jnp.isfinite(g_z)) and jnp.any(g_z != 0)
    assert jnp.any(g_q.codebook != 0)  # the codebook and entropy losses train the dictionary


def test_straight_through_forward_is_the_codeword(key):
    q = vq.VQ(8, 3, key=key)
    z = jr.normal(jr.key(2), (5, 3))
    out, _ = q(z)
    np.testing.assert_allclose(out.codes, q.codewords(None)[out.indices], rtol=1e-6)
    np.testing.assert_allclose(q.indices_to_codes(out.indices), out.codes, rtol=1e-6)


def test_ema_step_moves_codewords_toward_the_mean_of_their_assignments(key):
    q = vq.VQ(8, 2, ema_decay=0.9, key=key)
    state = q.init_state(key=jr.key(3))
    z = 3.0 + jr.normal(jr.key(4), (64, 2))
    out, new_state = q(z, state, train=True)
    old, new = q.codewords(state), q.codewords(new_state)
    for k in np.unique(out.indices):
        mean = jnp.mean(z[out.indices == k], axis=0)
        assert jnp.linalg.norm(new[k] - mean) < jnp.linalg.norm(old[k] - mean)
        # Exactly the convex combination of the old codeword and the batch mean.
        n = jnp.sum(out.indices == k).astype(jnp.float32)
        w = 0.9 * state.counts[k] / (0.9 * state.counts[k] + n)
        np.testing.assert_allclose(new[k], w * old[k] + (1 - w) * mean, rtol=1e-5)
    unused = np.setdiff1d(np.arange(8), np.asarray(out.indices))
    np.testing.assert_allclose(new[unused], old[unused], rtol=1e-6)  # unassigned codes keep their place


def test_ema_codebook_gets_no_gradient_and_state_is_returned_not_mutated(key):
    q = vq.VQ(8, 2, ema_decay=0.99, key=key)
    assert q.codebook is None
    state = q.init_state(key=jr.key(5))
    before = jax.tree.map(np.array, state)
    _, new_state = q(jr.normal(key, (16, 2)), state, train=True)
    jax.tree.map(np.testing.assert_array_equal, state, before)
    assert not np.allclose(new_state.counts, state.counts)
    _, eval_state = q(jr.normal(key, (16, 2)), state, train=False)
    assert eval_state is state


@pytest.mark.slow  # test_training_with_splitting_revives_a_collapsed_dictionary covers splitting by default
@settings(deadline=None, max_examples=20)
@given(st.integers(0, 2**31 - 1), st.integers(4, 64))
def test_after_splitting_no_code_is_dead(seed, K):
    k1, k2 = jr.split(jr.key(seed))
    counts = jnp.where(jr.uniform(k1, (K,)) < 0.5, 0.0, 1.0 + 100 * jr.uniform(k2, (K,)))
    counts = counts.at[0].set(500.0)  # enough mass to lift every code over the threshold
    state = vq.VQState(jr.normal(k1, (K, 3)), counts)
    split, splits = vq.split_dead_codes(state, 0.1, k2)
    assert jnp.all(split.counts >= 0.1)
    np.testing.assert_allclose(jnp.sum(split.counts), jnp.sum(counts), rtol=1e-5)  # mass is conserved
    # Each split lifts one dead code, and may leave the most used code's half under the threshold in turn.
    assert int(splits) >= int(jnp.sum(counts < 0.1))


def test_training_with_splitting_revives_a_collapsed_dictionary(key):
    # All latents start near one code; UViM's splitting spreads the dictionary until every code is in use.
    q = vq.VQ(16, 2, ema_decay=0.9, split_threshold=0.1, key=key)
    state = q.init_state(key=key)
    step = jax.jit(lambda z, s, k: q(z, s, key=k, train=True)[1])
    for i in range(200):
        z = jr.normal(jr.key(i), (256, 2)) * 2.0
        state = step(z, state, jr.key(1000 + i))
    out, _ = q(jr.normal(jr.key(9999), (4096, 2)) * 2.0, state)
    assert len(np.unique(out.indices)) == 16


def test_the_first_split_comes_when_an_unpicked_count_crosses_the_threshold(key):
    # Counts start at 1 and a code no latent picks decays geometrically: at UViM's 0.995 it crosses 0.1 at step 460,
    # 5% of big_vision's 9294 NYU-depth steps; the decay scaled to 600 steps puts it at the same 5%, step 30.
    for steps, first in ((vq.UVIM_STEPS, 460), (600, 30)):
        decay = vq.scaled_decay(steps)
        assert math.ceil(math.log(0.1) / math.log(decay)) == first
    q = vq.VQ(4, 2, ema_decay=vq.scaled_decay(600), split_threshold=0.1, standardize=True, key=key)
    state = q.init_state(key=key)
    # Every latent is the same vector, so one code takes them all and the other three are never picked.
    z = jnp.tile(jnp.array([[1.0, -1.0]]), (64, 1))
    step = jax.jit(lambda s, k: q(z, s, key=k, train=True))
    splits = []
    for i in range(40):
        out, state = step(state, jr.key(i))
        splits.append(float(out.metrics["vq_splits"]))
    assert splits[:29] == [0.0] * 29 and splits[29] == 3.0  # the three unpicked codes split off at step 30


def test_uvim_vq_standardises_each_token_and_has_no_commitment_loss(key):
    # big_vision's UViM VQ: per-token standardised latents go into the EMA sums, codewords are unit vectors, and the
    # only gradient the latents get is the straight-through one (w_commitment = 0).
    q = QuantizerConfig("vq-split", codebook_size=8, vq_dim=4).build(key=key)
    state = q.init_state(key=key)
    z = jnp.array([[1.0, 2.0, 3.0, 4.0], [10.0, 10.0, 10.0, 50.0], [-3.0, 0.0, 0.0, 7.0]])
    run = jax.jit(lambda z: (q(z, state, key=key, train=True), jax.grad(lambda z: q(z, state, key=key)[0].loss)(z)))
    (out, new), grad = run(z)  # one compilation
    tokens = np.asarray(new.sums - 0.995 * state.sums).sum(0)  # the batch's contribution, summed over codes
    expected = [(t - t.mean()) / np.sqrt(t.var() + 1e-5) for t in np.asarray(z, np.float64)]
    np.testing.assert_allclose(tokens, np.sum(expected, axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.mean(expected, axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.var(expected, axis=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(jnp.linalg.norm(out.codes, axis=-1), 1.0, rtol=1e-5)
    assert float(out.loss) == 0.0 and "vq_commitment" not in out.metrics and not np.any(np.asarray(grad))


def test_uvim_vq_without_splitting_never_splits(key):
    # Every latent lands on one code: with splitting off, the other codes' counts decay below the split threshold
    # and stay there (with "vq-split" they would be revived).
    q = QuantizerConfig("vq-nosplit", codebook_size=8, vq_dim=4).build(key=key)
    state = q.init_state(key=key)
    z = jnp.tile(jnp.asarray(state.sums[:1]), (16, 1))  # standardisation keeps the direction of a zero-mean row
    step = jax.jit(lambda s: q(z - jnp.mean(z, -1, keepdims=True), s, key=key, train=True))
    for _ in range(600):  # 0.995^600 ~ 0.05 < 0.1
        out, state = step(state)
    assert q.split_threshold is None and len(np.unique(out.indices)) == 1
    assert int(np.sum(np.asarray(state.counts) < 0.1)) == 7


def test_entropy_loss_prefers_confident_and_diverse_assignments():
    confident_diverse = jnp.eye(8) * 50.0
    collapsed = jnp.zeros((8, 8)).at[:, 0].set(50.0)
    uncertain = jnp.zeros((8, 8))
    assert vq.entropy_loss(confident_diverse) < vq.entropy_loss(collapsed)
    assert vq.entropy_loss(confident_diverse) < vq.entropy_loss(uncertain)


def test_ema_statistics_are_summed_across_devices(key):
    # Data parallelism with shard_map: each device sees a quarter of the batch; with axis_name the EMA update is the
    # one a single device makes on the whole batch.
    devices = np.array(jax.devices()[:4])
    if len(devices) < 4:
        pytest.skip("needs 4 (simulated) devices: XLA_FLAGS=--xla_force_host_platform_device_count=4")
    mesh = Mesh(devices, ("data",))
    q_single = vq.VQ(8, 3, ema_decay=0.95, key=key)
    q_sharded = vq.VQ(8, 3, ema_decay=0.95, axis_name="data", key=key)
    state = q_single.init_state(key=key)
    z = jr.normal(jr.key(7), (64, 3))

    _, expected = q_single(z, state, train=True)
    sharded = shard_map(
        lambda z, s: q_sharded(z, s, train=True)[1], mesh=mesh, in_specs=(P("data"), P()), out_specs=P()
    )
    got = jax.jit(sharded)(z, state)
    np.testing.assert_allclose(got.counts, expected.counts, rtol=1e-6)
    np.testing.assert_allclose(got.sums, expected.sums, rtol=1e-5, atol=1e-6)


def test_bad_configuration_is_rejected_clearly(key):
    with pytest.raises(ValueError, match="ema_decay"):
        vq.VQ(8, 2, split_threshold=0.1, key=key)
    with pytest.raises(ValueError, match="channels"):
        vq.VQ(8, 2, key=key)(jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="init_state"):
        vq.VQ(8, 2, ema_decay=0.9, key=key)(jnp.zeros((3, 2)))


@pytest.mark.parametrize("l2_normalize", [False, True])
def test_a_code_never_assigned_for_30k_ema_steps_keeps_a_finite_codeword(l2_normalize, key):
    # UViM's decay without splitting: code 3 points away from all the data, so nothing is ever assigned to it and,
    # unguarded, its count and sum underflow to 0 (0/0 = NaN, which argmin picks for every latent).
    q = vq.VQ(4, 2, ema_decay=0.995, l2_normalize=l2_normalize, key=key)
    start = vq.VQState(jnp.array([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -5.0]]), jnp.ones(4))
    centres = np.array([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0]], np.float32)
    offsets = np.array([[0.3, 0.2], [-0.2, 0.3], [0.1, -0.3], [-0.3, -0.1]], np.float32)
    batch = jnp.asarray((centres[:, None] + offsets[None]).reshape(-1, 2))  # 4 latents around each of codes 0-2

    def step(state, _):
        out, state = q(batch, state, train=True)
        return state, (jnp.all(jnp.isfinite(q.codewords(state))), jnp.sum(out.indices == 3))

    state, (finite, picked_3) = jax.jit(lambda s: jax.lax.scan(step, s, None, length=30_000))(start)
    # At every step (an unguarded NaN would be picked by every latent once, then replaced by their mean).
    assert np.all(finite) and not np.any(picked_3)
    codebook = np.asarray(q.codewords(state))
    assert np.all(np.isfinite(codebook)) and np.all(np.asarray(state.counts) > 0)
    # The unused code is where it started (up to the float32 rounding of the discounting before it froze).
    np.testing.assert_allclose(codebook[3], q.codewords(start)[3], rtol=1e-4)

    # Latents near codes 0-2 never pick code 3.
    probes = jnp.asarray(np.repeat(centres, 50, axis=0)) + 0.5 * jr.uniform(jr.key(1), (150, 2), minval=-1.0)
    out, _ = q(probes, state)
    np.testing.assert_array_equal(out.indices, np.repeat([0, 1, 2], 50))

    # The used codes sit at the mean of their latents: the starting codewords have been forgotten.
    x = np.asarray(batch)
    if l2_normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    for k in range(3):
        mean = x[4 * k:4 * k + 4].mean(axis=0)
        if l2_normalize:
            mean = mean / np.linalg.norm(mean)
        np.testing.assert_allclose(codebook[k], mean, rtol=1e-5, atol=1e-6)

    # The frozen code is revived by the first latents assigned to it: its old codeword weighs ~MIN_COUNT.
    near_3 = jnp.array([[0.4, -3.0], [-0.2, -4.0]])
    _, revived = q(near_3, state, train=True)
    expected = np.asarray(near_3)
    if l2_normalize:
        expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    expected = expected.mean(axis=0)
    if l2_normalize:
        expected = expected / np.linalg.norm(expected)
    np.testing.assert_allclose(q.codewords(revived)[3], expected, rtol=1e-6)


@settings(deadline=None, max_examples=30)
@given(
    st.integers(0, 2**31 - 1),
    st.floats(0.5, 0.9999),
    # log10 of the counts, often right at the floor (1e-12) or within one discount of it (float32 values, which
    # hypothesis before 6.9x requires of a float32 array's elements).
    hnp.arrays(np.float32, (6,),
               elements=st.sampled_from([-12.0, float(np.float32(-11.9))]) | st.floats(-12, 4, width=32)),
)
def test_ema_discounts_a_count_down_to_the_floor_and_no_further(seed, decay, log10_counts):
    counts = np.maximum(10.0 ** log10_counts, vq.MIN_COUNT).astype(np.float32)
    k1, k2 = jr.split(jr.key(seed))
    state = vq.VQState(jr.normal(k1, (6, 3)) * jnp.asarray(counts)[:, None], jnp.asarray(counts))
    x = jr.normal(k2, (5, 3))
    indices = jnp.array([0, 0, 1, 2, 2], jnp.int32)  # codes 3-5 get nothing
    new = vq.ema_update(state, x, indices, decay)
    n = np.array([2, 1, 2, 0, 0, 0], np.float32)
    sums = np.array([x[0] + x[1], x[2], x[3] + x[4], np.zeros(3), np.zeros(3), np.zeros(3)], np.float32)
    discounted = np.float32(counts * np.float32(decay)) >= vq.MIN_COUNT
    factor = np.where(discounted, np.float32(decay), np.float32(1.0))
    np.testing.assert_allclose(new.counts, counts * factor + n, rtol=1e-6)
    np.testing.assert_allclose(new.sums, np.asarray(state.sums) * factor[:, None] + sums, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(new.counts) >= vq.MIN_COUNT)
    # An unassigned code below the floor is left exactly as it was, codeword included.
    frozen = ~discounted & (n == 0)
    np.testing.assert_array_equal(np.asarray(new.counts)[frozen], counts[frozen])
    np.testing.assert_array_equal(np.asarray(new.sums)[frozen], np.asarray(state.sums)[frozen])


def test_a_dictionary_that_already_underflowed_gives_zero_codewords_not_nan(key):
    # A state saved before the floor existed can hold codes with count 0 and sum 0.
    q = vq.VQ(3, 2, ema_decay=0.995, key=key)
    state = vq.VQState(jnp.array([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]), jnp.array([2.0, 0.0, 0.0]))
    np.testing.assert_array_equal(q.codewords(state), [[0.5, 1.0], [0.0, 0.0], [0.0, 0.0]])
