"""Every named network size, in one place: a table per model of frozen config instances, and `pick` to choose one.

The sizes that run on a CPU are for this project's data (28x28 Fashion-MNIST, 32x32 scenes); the `imagenet*` and
`paper` entries are the paper's networks, for a GPU or TPU. A MaskGIT size is completed with what its token file
knows (codebook size, classes, grid) by `maskgit`.
"""

import dataclasses

from fsq_ref.common.errors import InputError
from fsq_ref.maskgit import MaskGITConfig
from fsq_ref.nets import AutoencoderConfig
from fsq_ref.transformer import TransformerSize
from fsq_ref.uvim import LMConfig, OracleConfig

AUTOENCODER: dict[str, AutoencoderConfig] = {
    # For tests: compiles and runs in seconds on a CPU.
    "tiny": AutoencoderConfig(image_size=28, channels=1, base_filters=8, channel_multipliers=(1, 2, 2),
                              num_res_blocks=1),
    # Default for Fashion-MNIST on a small CPU: 28x28x1 -> 7x7 tokens. The multipliers are the first three of
    # MaskGIT's; the width is small because the convs at 28x28 dominate the cost (base 32 is ~6x slower per step).
    "fashion-mnist": AutoencoderConfig(image_size=28, channels=1, base_filters=16, channel_multipliers=(1, 1, 2),
                                       num_res_blocks=1),
    # The same network with one halving fewer: 14x14 tokens, four times as many per image (the codebook-size study's
    # check of whether a longer token sequence lets FSQ use more of a large codebook).
    "fashion-mnist-14x14": AutoencoderConfig(image_size=28, channels=1, base_filters=16, channel_multipliers=(1, 2),
                                             num_res_blocks=1),
    # MaskGIT's VQGAN (x16 downsampling): 8x8 tokens at 128 px (the paper's codebook-size study) ...
    "imagenet128": AutoencoderConfig(image_size=128, channels=3, base_filters=128, channel_multipliers=(1, 1, 2, 2, 4),
                                     num_res_blocks=2),
    # ... and 16x16 tokens at 256 px (the paper's MaskGIT results).
    "imagenet256": AutoencoderConfig(image_size=256, channels=3, base_filters=128, channel_multipliers=(1, 1, 2, 2, 4),
                                     num_res_blocks=2),
}

MASKGIT: dict[str, TransformerSize] = {
    # For tests: compiles and runs in seconds.
    "tiny": TransformerSize(dim=32, depth=2, num_heads=2, mlp_dim=64, dropout=0.0),
    # 7x7 Fashion-MNIST tokens on a small CPU (1.1M parameters with K=1000); a few minutes of training sees the data
    # about once, far from overfitting, so dropout would only slow learning down.
    "fashion-mnist": TransformerSize(dim=128, depth=4, num_heads=4, mlp_dim=512, dropout=0.0),
    # MaskGIT's transformer, as the FSQ paper trains it on ImageNet.
    "paper": TransformerSize(dim=768, depth=24, num_heads=16, mlp_dim=3072, dropout=0.1),
}

ORACLE: dict[str, OracleConfig] = {
    "tiny": OracleConfig(image_size=32, base_filters=8, channel_multipliers=(1, 2, 2, 2), num_res_blocks=1,
                         context_dim=8),
    # 32x32 images -> a 4x4 code (16 tokens of 12.1 bits with FSQ [7,5,5,5,5]).
    "quick": OracleConfig(image_size=32, base_filters=16, channel_multipliers=(1, 2, 2, 4), num_res_blocks=1,
                          context_dim=32),
    # The same width with one halving fewer: an 8x8 code (64 tokens), four times the tokens per image, so that a
    # 4375-code FSQ sees enough tokens to use most of its codebook (docs/uvim.md; the reference has 256 tokens).
    "quick-8x8": OracleConfig(image_size=32, base_filters=16, channel_multipliers=(1, 2, 4), num_res_blocks=1,
                              context_dim=32),
}

LM: dict[str, LMConfig] = {
    "tiny": LMConfig(patch_size=8, dim=32, encoder_depth=1, decoder_depth=1, num_heads=2, mlp_dim=64),
    "quick": LMConfig(patch_size=4, dim=128, encoder_depth=2, decoder_depth=2, num_heads=4, mlp_dim=256),
    # The same with both position tables starting from one sine-cosine table: on depth's FSQ stage II (1500 steps at
    # 3e-3) the held-out loss falls further (1.84 against 2.06 nats) but the RMSE does not (0.817 against 0.795).
    "quick-sincos": LMConfig(patch_size=4, dim=128, encoder_depth=2, decoder_depth=2, num_heads=4, mlp_dim=256,
                             positions="sincos"),
    # UViM's stage II: ViT-L/16 encoder and a 24-layer decoder of the same width, dropout 0.1 (512 px inputs).
    "paper": LMConfig(patch_size=16, dim=1024, encoder_depth=24, decoder_depth=24, num_heads=16, mlp_dim=4096,
                      dropout=0.1),
}


def pick(table: dict, name: str):
    """`table[name]`, or an `InputError` that lists the table's names."""
    if name not in table:
        raise InputError(f"unknown preset {name!r}: use one of {', '.join(table)}")
    return table[name]


def maskgit(name: str, *, codebook_size: int, num_classes: int, grid: tuple[int, int]) -> MaskGITConfig:
    """The MaskGIT of size `name` for a token file's codebook, classes and grid."""
    size = pick(MASKGIT, name)
    return MaskGITConfig(codebook_size, num_classes, tuple(grid), **dataclasses.asdict(size))
