"""fsq_ref.flops: matrix products and convolutions counted on the jaxpr, loops multiplied by their trip counts."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

from fsq_ref import maskgit
from fsq_ref.evaluation import flops
from fsq_ref.training import presets


def test_products_and_convolutions_count_two_flops_per_multiply_add():
    a, b = jnp.ones((6, 7)), jnp.ones((7, 5))
    assert flops.count(jnp.matmul, a, b) == 2 * 6 * 7 * 5
    assert flops.count(lambda x, y: jnp.einsum("bij,bjk->bik", x, y), jnp.ones((3, 6, 7)), jnp.ones((3, 7, 5))) \
        == 3 * 2 * 6 * 7 * 5
    conv = eqx.nn.Conv2d(4, 8, 3, padding=1, groups=2, key=jr.key(0))
    assert flops.count(conv, jnp.ones((4, 16, 16))) == 2 * (8 * 16 * 16) * (2 * 3 * 3)  # 2 input channels per group
    assert flops.count(lambda x: jnp.tanh(x) * 2 + 1, a) == 0  # elementwise work is not counted


def test_loops_and_gradients():
    a = jnp.ones((16, 16))
    one = 2 * 16**3
    assert flops.count(lambda x: jax.lax.scan(lambda c, _: (c @ a, None), x, None, length=7)[0], a) == 7 * one
    assert flops.count(lambda x: jax.lax.fori_loop(0, 5, lambda i, c: c @ a, x), a) == 5 * one
    assert flops.count(jax.jit(jnp.matmul), a, a) == one
    # The gradient of x @ w with respect to both: the forward product and one product per input.
    assert flops.count(jax.grad(lambda x, w: jnp.sum(x @ w), argnums=(0, 1)), a, a) == 3 * one


def test_maskgit_forward_matches_the_transformer_arithmetic():
    config = presets.maskgit("tiny", codebook_size=10, num_classes=2, grid=(3, 4))
    model = maskgit.MaskGIT(config, key=jr.key(0))
    tokens, labels = jnp.zeros((5, 12), jnp.int32), jnp.zeros(5, jnp.int32)
    d, m, depth, s = config.dim, config.mlp_dim, config.depth, 13  # the class token joins the 12 grid tokens
    per_sequence = (2 * s * depth * (4 * d * d + 2 * d * m)  # attention projections and MLP
                    + depth * 2 * 2 * s * s * d  # attention scores and their weighted sum
                    + 2 * 12 * d * 10)  # the head, over the grid positions
    assert flops.count(maskgit.batch_logits, model, tokens, labels) == pytest.approx(5 * per_sequence, rel=0)
