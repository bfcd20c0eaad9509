"""The contract every quantizer keeps, and the choice of quantizer from a few options.

A model never asks which quantizer it holds. FSQ (`fsq.FSQ`) and VQ (`vq.VQ`) are called the same way,

    state = q.init_state(key=key)                       # None for FSQ and gradient-trained VQ
    (codes, indices, loss, metrics), state = q(z, state, key=key, train=True)
    codes = q.indices_to_codes(indices, state)

and expose `dim` (the latent channels they take) and `codebook_size`. `QuantizerConfig` names one of the paper's
bottlenecks in a form that a checkpoint header can record; `from_options` turns command-line options into one.

Legend: D latent channels, K codebook size, "..." any leading (batch, grid) axes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Literal, NamedTuple

from jaxtyping import Array, Float, Int, PRNGKeyArray

from fsq_ref.errors import InputError

if TYPE_CHECKING:
    from fsq_ref import fsq, vq


class Quantized(NamedTuple):
    """What every quantizer returns, so that a model can switch between them."""

    codes: Float[Array, "... D"]  # quantized latents with a straight-through gradient, in the input dtype
    indices: Int[Array, "..."]  # int32 codebook indices in [0, K)
    loss: Float[Array, ""]  # auxiliary loss to add to the training objective (0 for FSQ)
    metrics: dict[str, Array]  # scalar diagnostics for logging


Kind = Literal["fsq", "vq", "vq-entropy", "vq-split", "vq-nosplit"]
KINDS: tuple[str, ...] = Kind.__args__
DEFAULT_LEVELS = (8, 6, 5)  # the paper's levels for 2^8 codes
DEFAULT_VQ_SIZE = 256


@dataclasses.dataclass(frozen=True)
class QuantizerConfig:
    """Which quantizer sits in a bottleneck.

    kind: "fsq" (levels); "vq" (codebook + commitment loss, MaskGIT's VQ without its entropy term); "vq-entropy"
    (plus MaskGIT's entropy loss, weight 0.1); "vq-split" (UViM's stage-I VQ, big_vision's
    `models/proj/uvim/vit.py::Model.encode`: EMA dictionary, momentum 0.995, latents standardised per token,
    l2-normalised codewords, no commitment loss, dead codes split off the most used one when their discounted count
    falls under 0.1); "vq-nosplit" (the same without splitting: the paper's "VQ without splitting" ablation).
    """

    kind: Kind = "fsq"
    levels: tuple[int, ...] = DEFAULT_LEVELS  # FSQ only
    codebook_size: int = DEFAULT_VQ_SIZE  # VQ only (FSQ's is prod(levels))
    vq_dim: int = 16  # VQ codeword size

    def __post_init__(self):
        from fsq_ref import (
            fsq,  # here, not at the top: fsq.py and vq.py import `Quantized` from this module
        )

        if self.kind not in KINDS:
            raise InputError(f"unknown quantizer {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.kind == "fsq":
            object.__setattr__(self, "levels", fsq.check_levels(self.levels))

    @property
    def size(self) -> int:
        return math.prod(self.levels) if self.kind == "fsq" else self.codebook_size

    def describe(self) -> str:
        """One line for logs: 'fsq, levels [8, 6, 5] (240 codes)' or 'vq-split, 4096 codes'."""
        if self.kind == "fsq":
            return f"fsq, levels {list(self.levels)} ({self.size} codes)"
        return f"{self.kind}, {self.size} codes of {self.vq_dim} channels"

    def build(self, *, key: PRNGKeyArray) -> fsq.FSQ | vq.VQ:
        from fsq_ref import fsq, vq

        if self.kind == "fsq":
            return fsq.FSQ(self.levels)
        uvim = {"ema_decay": 0.995, "l2_normalize": True, "standardize": True, "commitment": 0.0}
        options = {
            "vq": {},
            "vq-entropy": {"entropy_weight": 0.1},
            "vq-split": {**uvim, "split_threshold": 0.1},
            "vq-nosplit": uvim,
        }[self.kind]
        return vq.VQ(self.codebook_size, self.vq_dim, key=key, **options)

    @classmethod
    def from_dict(cls, d: dict) -> QuantizerConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def from_options(kind: str, *, levels=None, codebook_size: int | None = None, vq_dim: int = 16,
                 default_levels: tuple[int, ...] = DEFAULT_LEVELS,
                 default_vq_size: int = DEFAULT_VQ_SIZE) -> QuantizerConfig:
    """The quantizer a user asked for with `--quantizer`, `--levels` and `--codebook-size`.

    FSQ takes explicit levels, or the paper's levels for a codebook size (`fsq.levels_for`), or `default_levels`;
    both given must agree. VQ takes a codebook size (default `default_vq_size`) and refuses levels.
    """
    from fsq_ref import fsq

    if kind == "fsq":
        if levels is None:
            levels = fsq.levels_for(codebook_size) if codebook_size else default_levels
        elif codebook_size is not None and fsq.codebook_size(levels) != codebook_size:
            raise InputError(f"--levels {list(levels)} give {fsq.codebook_size(levels)} codes, not --codebook-size "
                             f"{codebook_size}: give one of the two")
        return QuantizerConfig("fsq", levels=tuple(levels))
    if levels is not None:
        raise InputError("--levels is for FSQ; for VQ give --codebook-size")
    return QuantizerConfig(kind, codebook_size=codebook_size or default_vq_size, vq_dim=vq_dim)
