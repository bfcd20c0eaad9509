"""fsq-ref: Finite Scalar Quantization (Mentzer et al., ICLR 2024) in JAX + Equinox.

The quantizers are at the top level; the models, their training and the tools are in the submodules (see the README's
layout table).
"""

from importlib.metadata import PackageNotFoundError, version

from fsq_ref.fsq import (
    FSQ,
    codes_to_indices,
    implicit_codebook,
    indices_to_codes,
    levels_for,
    quantize,
    quantize_reference,
)
from fsq_ref.layers import FSQBottleneck, ResidualFSQ
from fsq_ref.quantizer_config import QuantizerConfig
from fsq_ref.quantizers import Quantized
from fsq_ref.vq import VQ

try:
    __version__ = version("fsq-ref")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["FSQ", "VQ", "FSQBottleneck", "ResidualFSQ", "Quantized", "QuantizerConfig", "codes_to_indices",
           "implicit_codebook", "indices_to_codes", "levels_for", "quantize", "quantize_reference", "__version__"]
