"""Codebook statistics: usage accumulates over a whole evaluation set, not per batch."""

import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from fsq_ref.evaluation import metrics


@settings(deadline=None, max_examples=25)
@given(st.lists(st.lists(st.integers(0, 63), min_size=1, max_size=20), min_size=1, max_size=6))
def test_usage_is_accumulated_over_batches(batches):
    counter = metrics.CodeCounter(64)
    for b in batches:
        counter.update(jnp.array(b, jnp.int32))
    everything = np.concatenate([np.array(b) for b in batches])
    np.testing.assert_array_equal(counter.counts, np.bincount(everything, minlength=64))
    assert counter.stats()["usage"] == len(np.unique(everything)) / 64
    # The union over batches is at least as large as any one batch's usage.
    assert all(counter.stats()["usage"] >= len(set(b)) / 64 for b in batches)


def test_perplexity_and_entropy():
    uniform = metrics.codebook_stats(np.full(16, 10))
    assert uniform["usage"] == 1.0 and np.isclose(uniform["entropy_bits"], 4.0) and np.isclose(uniform["perplexity"], 16)
    one_code = metrics.codebook_stats(np.eye(16)[3] * 100)
    assert one_code == {"usage": 1 / 16, "perplexity": 1.0, "entropy_bits": 0.0}
    assert metrics.codebook_stats(np.zeros(4))["usage"] == 0.0


def test_psnr():
    assert np.isclose(metrics.psnr(0.01), 20.0)
    assert np.isclose(metrics.psnr(4 * 0.01, peak=2.0), 20.0)


@given(levels=st.lists(st.integers(3, 6), min_size=2, max_size=3), seed=st.integers(0, 2**31 - 1))
@settings(deadline=None, max_examples=20)
def test_channel_stats_separate_marginal_from_joint_usage(levels, seed):
    levels = tuple(levels)
    rng = np.random.default_rng(seed)
    basis = np.cumprod((1,) + levels[:-1])
    size = int(np.prod(levels))
    # Independent uniform channels with plenty of tokens: no shared bits, every code expected and used.
    digits = np.stack([rng.integers(0, n, 50 * size) for n in levels], axis=-1)
    stats = metrics.channel_stats(np.bincount(digits @ basis, minlength=size), levels)
    assert stats["values_used"] == 1.0
    assert stats["total_correlation_bits"] == pytest.approx(0.0, abs=0.05)
    assert stats["independent_usage"] == pytest.approx(1.0, abs=1e-3)
    # Every channel a copy of one variable over the smallest level count: the joint carries one channel's bits.
    shared = rng.integers(0, min(levels), 50 * size)
    copies = np.stack([shared] * len(levels), axis=-1)
    stats = metrics.channel_stats(np.bincount(copies @ basis, minlength=size), levels)
    h = stats["joint_bits"]
    assert h == pytest.approx(np.log2(min(levels)), abs=0.05)
    assert stats["marginal_bits"] == pytest.approx(len(levels) * h, abs=1e-9)
    assert stats["total_correlation_bits"] == pytest.approx((len(levels) - 1) * h, abs=1e-9)
    assert stats["independent_usage"] == pytest.approx(min(levels) ** len(levels) / size, abs=1e-3)
