"""Codebook statistics: usage accumulates over a whole evaluation set, not per batch."""

import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings

from fsq_ref import metrics


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
