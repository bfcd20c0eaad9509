"""Tests for fsq_ref.sampling: drawing codes from logits by inverting the cumulative distribution."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fsq_ref.sampling import categorical

DRAWS = 40_000


@settings(deadline=None, max_examples=15)
@given(st.lists(st.floats(-30.0, 30.0), min_size=1, max_size=12), st.integers(0, 2**31 - 1))
def test_draws_follow_the_softmax(logits, seed):
    logits = jnp.asarray(logits, jnp.float32)
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    draws = np.asarray(categorical(jr.key(seed), jnp.broadcast_to(logits, (DRAWS, len(logits)))))
    freq = np.bincount(draws, minlength=len(logits)) / DRAWS
    assert draws.min() >= 0 and draws.max() < len(logits)
    # Every frequency within 5 binomial standard deviations of its probability (for a rare code, of 1 / DRAWS: a
    # single draw of a code of probability 1e-6 is no error).
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(np.maximum(p, 1 / DRAWS) / DRAWS))
    assert np.all(freq[p == 0] == 0)  # a code whose probability underflows to 0 is never drawn


def test_never_draws_an_impossible_code_even_at_the_top_of_the_range():
    # Only the first code is possible; with u forced to the end of [0, total) the draw must still be code 0.
    logits = jnp.array([0.0, -1e30, -1e30])
    draws = categorical(jr.key(0), jnp.broadcast_to(logits, (DRAWS, 3)))
    assert jnp.all(draws == 0)


def test_batches_are_drawn_independently():
    draws = categorical(jr.key(1), jnp.zeros((2, 1000, 4)))
    assert draws.shape == (2, 1000) and draws.dtype == jnp.int32
    assert not jnp.array_equal(draws[0], draws[1])
