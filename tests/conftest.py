import os

# Four simulated CPU devices, so the data-parallel tests can compare a sharded step with a single-device one. Must be
# set before JAX initialises its backends; unsharded computations still run on the first device.
# The tests compile hundreds of small programs and run each only briefly, so most of their time is compilation: XLA's
# CPU backend at optimisation level 0 compiles about twice as fast (the same graph optimisations, less machine-code
# optimisation), which took the user CPU time of test_train.py and test_maskgit.py from 159 s to 94 s. The `fsq`
# command keeps XLA's default level.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import pytest  # noqa: E402

from fsq_ref.training import allocator  # noqa: E402

# As the `fsq` command does, before JAX starts its CPU backend: freed step buffers stay in the process.
allocator.keep_freed_memory()

# Many tests build the same small models in fresh closures, which `jax.jit` compiles again each time. A compilation
# cache for this run only (a new empty folder, removed at exit, so no run depends on an earlier one) reuses them. The
# process that creates it (pytest itself, which starts the pytest-xdist workers) passes it on in the environment, so
# the workers and the multi-process tests' subprocesses share one cache instead of each compiling its own.
_CACHE = os.environ.get("FSQ_REF_TESTS_XLA_CACHE")
if _CACHE is None:
    _CACHE = tempfile.mkdtemp(prefix="fsq-ref-tests-xla-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["FSQ_REF_TESTS_XLA_CACHE"] = _CACHE
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
# The package's own disk cache (generated scenes, oracle codes, the feature classifier) likewise lives in a folder of
# this run, never in the user's ~/.cache; tests that need an empty one set their own.
os.environ["FSQ_CACHE_DIR"] = os.path.join(_CACHE, "fsq-ref")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

# Catch accidental dtype promotion (e.g. bf16 silently widened) everywhere in the tests.
jax.config.update("jax_numpy_dtype_promotion", "strict")


# Helpers that several test modules share (running `fsq` in-process, its one-line errors, the documentation's
# snippets) are plain functions in helpers.py, imported as `from helpers import ...`: no test module imports another.


@pytest.fixture
def key():
    return jr.key(0)
