"""The FSQ layers users configure: a bottleneck that projects any width to FSQ's few channels and back, and residual
FSQ, which quantizes what earlier stages left at finer and finer grids.

Both keep the quantizer contract (`quantizers.Quantizer`): `init_state` gives None, `__call__(x, state, key=...,
train=...)` returns `(Quantized(output, indices, loss=0, metrics), state)`, and `indices_to_codes` decodes indices
without the encoder side. The arithmetic is float32 whatever the input dtype (as `fsq.quantize`); the output has
the input's dtype. Everything jits, vmaps and differentiates; the gradient is straight through the rounding.

Legend: D = len(levels) FSQ channels, C codebooks, N residual stages, "..." any leading axes.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from fsq_ref import fsq
from fsq_ref.common.errors import InputError
from fsq_ref.quantizers import Quantized, usage_metrics


def _project(layer: eqx.nn.Linear | None, x: Float[Array, "... I"]) -> Float[Array, "... O"]:
    """`layer` on every vector of `x` as one matrix product (or `x` itself without a layer)."""
    return x if layer is None else x @ layer.weight.T + layer.bias


def _projections(dim: int | None, width: int, key: PRNGKeyArray | None):
    """(in, out) linear layers between `dim` and `width` channels; none where the two are equal."""
    if dim is None or dim == width:
        return None, None
    if key is None:
        raise InputError(f"projecting {dim} channels to {width} needs weights: pass key=jax.random.key(...)")
    in_key, out_key = jr.split(key)
    return eqx.nn.Linear(dim, width, key=in_key), eqx.nn.Linear(width, dim, key=out_key)


class _FSQLayer(eqx.Module):
    """What both layers share: their levels, their input width and the projections to FSQ's channels and back."""

    levels: tuple[int, ...] = eqx.field(static=True)
    width: int = eqx.field(static=True)
    project_in: eqx.nn.Linear | None
    project_out: eqx.nn.Linear | None

    @property
    def dim(self) -> int:
        return self.width

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def init_state(self, *, key=None):
        del key
        return None

    def indices_to_output(self, indices: Int[Array, "..."]) -> Float[Array, "... dim"]:
        """The layer's output that `indices` stand for: the decoder side alone (`indices_to_codes` without state)."""
        return self.indices_to_codes(indices)


class FSQBottleneck(_FSQLayer):
    """dim -> C x len(levels) channels -> FSQ -> back to dim: the bottleneck most models put FSQ in.

    With `num_codebooks` C > 1 each position carries C independent FSQ codes (C indices, each in [0, prod(levels))),
    which multiplies the information per position without growing any grid. `channel_first` takes and returns
    [dim, ...] (one image as [C, H, W], Equinox's convolution layout; `jax.vmap` over a batch) instead of [..., dim].
    Without `dim`, or with dim = C x len(levels), there are no projections and no parameters.
    """

    num_codebooks: int = eqx.field(static=True)
    channel_first: bool = eqx.field(static=True)

    def __init__(self, levels, dim: int | None = None, *, num_codebooks: int = 1, channel_first: bool = False,
                 key: PRNGKeyArray | None = None):
        self.levels = fsq.check_levels(levels)
        if num_codebooks < 1:
            raise InputError(f"num_codebooks must be >= 1; got {num_codebooks}")
        self.num_codebooks, self.channel_first = num_codebooks, channel_first
        fsq_width = num_codebooks * len(self.levels)
        self.width = fsq_width if dim is None else dim
        self.project_in, self.project_out = _projections(dim, fsq_width, key)

    def __call__(self, x: Float[Array, "... dim"], state=None, *, key=None, train: bool = False):
        """(Quantized(output [..., dim], indices int32 [..., C], 0, metrics), state)."""
        del key, train
        h = _project(self.project_in, self._last(x).astype(jnp.float32))
        codes = fsq.quantize(h.reshape(*h.shape[:-1], self.num_codebooks, len(self.levels)), self.levels)
        indices = fsq.codes_to_indices(jax.lax.stop_gradient(codes), self.levels)
        out = _project(self.project_out, codes.reshape(h.shape))
        return Quantized(self._back(out).astype(x.dtype), indices, jnp.zeros((), jnp.float32),
                         usage_metrics(indices, self.codebook_size)), state

    def indices_to_codes(self, indices: Int[Array, "... C"], state=None) -> Float[Array, "... dim"]:
        """The output that `indices` stand for, float32: the decoder side alone."""
        del state
        codes = fsq.indices_to_codes(indices, self.levels)
        return self._back(_project(self.project_out, codes.reshape(*codes.shape[:-2], -1)))

    def _last(self, x):
        if x.shape[0 if self.channel_first else -1] != self.width:
            where = "first" if self.channel_first else "last"
            raise InputError(f"the {where} axis of the input must have {self.width} channels; got shape {x.shape}")
        return jnp.moveaxis(x, 0, -1) if self.channel_first else x

    def _back(self, y):
        return jnp.moveaxis(y, -1, 0) if self.channel_first else y


def residual_ratios(levels: tuple[int, ...]) -> np.ndarray:
    """Per channel, how much finer each residual stage's grid is than the one before: 1 / (L - 1) for odd L and
    1 / (L - 2) for even L, float32 [D].

    A stage rounds to steps of 2 / (L - 1) (odd L) or 2 / L (even L) of its scale, so what it leaves lies within half
    a step either side of zero. The next grid, scaled by the ratio, must reach that far both ways: odd grids span
    [-1, 1] of their scale; even grids [-1, 1 - 2 / L], one step short on the positive side, hence 1 / (L - 2).
    """
    levels = np.asarray(levels)
    return np.where(levels % 2 == 1, 1.0 / (levels - 1), 1.0 / np.maximum(levels - 2, 1)).astype(np.float32)


class ResidualFSQ(_FSQLayer):
    """N stages of FSQ on one latent: stage 1 quantizes the bounded latent, stage k the error stages 1..k-1 left, on
    a grid `residual_ratios` times finer than stage k-1's, so each stage lowers the error by that factor.

    The latent is bounded once (`fsq.bound`, as FSQ) and the later stages round the remaining error onto their
    grid directly: the error is already inside the grid, and bounding it again with tanh would leave the outer
    values of each later grid unused. (vector-quantize-pytorch's `ResidualFSQ.forward` instead runs a whole FSQ,
    tanh included, on residual / scale with scale (L - 1)^-k for every L; for even L that grid falls one step short
    of the residual's positive side.) A binary channel (L = 2) has no grid that refines an error of both signs, so
    every level must be >= 3.

    Quantize dropout (training only, after SoundStream and EnCodec): each example keeps a random number of stages,
    1 to N, uniformly, so that the first stages alone already decode well. `dim` adds projections in and out as in
    `FSQBottleneck`. Indices are [..., N], one per stage, each in [0, prod(levels)); `indices_to_codes` decodes any
    prefix of them ([..., n], n <= N).
    """

    num_stages: int = eqx.field(static=True)
    quantize_dropout: bool = eqx.field(static=True)

    def __init__(self, levels, num_stages: int, dim: int | None = None, *, quantize_dropout: bool = False,
                 key: PRNGKeyArray | None = None):
        self.levels = fsq.check_levels(levels)
        if min(self.levels) < 3:
            raise InputError(f"residual FSQ needs every level >= 3 (a binary channel cannot refine an error of both "
                             f"signs); got {list(self.levels)}")
        if num_stages < 1:
            raise InputError(f"num_stages must be >= 1; got {num_stages}")
        self.num_stages, self.quantize_dropout = num_stages, quantize_dropout
        self.width = len(self.levels) if dim is None else dim
        self.project_in, self.project_out = _projections(dim, len(self.levels), key)

    def scales(self) -> np.ndarray:
        """Each stage's grid scale per channel, float32 [N, D]: 1 for stage 1, then `residual_ratios` per stage."""
        return residual_ratios(self.levels)[None, :] ** np.arange(self.num_stages, dtype=np.float32)[:, None]

    def __call__(self, x: Float[Array, "... dim"], state=None, *, key: PRNGKeyArray | None = None,
                 train: bool = False):
        """(Quantized(output [..., dim], indices int32 [..., N], 0, metrics), state). With quantize dropout in
        training, `key` draws each example's number of stages (leading axis of `x` = examples)."""
        if x.shape[-1] != self.width:
            raise InputError(f"the last axis of the input must have {self.width} channels; got shape {x.shape}")
        z = _project(self.project_in, x.astype(jnp.float32))
        half_width = fsq.half_widths(self.levels)
        top = np.asarray(self.levels, np.float32) - 1
        target = fsq.bound(z, self.levels) / half_width  # the bounded latent every stage together approximates
        digits = [fsq.digits(z, self.levels).astype(jnp.float32)]  # stage 1: FSQ's exact rounding of the bound
        total = residual = None
        for scale in self.scales():
            if total is None:
                stage = (digits[0] - half_width) / half_width
                total, residual = stage, target - stage
                continue
            digit = jnp.clip(jnp.round(residual / scale * half_width) + half_width, 0, top)
            stage = (digit - half_width) / half_width * scale
            digits.append(digit)
            total, residual = total + stage, residual - stage
        stages = jnp.stack(digits, axis=-2).astype(jnp.int32)  # [..., N, D]
        indices = jnp.sum(stages * fsq.mixed_radix(self.levels), axis=-1, dtype=jnp.int32)
        if self.quantize_dropout and train and self.num_stages > 1:
            if key is None:
                raise InputError("quantize dropout draws how many stages each example keeps: pass key=...")
            shape = (x.shape[0],) + (1,) * (x.ndim - 2) if x.ndim > 1 else ()  # one draw per example
            keep = jr.randint(key, shape, 1, self.num_stages + 1)
            total = self._decode_digits(stages, keep)
        # Straight through: the value of the kept stages, the gradient of the bound.
        codes = target + jax.lax.stop_gradient(total - target)
        out = _project(self.project_out, codes)
        metrics = usage_metrics(indices[..., 0], self.codebook_size)
        return Quantized(out.astype(x.dtype), indices, jnp.zeros((), jnp.float32), metrics), state

    def indices_to_codes(self, indices: Int[Array, "... n"], state=None) -> Float[Array, "... dim"]:
        """The output of the first n stages, from their indices [..., n] (n <= N), float32."""
        del state
        if indices.shape[-1] > self.num_stages:
            raise InputError(f"got indices of {indices.shape[-1]} stages; this layer has {self.num_stages}")
        digits = fsq.indices_to_codes(indices, self.levels)  # [..., n, D] codes of each stage's own grid
        codes = jnp.sum(digits * self.scales()[:indices.shape[-1]], axis=-2)
        return _project(self.project_out, codes)

    def _decode_digits(self, stages: Int[Array, "... N D"], keep: Int[Array, "..."]) -> Float[Array, "... D"]:
        """The sum of each example's first `keep` stages (keep broadcasts against the leading axes)."""
        half_width = fsq.half_widths(self.levels)
        codes = (stages.astype(jnp.float32) - half_width) / half_width * self.scales()
        kept = jnp.arange(self.num_stages) < keep[..., None]
        return jnp.sum(jnp.where(kept[..., None], codes, 0.0), axis=-2)
