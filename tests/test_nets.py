"""Tests for fsq_ref.nets: the autoencoder presets and the transformer blocks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsq_ref.common.errors import InputError
from fsq_ref.nets import Autoencoder, AutoencoderConfig, _num_groups
from fsq_ref.training import presets
from fsq_ref.transformer import Transformer, TransformerBlock, attention, causal_mask, dense

LATENT_DIM = 4  # e.g. FSQ levels [8, 5, 5, 5]
EXPECTED_TOKEN_GRID = {"tiny": 7, "fashion-mnist": 7, "fashion-mnist-14x14": 14, "imagenet128": 8, "imagenet256": 16}


def _images(key, config, batch):
    shape = (batch, config.image_size, config.image_size, config.channels)
    return jr.uniform(key, shape, minval=-1.0, maxval=1.0)


def test_every_preset_is_tested():
    assert set(presets.AUTOENCODER) == set(EXPECTED_TOKEN_GRID)


@pytest.mark.parametrize("name", sorted(presets.AUTOENCODER))
def test_preset_shapes_without_running(name, key):
    # eval_shape traces the networks without allocating weights or compiling, so even the ImageNet sizes are cheap.
    config = presets.AUTOENCODER[name]
    assert config.token_grid == EXPECTED_TOKEN_GRID[name]
    assert config.token_grid * config.downsample == config.image_size
    model = eqx.filter_eval_shape(Autoencoder, config, LATENT_DIM, key=key)
    image = jax.ShapeDtypeStruct((config.image_size, config.image_size, config.channels), jnp.float32)
    z = eqx.filter_eval_shape(model.encode, image)
    assert z.shape == (config.token_grid, config.token_grid, LATENT_DIM)
    assert eqx.filter_eval_shape(model.decode, z).shape == image.shape


@pytest.mark.slow
@pytest.mark.parametrize("name", ["imagenet128", "imagenet256"])
def test_imagenet_presets_run_a_forward_pass(name, key):
    # The paper's sizes really run (one image; tens of seconds on a CPU, hence slow).
    config = presets.AUTOENCODER[name]
    model = Autoencoder(config, LATENT_DIM, key=key)
    x = _images(key, config, batch=1)[0]
    z = eqx.filter_jit(model.encode)(x)
    y = eqx.filter_jit(model.decode)(z)
    assert z.shape == (config.token_grid, config.token_grid, LATENT_DIM) and y.shape == x.shape
    assert jnp.all(jnp.isfinite(y))


@pytest.mark.parametrize("name", ["tiny", "fashion-mnist"])
def test_encode_decode_batched(name, key):
    config = presets.AUTOENCODER[name]
    model_key, data_key = jr.split(key)
    model = Autoencoder(config, LATENT_DIM, key=model_key)
    x = _images(data_key, config, batch=4)

    @eqx.filter_jit
    def roundtrip(model, x):
        z = jax.vmap(model.encode)(x)
        return z, jax.vmap(model.decode)(z)

    z, y = roundtrip(model, x)
    assert z.shape == (4, 7, 7, LATENT_DIM)
    assert y.shape == x.shape == (4, 28, 28, 1)
    assert z.dtype == y.dtype == jnp.float32
    assert jnp.all(jnp.isfinite(y))


def test_mse_gradient_reaches_every_parameter(key):
    config = presets.AUTOENCODER["tiny"]
    model_key, data_key = jr.split(key)
    model = Autoencoder(config, LATENT_DIM, key=model_key)
    x = _images(data_key, config, batch=8)

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(model, x):
        y = jax.vmap(lambda image: model.decode(model.encode(image)))(x)
        return jnp.mean((y - x) ** 2)

    leaves = jax.tree_util.tree_leaves_with_path(eqx.filter(grad(model, x), eqx.is_array))
    assert len(leaves) > 20  # weights, biases and norm scales of both halves
    for path, g in leaves:
        name = jax.tree_util.keystr(path)
        assert jnp.all(jnp.isfinite(g)), name
        assert jnp.any(g != 0), name


@pytest.mark.parametrize(
    "fields",
    [
        dict(image_size=30),  # 30 is not a multiple of 4
        dict(image_size=0),
        dict(channel_multipliers=()),
        dict(channel_multipliers=(1, 0, 2)),
        dict(base_filters=0),
        dict(num_res_blocks=0),
        dict(channels=0),
    ],
)
def test_invalid_config_raises(fields):
    valid = dict(image_size=28, channels=1, base_filters=8, channel_multipliers=(1, 2, 2), num_res_blocks=1)
    with pytest.raises(InputError):
        AutoencoderConfig(**{**valid, **fields})


def test_encoder_rejects_image_of_wrong_size(key):
    model = Autoencoder(presets.AUTOENCODER["tiny"], LATENT_DIM, key=key)
    with pytest.raises(InputError, match="not divisible"):
        eqx.filter_eval_shape(model.encode, jax.ShapeDtypeStruct((30, 28, 1), jnp.float32))


def test_latent_dim_must_be_positive(key):
    with pytest.raises(InputError, match="latent_dim"):
        Autoencoder(presets.AUTOENCODER["tiny"], 0, key=key)


@given(st.integers(1, 1024))
def test_group_count_is_largest_divisor_up_to_32(channels):
    groups = _num_groups(channels)
    assert 1 <= groups <= 32 and channels % groups == 0
    assert not any(channels % g == 0 for g in range(groups + 1, 33))


# ---- transformer ----

SEQ, CTX, DIM = 6, 3, 16


def _transformer(key, *, cross_attention=False, dropout=0.0):
    return Transformer(
        depth=2, dim=DIM, num_heads=4, mlp_dim=32, dropout=dropout, cross_attention=cross_attention, key=key
    )


@eqx.filter_jit
def _apply(net, x, context=None, mask=None, key=None, inference=False):
    return net(x, context=context, mask=mask, key=key, inference=inference)


def test_causal_mask():
    mask = causal_mask(4)
    assert mask.dtype == jnp.bool_
    assert jnp.array_equal(mask, jnp.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=bool))


@settings(deadline=None, max_examples=10)
@given(st.integers(1, 8), st.integers(1, 8), st.sampled_from([1, 2, 4]), st.booleans())
def test_layers_compute_what_equinox_computes(seq, ctx, heads, masked):
    # `dense` and `attention` apply equinox's own layers to a whole sequence at once: same numbers as equinox.
    attn_key, lin_key, q_key, c_key, m_key = jr.split(jr.key(seq * 100 + ctx * 10 + heads), 5)
    attn = eqx.nn.MultiheadAttention(heads, DIM, use_query_bias=True, use_key_bias=True, use_value_bias=True,
                                     use_output_bias=True, key=attn_key)
    query, context = jr.normal(q_key, (seq, DIM)), jr.normal(c_key, (ctx, DIM))
    # A mask with at least one visible position per row (equinox gives fully hidden rows uniform weights too).
    mask = jr.bernoulli(m_key, 0.5, (seq, ctx)).at[:, 0].set(True) if masked else None
    np.testing.assert_allclose(attention(attn, query, context, mask), attn(query, context, context, mask=mask),
                               rtol=1e-5, atol=1e-5)
    linear = eqx.nn.Linear(DIM, 5, key=lin_key)
    np.testing.assert_allclose(dense(linear, query), jax.vmap(linear)(query), rtol=1e-5, atol=1e-5)


def test_transformer_output_shape(key):
    net_key, x_key = jr.split(key)
    x = jr.normal(x_key, (SEQ, DIM))
    net = _transformer(net_key)
    y = _apply(net, x)
    assert y.shape == (SEQ, DIM) and y.dtype == jnp.float32
    # Like every module here it sees one example; a batch goes through vmap.
    batched = eqx.filter_jit(lambda net, x: jax.vmap(net)(x))(net, jnp.stack([x, x]))
    assert batched.shape == (2, SEQ, DIM)


@settings(deadline=None, max_examples=10)
@given(st.integers(0, SEQ - 1))
def test_causal_mask_hides_later_positions(position):
    net_key, x_key, noise_key = jr.split(jr.key(0), 3)
    net = _transformer(net_key)
    x = jr.normal(x_key, (SEQ, DIM))
    x_perturbed = x.at[position].add(jr.normal(noise_key, (DIM,)))

    causal = causal_mask(SEQ)
    changed = jnp.any(_apply(net, x, mask=causal) != _apply(net, x_perturbed, mask=causal), axis=-1)
    assert not jnp.any(changed[:position])  # earlier positions cannot see the change
    assert jnp.all(changed[position:])  # the position itself and later ones do

    changed = jnp.any(_apply(net, x) != _apply(net, x_perturbed), axis=-1)
    assert jnp.all(changed)  # without the mask every position attends to every other


@pytest.mark.parametrize("cross_attention", [False, True])
def test_cached_decoding_matches_the_causal_forward(key, cross_attention):
    # Decoding position by position from the cache gives the rows of one causally masked pass over the sequence.
    net_key, x_key, c_key = jr.split(key, 3)
    net = _transformer(net_key, cross_attention=cross_attention)
    x = jr.normal(x_key, (SEQ, DIM))
    context = jr.normal(c_key, (CTX, DIM)) if cross_attention else None
    full = _apply(net, x, context=context, mask=causal_mask(SEQ))
    step = eqx.filter_jit(lambda net, x, t, cache: net.decode_step(x, t, cache))
    cache = net.start_decoding(SEQ, context)
    for t in range(SEQ):
        y, cache = step(net, x[t], jnp.asarray(t), cache)
        np.testing.assert_allclose(y, full[t], rtol=1e-5, atol=1e-5)


def test_cross_attention_uses_context(key):
    net_key, x_key, c1_key, c2_key = jr.split(key, 4)
    net = _transformer(net_key, cross_attention=True)
    x = jr.normal(x_key, (SEQ, DIM))
    y1 = _apply(net, x, context=jr.normal(c1_key, (CTX, DIM)))
    y2 = _apply(net, x, context=jr.normal(c2_key, (CTX, DIM)))
    assert y1.shape == (SEQ, DIM)
    assert not jnp.allclose(y1, y2)


def test_context_must_match_cross_attention(key):
    net_key, block_key = jr.split(key)
    x = jnp.zeros((SEQ, DIM))
    with pytest.raises(InputError, match="context"):
        _transformer(net_key, cross_attention=True)(x)
    block = TransformerBlock(dim=DIM, num_heads=4, mlp_dim=32, dropout=0.0, key=block_key)
    with pytest.raises(InputError, match="context"):
        block(x, context=jnp.zeros((CTX, DIM)))


def test_heads_must_divide_dim(key):
    with pytest.raises(InputError, match="num_heads"):
        TransformerBlock(dim=10, num_heads=4, mlp_dim=32, dropout=0.0, key=key)


def test_dropout_only_in_training(key):
    net_key, x_key, c_key, k1, k2 = jr.split(key, 5)
    net = _transformer(net_key, cross_attention=True, dropout=0.5)
    x = jr.normal(x_key, (SEQ, DIM))
    context = jr.normal(c_key, (CTX, DIM))
    deterministic = _apply(net, x, context=context, inference=True)
    # At inference the key is ignored, and without a key there is no dropout either.
    assert jnp.array_equal(deterministic, _apply(net, x, context=context, key=k1, inference=True))
    assert jnp.array_equal(deterministic, _apply(net, x, context=context, key=k2, inference=True))
    assert jnp.array_equal(deterministic, _apply(net, x, context=context))
    # In training with a key, dropout is active: different keys, different outputs.
    train1 = _apply(net, x, context=context, key=k1)
    assert not jnp.allclose(train1, _apply(net, x, context=context, key=k2))
    assert jnp.array_equal(train1, _apply(net, x, context=context, key=k1))
