"""Mixed precision: bf16 arithmetic in the training step, float32 parameters and optimiser state.

That FSQ gives bf16 activations the indices of the same values in float32 is tested in test_fsq.py
(`test_bfloat16_gives_the_same_indices_as_float32`), that both quantizers' indices from bf16 are in range in
test_quantizers.py, the CLI's `--dtype` (every trainer, resume) in test_cli.py and test_cli_uvim.py.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from fsq_ref import tokenizer, vq
from fsq_ref.common.errors import InputError
from fsq_ref.data import datasets
from fsq_ref.quantizer_config import QuantizerConfig
from fsq_ref.training import precision, presets, tokenizer_train, train


def test_cast_touches_floating_arrays_only(key):
    tree = {"w": jnp.ones(3), "i": jnp.arange(3), "mask": jnp.ones(3, bool), "key": key, "rate": 0.1}
    out = precision.cast(tree, jnp.bfloat16)
    assert out["w"].dtype == jnp.bfloat16 and out["i"].dtype == jnp.int32 and out["mask"].dtype == bool
    assert out["key"] is key and out["rate"] == 0.1
    # Differentiating through the cast brings the gradient back in float32.
    grad = jax.grad(lambda w: jnp.sum(precision.cast(w, jnp.bfloat16).astype(jnp.float32) ** 2))(jnp.ones(3))
    assert grad.dtype == jnp.float32
    with pytest.raises(InputError, match="float16"):
        precision.compute_dtype("float16")


def test_vq_computes_in_float32_from_a_bf16_codebook(key):
    # Under the step's cast the learned codebook arrives in bf16: VQ must answer as float32 VQ does on those values.
    q = vq.VQ(256, 4, entropy_weight=0.1, key=key)
    q_bf16 = precision.cast(q, jnp.bfloat16)
    q_f32 = precision.cast(q_bf16, jnp.float32)  # the same values, in float32
    z = jr.normal(jr.key(1), (2, 7, 7, 4)).astype(jnp.bfloat16)
    quantize = eqx.filter_jit(lambda q, z: q(z)[0])
    out_bf16, out_f32 = quantize(q_bf16, z), quantize(q_f32, z.astype(jnp.float32))
    assert out_bf16.codes.dtype == jnp.bfloat16 and out_bf16.loss.dtype == jnp.float32
    np.testing.assert_array_equal(out_bf16.indices, out_f32.indices)
    np.testing.assert_allclose(out_bf16.loss, out_f32.loss, rtol=1e-6)


def _train_tiny_tokenizer(dtype: str, steps: int = 60):
    config = tokenizer.TokenizerConfig(presets.pick(presets.AUTOENCODER, "tiny"),
                                       QuantizerConfig("fsq", levels=(5, 5, 5)))
    state = tokenizer_train.init_train_state(config, 1e-4, key=jr.key(0))
    step = tokenizer_train.make_step(1e-4, dtype)
    ds = datasets.load("procedural:256", "train")
    losses = []
    for i, (images, _) in zip(range(steps), datasets.iterate(ds, 16, seed=0)):
        lr = jnp.float32(train.learning_rate(i, steps, 2e-3, 10))
        state, stats, _ = step(state, images, jr.key(i), lr)
        losses.append(float(stats["loss"]))
    return state, losses


def test_bfloat16_training_matches_float32_and_keeps_float32_state():
    f32_state, f32_losses = _train_tiny_tokenizer("float32")
    bf16_state, bf16_losses = _train_tiny_tokenizer("bfloat16")
    # Both learn (the loss falls to about a third) ...
    assert np.mean(f32_losses[-10:]) < 0.5 * f32_losses[0]
    # ... to the same place: over seeds 0-2, FSQ and VQ, bf16 ended within 2.5% of float32 (same batches and keys).
    np.testing.assert_allclose(np.mean(bf16_losses[-10:]), np.mean(f32_losses[-10:]), rtol=0.05)
    # The parameters and Adam's moments stay float32; bf16 lives only inside the step.
    for leaf in jax.tree.leaves(eqx.filter((bf16_state.model, bf16_state.opt_state), eqx.is_inexact_array)):
        assert leaf.dtype == jnp.float32
    assert jax.tree.structure(bf16_state) == jax.tree.structure(f32_state)
