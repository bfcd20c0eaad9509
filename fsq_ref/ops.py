"""The transformer's LayerNorm and GELU, each with its backward pass written out (`jax.custom_vjp`).

They compute what `jax.vmap(eqx.nn.LayerNorm(...))` and `jax.nn.gelu` compute. The point is what the backward pass
keeps and reads: differentiated automatically, a LayerNorm applied row by row leaves XLA on the CPU a chain of
broadcasts that it fuses into the layout copies around the next matrix product and recomputes there, and the tanh
GELU keeps several intermediates the size of the MLP's hidden layer. Written out, LayerNorm keeps the normalised rows
and one scale per row, GELU its input, and each gradient is one pass over them. docs/choices.md has what this gains on
MaskGIT's training step.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def layer_norm(norm: eqx.nn.LayerNorm, x: Float[Array, "... F"]) -> Float[Array, "... F"]:
    """`norm` applied to every row (last axis) of `x`, statistics and affine map in float32 whatever the dtype of `x`
    (as equinox's LayerNorm does), the result in the dtype of `x`."""
    features = x.shape[-1]
    weight = norm.weight if norm.use_weight else jnp.ones(features)
    bias = norm.bias if norm.use_bias else jnp.zeros(features)
    f32 = jnp.float32
    return _layer_norm(x.astype(f32), weight.astype(f32), bias.astype(f32), norm.eps).astype(x.dtype)


def _normalise(x, eps):
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    scale = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    return centred * scale, scale


@jax.custom_vjp
def _layer_norm(x, weight, bias, eps):
    return _normalise(x, eps)[0] * weight + bias


def _layer_norm_forward(x, weight, bias, eps):
    normalised, scale = _normalise(x, eps)
    return normalised * weight + bias, (normalised, scale, weight)


def _layer_norm_backward(saved, grad):
    normalised, scale, weight = saved
    g = grad * weight
    # d/dx of (x - mean) / std: remove the gradient's mean and its component along the normalised row.
    dx = scale * (g - jnp.mean(g, axis=-1, keepdims=True)
                  - normalised * jnp.mean(g * normalised, axis=-1, keepdims=True))
    rows = tuple(range(grad.ndim - 1))
    return dx, jnp.sum(grad * normalised, axis=rows), jnp.sum(grad, axis=rows), None


_layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


def _gelu_tanh(x):
    return jnp.tanh(_GELU_C * (x + _GELU_A * x * x * x))


@jax.custom_vjp
def gelu(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """GELU, tanh approximation: `jax.nn.gelu(x)`."""
    return 0.5 * x * (1.0 + _gelu_tanh(x))


def _gelu_forward(x):
    return gelu(x), x


def _gelu_backward(x, grad):
    t = _gelu_tanh(x)
    slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_A * x * x)
    return (grad * slope,)


gelu.defvjp(_gelu_forward, _gelu_backward)
