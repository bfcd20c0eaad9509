"""The Python snippets of the README and of docs/ run as written, and give what their comments say: the first example,
the functions, FSQ inside a Flax and an Equinox module. (docs/export.md's reading example needs an exported file;
tests/test_cli_runs.py runs it on one.)"""

import numpy as np
from helpers import python_blocks

# Each Python block is picked by a string only it contains; a block matched by none of these is run by no test.
MARKERS = ("fsq = FSQ((8, 5, 5, 5))", "levels_for(2**10)", "fsq_ref.flax_layers", "import equinox as eqx", "safe_open")


def run(marker: str) -> dict:
    (block,) = python_blocks(marker)
    namespace = {}
    exec(compile(block, f"README.md ({marker})", "exec"), namespace)
    return namespace


def assert_indices(indices, shape, size=1000):
    indices = np.asarray(indices)
    assert indices.shape == shape and indices.dtype == np.int32
    assert 0 <= indices.min() and indices.max() < size


def test_every_python_block_is_run_by_a_test():
    for block in python_blocks():
        assert sum(marker in block for marker in MARKERS) == 1, block


def test_first_example():
    ns = run("fsq = FSQ((8, 5, 5, 5))")
    codes = np.asarray(ns["codes"])
    assert ns["fsq"].codebook_size == 1000  # 1000 codes
    assert codes.shape == (16, 4) and np.abs(codes).max() <= 1  # 16 latents of 4 channels, codes in [-1, 1]
    np.testing.assert_array_equal(codes * np.array([4, 2, 2, 2]), np.round(codes * np.array([4, 2, 2, 2])))  # grid
    assert_indices(ns["indices"], (16,))
    np.testing.assert_array_equal(np.asarray(ns["decoded"]), codes)  # back from the indices: equal to codes
    assert float(ns["loss"]) == 0 and ns["state"] is None  # no parameters, no auxiliary loss


def test_functions():
    ns = run("levels_for(2**10)")
    np.testing.assert_array_equal(np.asarray(ns["codes"]), [0.0, 0.5, -1.0])
    assert int(ns["index"]) == 10 and np.asarray(ns["index"]).dtype == np.int32
    np.testing.assert_array_equal(np.asarray(ns["back"]), [0.0, 0.5, -1.0])
    assert ns["paper"] == (8, 5, 5, 5) and np.prod(ns["paper"]) == 1000
    table = np.asarray(ns["table"])
    assert table.shape == (1000, 4)
    np.testing.assert_array_equal(table[10], np.asarray(ns["indices_to_codes"](10, ns["paper"])))


def test_flax_module():
    ns = run("fsq_ref.flax_layers")
    assert ns["out"].shape == (4, 16, 32)
    assert_indices(ns["indices"], (4, 16, 2))
    assert ns["y"].shape == (4, 16, 32)
    assert_indices(ns["stages"], (4, 16, 4))


def test_equinox_layers():
    import jax

    ns = run("import equinox as eqx")
    assert ns["y"].shape == (16, 512)
    assert_indices(ns["indices"], (16, 2))
    np.testing.assert_allclose(np.asarray(ns["decoded"]), np.asarray(ns["y"]), atol=1e-5)  # equal to y
    assert 0 < float(ns["usage"]) <= 32 / 1000  # 16 rows x 2 codebooks use at most 32 of the 1000 codes
    # Straight through: the loss reaches the projection in front of the quantizer.
    assert np.abs(np.asarray(ns["grads"].project_in.weight)).max() > 0
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(ns["grads"]))
    assert_indices(ns["stages"], (16, 4))
    rfsq, stages, r = ns["rfsq"], ns["stages"], np.asarray(ns["r"])  # each row keeps a prefix of 1-4 stages
    assert all(any(np.allclose(r[i], rfsq.indices_to_codes(stages[i, :n]), atol=1e-5) for n in range(1, 5))
               for i in range(16))
    assert ns["coarse"].shape == (16, 512)
