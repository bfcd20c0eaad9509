"""The Flax wrappers of the FSQ layers (`fsq_ref.flax_layers`): with the Equinox layer's projection weights copied in,
linen and NNX give its outputs, indices and metrics; they decode, jit, differentiate straight through and drop
residual stages as it does; and the module imports without Flax, failing on one line only when a wrapper is used."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_ref import layers

pytest.importorskip("flax")
from flax import nnx

from fsq_ref import flax_layers
from fsq_ref.common.errors import InputError

LEVELS = (8, 5, 5, 5)


def linen_params(eqx_layer) -> dict:
    """The Equinox layer's projections as linen `nn.Dense` params (kernel = weight transposed)."""
    return {"params": {name: {"kernel": lin.weight.T, "bias": lin.bias}
                       for name in ("project_in", "project_out") if (lin := getattr(eqx_layer, name)) is not None}}


def copy_into_nnx(eqx_layer, module):
    for name in ("project_in", "project_out"):
        lin = getattr(eqx_layer, name)
        if lin is not None:
            # New Params rather than writes into the old ones: the write API differs between Flax 0.10 and 0.12.
            getattr(module, name).kernel = nnx.Param(lin.weight.T)
            getattr(module, name).bias = nnx.Param(lin.bias)
    return module


def bottlenecks(dim, num_codebooks=1, channel_first=False):
    """(Equinox layer, linen call, linen decode, NNX module) of one bottleneck, weights shared."""
    eqx_layer = layers.FSQBottleneck(LEVELS, dim, num_codebooks=num_codebooks, channel_first=channel_first,
                                     key=jax.random.key(0))
    linen = flax_layers.FSQBottleneck(LEVELS, dim, num_codebooks, channel_first)
    params = linen_params(eqx_layer)
    nnx_layer = flax_layers.NNXFSQBottleneck(LEVELS, dim, num_codebooks=num_codebooks, channel_first=channel_first,
                                             rngs=nnx.Rngs(1))
    return (eqx_layer, lambda x: linen.apply(params, x),
            lambda i: linen.apply(params, i, method="indices_to_codes"), copy_into_nnx(eqx_layer, nnx_layer))


def residuals(dim, stages=3):
    eqx_layer = layers.ResidualFSQ(LEVELS, stages, dim, key=jax.random.key(0))
    linen = flax_layers.ResidualFSQ(LEVELS, stages, dim)
    params = linen_params(eqx_layer)
    nnx_layer = copy_into_nnx(eqx_layer, flax_layers.NNXResidualFSQ(LEVELS, stages, dim, rngs=nnx.Rngs(1)))
    return (eqx_layer, lambda x: linen.apply(params, x),
            lambda i: linen.apply(params, i, method="indices_to_codes"), nnx_layer)


def assert_same(result, q, exact):
    out, indices, metrics = result
    assert out.dtype == q.codes.dtype and indices.dtype == jnp.int32
    np.testing.assert_array_equal(indices, q.indices)
    if exact:
        np.testing.assert_array_equal(out, q.codes)
    else:
        np.testing.assert_allclose(out, q.codes, rtol=1e-6, atol=1e-6)
    for name in ("usage", "perplexity"):
        np.testing.assert_array_equal(metrics[name], q.metrics[name])


@pytest.mark.parametrize("dim, num_codebooks, channel_first", [(None, 2, False), (32, 2, False), (24, 1, True)])
def test_bottleneck_equals_the_equinox_layer_and_decodes(dim, num_codebooks, channel_first):
    eqx_layer, linen, decode, nnx_layer = bottlenecks(dim, num_codebooks, channel_first)
    x = 2 * jax.random.normal(jax.random.key(2), (eqx_layer.dim, 6, 5) if channel_first else (6, 5, eqx_layer.dim))
    q, _ = eqx_layer(x)
    for result, decoder in ((linen(x), decode), (nnx_layer(x), nnx_layer.indices_to_codes)):
        assert_same(result, q, exact=True)
        np.testing.assert_allclose(decoder(result[1]), result[0], atol=1e-6)
    if dim is None:  # no projections: no parameters, exactly FSQ
        assert flax_layers.FSQBottleneck(LEVELS, num_codebooks=num_codebooks).init(jax.random.key(0), x) == {}
        np.testing.assert_array_equal(decode(q.indices), q.codes)


@pytest.mark.parametrize("dim", [None, 32])
def test_residual_equals_the_equinox_layer_and_decodes_prefixes(dim):
    eqx_layer, linen, decode, nnx_layer = residuals(dim)
    x = jax.random.normal(jax.random.key(2), (16, eqx_layer.dim))
    q, _ = eqx_layer(x)
    for result, decoder in ((linen(x), decode), (nnx_layer(x), nnx_layer.indices_to_codes)):
        assert_same(result, q, exact=True)
        assert result[1].shape == (16, 3)
        np.testing.assert_allclose(decoder(result[1]), result[0], atol=1e-6)
        np.testing.assert_allclose(decoder(result[1][:, :2]), eqx_layer.indices_to_codes(q.indices[:, :2]), atol=1e-6)


def test_linen_jits_and_its_gradient_is_the_equinox_one():
    eqx_layer = layers.ResidualFSQ(LEVELS, 2, 32, key=jax.random.key(0))
    model, params = flax_layers.ResidualFSQ(LEVELS, 2, 32), linen_params(eqx_layer)
    x = jax.random.normal(jax.random.key(1), (8, 32))
    jitted = jax.jit(model.apply)(params, x)
    np.testing.assert_array_equal(jitted[1], model.apply(params, x)[1])

    def loss(p, x):
        return jnp.mean(model.apply(p, x)[0] ** 2)

    grads, dx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    assert float(jnp.abs(grads["params"]["project_in"]["kernel"]).sum()) > 0  # straight through the rounding
    expected = jax.grad(lambda x: jnp.mean(eqx_layer(x)[0].codes ** 2))(x)
    np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-7)


def test_nnx_jits_and_trains():
    model = flax_layers.NNXFSQBottleneck(LEVELS, 32, num_codebooks=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (8, 32))
    out, indices, _ = nnx.jit(lambda m, x: m(x))(model, x)
    np.testing.assert_array_equal(indices, model(x)[1])
    np.testing.assert_allclose(out, model(x)[0], atol=1e-6)
    grads = nnx.jit(nnx.grad(lambda m: jnp.mean(m(x)[0] ** 2)))(model)
    assert float(jnp.abs(jax.tree.leaves(grads.project_in.kernel)[0]).sum()) > 0  # straight through the rounding


def kept_stages(out, indices, decode) -> list[int]:
    """How many stages each row's output is the decoding of (0 where it is no prefix)."""
    return [next((n for n in range(1, indices.shape[1] + 1)
                  if np.allclose(out[i], decode(indices[i:i + 1, :n])[0], atol=1e-6)), 0) for i in range(len(out))]


def test_quantize_dropout_keeps_a_prefix_of_stages():
    x = jax.random.normal(jax.random.key(0), (64, 16))
    linen = flax_layers.ResidualFSQ(LEVELS, 4, 16, quantize_dropout=True)
    params = linen.init(jax.random.key(1), x)  # evaluation by default: no "dropout" rng needed
    out, indices, _ = linen.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
    decode = jax.jit(lambda i: linen.apply(params, i, method="indices_to_codes"))
    assert set(kept_stages(out, indices, decode)) == {1, 2, 3, 4}
    out, indices, _ = linen.apply(params, x)
    np.testing.assert_allclose(out, decode(indices), atol=1e-6)

    model = flax_layers.NNXResidualFSQ(LEVELS, 4, 16, quantize_dropout=True, rngs=nnx.Rngs(0))
    first, indices, _ = model(x)  # training by default, as nnx.Dropout
    assert set(kept_stages(first, indices, jax.jit(model.indices_to_codes))) == {1, 2, 3, 4}
    assert not np.array_equal(model(x)[0], first)  # a new draw each call
    model.eval()
    np.testing.assert_allclose(model(x)[0], model.indices_to_codes(model(x)[1]), atol=1e-6)
    with pytest.raises(InputError, match="rngs"):
        flax_layers.NNXResidualFSQ(LEVELS, 4, quantize_dropout=True)(x[:, :4])


def test_bad_input_says_what_is_wrong():
    with pytest.raises(InputError, match="last axis of the input must have 32 channels"):
        flax_layers.FSQBottleneck(LEVELS, 32).init(jax.random.key(0), jnp.ones((2, 16)))
    with pytest.raises(InputError, match="needs weights"):
        flax_layers.NNXFSQBottleneck(LEVELS, 32)
    with pytest.raises(InputError, match="every level >= 3"):
        flax_layers.NNXResidualFSQ((2, 5), 2)


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)


def test_importing_the_module_does_not_import_flax():
    result = python("import sys, fsq_ref, fsq_ref.flax_layers; assert 'flax' not in sys.modules, 'flax imported'")
    assert result.returncode == 0, result.stderr


def test_without_flax_the_module_imports_and_a_wrapper_says_how_to_install_it():
    code = ("import sys; sys.modules['flax'] = None\n"
            "import fsq_ref, fsq_ref.flax_layers as fl\n"
            "from fsq_ref.common.errors import InputError\n"
            "try:\n    fl.FSQBottleneck\nexcept InputError as e:\n    print(e)\n"
            "else:\n    raise SystemExit('no error')\n")
    result = python(code)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert "\n" not in message and "pip install '.[flax]'" in message
