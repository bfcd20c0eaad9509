"""The FSQ layers of `fsq_ref.layers` as Flax modules, for models written in Flax linen or Flax NNX.

    linen: FSQBottleneck(levels, dim=None, num_codebooks=1, channel_first=False)
           ResidualFSQ(levels, num_stages, dim=None, quantize_dropout=False)
    NNX:   NNXFSQBottleneck(levels, dim=None, *, num_codebooks=1, channel_first=False, rngs=None)
           NNXResidualFSQ(levels, num_stages, dim=None, *, quantize_dropout=False, rngs=None)

Each call returns `(output, indices, metrics)`: the output in the input's dtype and shape, int32 indices ([..., C]
codebooks or [..., N] stages) and the call's codebook "usage" and "perplexity". `indices_to_codes(indices)` decodes
indices without the encoder side. FSQ itself has no parameters: the only parameters are the projections between
`dim` and FSQ's channels (`nn.Dense` / `nnx.Linear`, named project_in and project_out), present, as in the Equinox
layers, only where `dim` is given and differs from FSQ's width. The quantization between them is the Equinox layer
built without projections, so the codes, indices and straight-through gradient are those of `fsq_ref.layers`.

Quantize dropout follows Flax's dropout conventions. linen: `deterministic=False` in the call turns it on and draws
from the "dropout" rng stream (`apply(..., rngs={"dropout": key})`); the default, True, is evaluation. NNX: the
`deterministic` attribute, False by default as `nnx.Dropout`'s, which `model.train()` / `model.eval()` set (or
`deterministic=` in the call), and keys drawn from the "dropout" stream of the constructor's `rngs`.

Flax is an optional dependency (the `flax` extra: `pip install '.[flax]'` in the clone): importing this module does
not import it; the classes are built on first access.
"""

import functools

import jax.numpy as jnp

from fsq_ref import fsq, layers
from fsq_ref.common.errors import InputError

__all__ = ["FSQBottleneck", "NNXFSQBottleneck", "NNXResidualFSQ", "ResidualFSQ"]  # noqa: F822 (built by __getattr__)


def __getattr__(name: str):
    if name in __all__:
        return _build()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)


def _apply(layer, x):
    return x if layer is None else layer(x)


def _bottleneck_core(levels, num_codebooks: int) -> layers.FSQBottleneck:
    return layers.FSQBottleneck(levels, num_codebooks=num_codebooks)  # no projections: no parameters


def _residual_core(levels, num_stages: int, quantize_dropout: bool) -> layers.ResidualFSQ:
    return layers.ResidualFSQ(levels, num_stages, quantize_dropout=quantize_dropout)


def _width(core, dim: int | None) -> tuple[int, bool]:
    """(the channels the layer takes, whether it projects them to the core's)."""
    return (core.width, False) if dim is None else (dim, dim != core.width)


def _quantize(core, x, dim, project_in, project_out, channel_first=False, **kwargs):
    """The Equinox core between the projections, in float32 as `fsq_ref.layers`: (output, indices, metrics)."""
    axis, width = (0 if channel_first else -1), _width(core, dim)[0]
    if x.ndim == 0 or x.shape[axis] != width:
        where = "first" if channel_first else "last"
        raise InputError(f"the {where} axis of the input must have {width} channels; got shape {tuple(x.shape)}")
    h = _apply(project_in, jnp.moveaxis(x, axis, -1).astype(jnp.float32))
    (codes, indices, _, metrics), _ = core(h, **kwargs)
    return jnp.moveaxis(_apply(project_out, codes), -1, axis).astype(x.dtype), indices, metrics


def _decode(core, indices, project_out, channel_first=False):
    """The output that `indices` stand for, float32: the decoder side alone."""
    return jnp.moveaxis(_apply(project_out, core.indices_to_codes(indices)), -1, 0 if channel_first else -1)


@functools.cache
def _build() -> dict:
    """The four classes, defined once Flax is imported."""
    try:
        import flax.linen as nn
        from flax import nnx
    except ImportError:
        raise InputError("the Flax layers need Flax, an optional dependency: pip install '.[flax]' in the clone, or "
                         "pip install flax") from None

    def linen_projections(core, dim):
        width, projected = _width(core, dim)
        return (nn.Dense(core.width), nn.Dense(width)) if projected else (None, None)

    class FSQBottleneck(nn.Module):
        """Flax linen `fsq_ref.layers.FSQBottleneck`: dim -> C x len(levels) channels -> FSQ -> back to dim.

        `__call__(x)` -> (output [..., dim], indices int32 [..., C], metrics); channel_first takes and returns
        [dim, ...]. Projections (nn.Dense) only where `dim` is given and differs from C x len(levels).
        """

        levels: tuple[int, ...]
        dim: int | None = None
        num_codebooks: int = 1
        channel_first: bool = False

        def setup(self):
            self.project_in, self.project_out = linen_projections(self._core(), self.dim)

        def _core(self):
            return _bottleneck_core(self.levels, self.num_codebooks)

        def __call__(self, x):
            return _quantize(self._core(), x, self.dim, self.project_in, self.project_out, self.channel_first)

        def indices_to_codes(self, indices):
            """Decode indices [..., C] to the output, float32 (`apply(..., method="indices_to_codes")`)."""
            return _decode(self._core(), indices, self.project_out, self.channel_first)

    class ResidualFSQ(nn.Module):
        """Flax linen `fsq_ref.layers.ResidualFSQ`: N stages of FSQ, each on what the stages before it left.

        `__call__(x, deterministic=True)` -> (output [..., dim], indices int32 [..., N], metrics). With
        quantize_dropout and deterministic=False each example (leading axis) keeps its first 1 to N stages, drawn
        from the "dropout" rng stream. `indices_to_codes` decodes any prefix of the stages.
        """

        levels: tuple[int, ...]
        num_stages: int
        dim: int | None = None
        quantize_dropout: bool = False

        def setup(self):
            self.project_in, self.project_out = linen_projections(self._core(), self.dim)

        def _core(self):
            return _residual_core(self.levels, self.num_stages, self.quantize_dropout)

        def __call__(self, x, deterministic: bool = True):
            train = not deterministic
            key = self.make_rng("dropout") if train and self.quantize_dropout and self.num_stages > 1 else None
            return _quantize(self._core(), x, self.dim, self.project_in, self.project_out, key=key, train=train)

        def indices_to_codes(self, indices):
            """Decode the indices of the first n stages, [..., n] (n <= N), to their output, float32."""
            return _decode(self._core(), indices, self.project_out)

    def nnx_projections(core, dim, rngs):
        if not _width(core, dim)[1]:
            return None, None
        if rngs is None:
            raise InputError(f"projecting {dim} channels to {core.width} needs weights: pass rngs=nnx.Rngs(...)")
        return nnx.Linear(dim, core.width, rngs=rngs), nnx.Linear(core.width, dim, rngs=rngs)

    class NNXFSQBottleneck(nnx.Module):
        """Flax NNX `fsq_ref.layers.FSQBottleneck`, with nnx.Linear projections; as the linen `FSQBottleneck`."""

        def __init__(self, levels, dim: int | None = None, *, num_codebooks: int = 1, channel_first: bool = False,
                     rngs: nnx.Rngs | None = None):
            self.levels, self.dim = fsq.check_levels(levels), dim
            self.num_codebooks, self.channel_first = num_codebooks, channel_first
            self.project_in, self.project_out = nnx_projections(self._core(), dim, rngs)

        def _core(self):
            return _bottleneck_core(self.levels, self.num_codebooks)

        def __call__(self, x):
            """(output [..., dim], indices int32 [..., C], metrics)."""
            return _quantize(self._core(), x, self.dim, self.project_in, self.project_out, self.channel_first)

        def indices_to_codes(self, indices):
            """Decode indices [..., C] to the output, float32."""
            return _decode(self._core(), indices, self.project_out, self.channel_first)

    class NNXResidualFSQ(nnx.Module):
        """Flax NNX `fsq_ref.layers.ResidualFSQ`, with nnx.Linear projections; as the linen `ResidualFSQ`, except
        that quantize dropout is on while the `deterministic` attribute is False (`model.train()`, the default) and
        its keys come from the "dropout" stream of `rngs` (the default stream where it has none)."""

        def __init__(self, levels, num_stages: int, dim: int | None = None, *, quantize_dropout: bool = False,
                     deterministic: bool = False, rngs: nnx.Rngs | None = None):
            self.levels, self.num_stages, self.dim = fsq.check_levels(levels), num_stages, dim
            self.quantize_dropout, self.deterministic = quantize_dropout, deterministic
            self.project_in, self.project_out = nnx_projections(self._core(), dim, rngs)
            self.rngs = rngs if quantize_dropout else None

        def _core(self):
            return _residual_core(self.levels, self.num_stages, self.quantize_dropout)

        def __call__(self, x, *, deterministic: bool | None = None):
            """(output [..., dim], indices int32 [..., N], metrics); `deterministic` overrides the attribute."""
            train = not (self.deterministic if deterministic is None else deterministic)
            key = None
            if train and self.quantize_dropout and self.num_stages > 1:
                if self.rngs is None:
                    raise InputError("quantize dropout draws how many stages each example keeps: pass "
                                     "rngs=nnx.Rngs(...) to the constructor, or call with deterministic=True")
                key = self.rngs.dropout()
            return _quantize(self._core(), x, self.dim, self.project_in, self.project_out, key=key, train=train)

        def indices_to_codes(self, indices):
            """Decode the indices of the first n stages, [..., n] (n <= N), to their output, float32."""
            return _decode(self._core(), indices, self.project_out)

    classes = {"FSQBottleneck": FSQBottleneck, "ResidualFSQ": ResidualFSQ, "NNXFSQBottleneck": NNXFSQBottleneck,
               "NNXResidualFSQ": NNXResidualFSQ}
    for name, cls in classes.items():
        cls.__qualname__ = name  # as if defined at the top of this module: clear reprs, picklable
    return classes
