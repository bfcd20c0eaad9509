"""Which quantizer sits in a bottleneck: the paper's bottlenecks by name, and the choice of one from a few options.

`QuantizerConfig` names one of them in a form that a checkpoint header can record and `build` makes it;
`from_options` turns the command line's `--quantizer`, `--levels` and `--codebook-size` into one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from jaxtyping import PRNGKeyArray

from fsq_ref import fsq, layers, vq
from fsq_ref.common.errors import InputError, from_record

Kind = Literal["fsq", "vq", "vq-entropy", "vq-split", "vq-nosplit"]
KINDS: tuple[str, ...] = Kind.__args__
DEFAULT_LEVELS = (8, 6, 5)  # the paper's levels for 2^8 codes
DEFAULT_VQ_SIZE = 256


@dataclasses.dataclass(frozen=True)
class QuantizerConfig:
    """Which quantizer sits in a bottleneck.

    kind: "fsq" (levels); "vq" (codebook + commitment loss, MaskGIT's VQ without its entropy term); "vq-entropy"
    (plus MaskGIT's entropy loss, weight 0.1); "vq-split" (UViM's stage-I VQ, big_vision's
    `models/proj/uvim/vit.py::Model.encode`: EMA dictionary, momentum `ema_decay` (UViM's 0.995; `vq.scaled_decay`
    gives a shorter run the same dynamics as a fraction of training), latents standardised per token,
    l2-normalised codewords, no commitment loss, dead codes split off the most used one when their discounted count
    falls under 0.1); "vq-nosplit" (the same without splitting: the paper's "VQ without splitting" ablation).

    FSQ also takes `codebooks` C > 1 (`layers.FSQBottleneck`: C codes per position) or `stages` N > 1
    (`layers.ResidualFSQ`); either gives indices with a last axis of C or N. A header records them only when they
    are not 1 (`to_dict`), so that run folders written before they existed read and resume as before.
    """

    kind: Kind = "fsq"
    levels: tuple[int, ...] = DEFAULT_LEVELS  # FSQ only
    codebook_size: int = DEFAULT_VQ_SIZE  # VQ only (FSQ's is prod(levels))
    vq_dim: int = 16  # VQ codeword size
    codebooks: int = 1  # FSQ only: codes per position
    stages: int = 1  # FSQ only: residual stages
    ema_decay: float = vq.UVIM_DECAY  # "vq-split" and "vq-nosplit" only: the EMA dictionary's decay per step

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"unknown quantizer {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.kind == "fsq":
            object.__setattr__(self, "levels", fsq.check_levels(self.levels))
        if min(self.codebooks, self.stages) < 1 or (self.codebooks > 1 and self.stages > 1):
            raise InputError(f"give --codebooks or --stages (each >= 1), not both above 1; got {self.codebooks} "
                             f"codebooks and {self.stages} stages")
        if self.kind != "fsq" and self.codebooks * self.stages > 1:
            raise InputError("--codebooks and --stages are for FSQ; leave them out for VQ")
        if not 0.0 < self.ema_decay < 1.0:
            raise InputError(f"the EMA dictionary's decay must be in (0, 1); got {self.ema_decay}")

    @property
    def indices_per_position(self) -> int:
        return self.codebooks * self.stages

    @property
    def size(self) -> int:
        return math.prod(self.levels) if self.kind == "fsq" else self.codebook_size

    def describe(self) -> str:
        """One line for logs: 'fsq, levels [8, 6, 5] (240 codes)' or 'vq-split, 4096 codes of 16 channels'."""
        if self.kind == "fsq":
            many = f", {self.codebooks} codebooks" if self.codebooks > 1 else ""
            many += f", {self.stages} residual stages" if self.stages > 1 else ""
            return f"fsq, levels {list(self.levels)} ({self.size} codes){many}"
        decay = f", EMA decay {self.ema_decay:.4g}" if self.kind in ("vq-split", "vq-nosplit") else ""
        return f"{self.kind}, {self.size} codes of {self.vq_dim} channels{decay}"

    def build(self, *, key: PRNGKeyArray) -> fsq.FSQ | layers.FSQBottleneck | layers.ResidualFSQ | vq.VQ:
        if self.kind == "fsq" and self.stages > 1:
            return layers.ResidualFSQ(self.levels, self.stages)
        if self.kind == "fsq" and self.codebooks > 1:
            return layers.FSQBottleneck(self.levels, num_codebooks=self.codebooks)
        if self.kind == "fsq":
            return fsq.FSQ(self.levels)
        uvim = {"ema_decay": self.ema_decay, "l2_normalize": True, "standardize": True, "commitment": 0.0}
        options = {
            "vq": {},
            "vq-entropy": {"entropy_weight": 0.1},
            "vq-split": {**uvim, "split_threshold": 0.1},
            "vq-nosplit": uvim,
        }[self.kind]
        return vq.VQ(self.codebook_size, self.vq_dim, key=key, **options)

    def to_dict(self) -> dict:
        """The config for a header: every field, less `codebooks`, `stages` and `ema_decay` at their defaults."""
        defaults = {"codebooks": 1, "stages": 1, "ema_decay": vq.UVIM_DECAY}
        return {k: v for k, v in dataclasses.asdict(self).items() if not (k in defaults and v == defaults[k])}

    @classmethod
    def from_dict(cls, d: dict) -> QuantizerConfig:
        return from_record(cls, {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def from_options(kind: str, *, levels=None, codebook_size: int | None = None, vq_dim: int = 16, codebooks: int = 1,
                 stages: int = 1, default_levels: tuple[int, ...] = DEFAULT_LEVELS,
                 default_vq_size: int = DEFAULT_VQ_SIZE) -> QuantizerConfig:
    """The quantizer a user asked for with `--quantizer`, `--levels`, `--codebook-size` (and, for a tokenizer,
    `--codebooks` and `--stages`).

    FSQ takes explicit levels, or the paper's levels for a codebook size (`fsq.levels_for`), or `default_levels`;
    both given must agree. VQ takes a codebook size (default `default_vq_size`) and refuses levels.
    """
    if kind == "fsq":
        if levels is None:
            levels = fsq.levels_for(codebook_size) if codebook_size else default_levels
        elif codebook_size is not None and fsq.codebook_size(levels) != codebook_size:
            raise InputError(f"--levels {list(levels)} give {fsq.codebook_size(levels)} codes, not --codebook-size "
                             f"{codebook_size}: give one of the two")
        return QuantizerConfig("fsq", levels=tuple(levels), codebooks=codebooks, stages=stages)
    if levels is not None:
        raise InputError("--levels is for FSQ; for VQ give --codebook-size")
    return QuantizerConfig(kind, codebook_size=codebook_size or default_vq_size, vq_dim=vq_dim, codebooks=codebooks,
                           stages=stages)
