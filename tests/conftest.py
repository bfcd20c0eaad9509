import os

# Four simulated CPU devices, so the data-parallel tests can compare a sharded step with a single-device one. Must be
# set before JAX initialises its backends; unsharded computations still run on the first device.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import pytest  # noqa: E402

# Catch accidental dtype promotion (e.g. bf16 silently widened) everywhere in the tests.
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def key():
    return jr.key(0)
