import jax
import jax.random as jr
import pytest

# Catch accidental dtype promotion (e.g. bf16 silently widened) everywhere in the tests.
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def key():
    return jr.key(0)
