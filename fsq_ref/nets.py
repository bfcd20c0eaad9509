"""The convolutional autoencoder around the quantizer (the transformers are in `transformer`).

The autoencoder follows MaskGIT's VQGAN tokenizer, which the FSQ paper keeps for its MaskGIT experiments and only
swaps the quantizer in: residual blocks with GroupNorm and swish, channel multipliers per resolution level, and a
final 1x1 convolution to the quantizer's dimension `D` (`len(levels)` for FSQ). The quantizer itself is not part of
it; training composes `encode -> quantize -> decode`.

Every module here works on ONE example, channels last; callers `jax.vmap` over the batch. Inside, the arrays are
channel-first, the layout `eqx.nn.Conv2d` and `eqx.nn.GroupNorm` expect.

Dimension letters:
    H W   image height and width          h w   token grid (H and W divided by the downsampling factor)
    C     image channels                  Cin Cout   feature channels into / out of a conv block (channel-first)
    D     latent channels (the quantizer's dimension)
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from fsq_ref.common.errors import InputError


def _num_groups(channels: int) -> int:
    """The largest divisor of `channels` that is at most 32 (GroupNorm needs groups to divide channels)."""
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)


class ResBlock(eqx.Module):
    """GroupNorm -> swish -> 3x3 conv, twice, plus a skip path (a 1x1 conv when the channel count changes).

    Channel-first, like the equinox layers inside it; `Encoder` and `Decoder` transpose at their boundaries.
    """

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None

    def __init__(self, in_ch: int, out_ch: int, *, key: PRNGKeyArray):
        conv1_key, conv2_key, skip_key = jr.split(key, 3)
        self.norm1 = eqx.nn.GroupNorm(_num_groups(in_ch), in_ch)
        self.conv1 = eqx.nn.Conv2d(in_ch, out_ch, 3, padding=1, key=conv1_key)
        self.norm2 = eqx.nn.GroupNorm(_num_groups(out_ch), out_ch)
        self.conv2 = eqx.nn.Conv2d(out_ch, out_ch, 3, padding=1, key=conv2_key)
        self.skip = eqx.nn.Conv2d(in_ch, out_ch, 1, key=skip_key) if in_ch != out_ch else None

    def __call__(self, x: Float[Array, "Cin H W"]) -> Float[Array, "Cout H W"]:
        y = self.conv1(jax.nn.swish(self.norm1(x)))
        y = self.conv2(jax.nn.swish(self.norm2(y)))
        return y + (x if self.skip is None else self.skip(x))


def _downsample(x: Float[Array, "Cin H W"]) -> Float[Array, "Cin H//2 W//2"]:
    # 2x2 average pooling, as MaskGIT's tokenizer does by default (a strided conv is its off-by-default option): no
    # parameters and no extra compute, so all learning happens in the ResBlocks, and each output is an even mix of the
    # four inputs beneath it rather than a sample that could alias.
    c, h, w = x.shape
    return x.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def _upsample(x: Float[Array, "Cin H W"]) -> Float[Array, "Cin 2*H 2*W"]:
    # Nearest neighbour, then (in the caller) a 3x3 conv that smooths it: no transposed conv, no checkerboard artefacts.
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Encoder(eqx.Module):
    """Image -> latent grid: stem conv, ResBlocks per level with 2x average pooling between levels, then a 1x1 conv."""

    stem: eqx.nn.Conv2d
    levels: list[list[ResBlock]]
    bottom: list[ResBlock]
    norm: eqx.nn.GroupNorm
    head: eqx.nn.Conv2d
    downsample: int = eqx.field(static=True)

    def __init__(
        self,
        *,
        in_channels: int,
        base_filters: int,
        channel_multipliers: tuple[int, ...],
        num_res_blocks: int,
        out_dim: int,
        key: PRNGKeyArray,
    ):
        stem_key, levels_key, bottom_key, head_key = jr.split(key, 4)
        self.stem = eqx.nn.Conv2d(in_channels, base_filters, 3, padding=1, key=stem_key)
        self.levels = []
        ch = base_filters
        for level_key, mult in zip(jr.split(levels_key, len(channel_multipliers)), channel_multipliers):
            blocks = []
            for block_key in jr.split(level_key, num_res_blocks):
                blocks.append(ResBlock(ch, base_filters * mult, key=block_key))
                ch = base_filters * mult
            self.levels.append(blocks)
        self.bottom = [ResBlock(ch, ch, key=k) for k in jr.split(bottom_key, num_res_blocks)]
        self.norm = eqx.nn.GroupNorm(_num_groups(ch), ch)
        self.head = eqx.nn.Conv2d(ch, out_dim, 1, key=head_key)
        self.downsample = 2 ** (len(channel_multipliers) - 1)

    def __call__(self, x: Float[Array, "H W C"]) -> Float[Array, "h w D"]:
        """Encode one image in [-1, 1] to its latent grid (H and W must be multiples of `downsample`)."""
        height, width, _ = x.shape
        if height % self.downsample or width % self.downsample:
            raise InputError(
                f"image size {height}x{width} is not divisible by the encoder's downsampling factor {self.downsample}; "
                "resize or crop the images, or use fewer channel multipliers"
            )
        x = self.stem(jnp.moveaxis(x, -1, 0))
        for i, blocks in enumerate(self.levels):
            if i > 0:
                x = _downsample(x)
            for block in blocks:
                x = block(x)
        for block in self.bottom:
            x = block(x)
        x = self.head(jax.nn.swish(self.norm(x)))
        return jnp.moveaxis(x, 0, -1)


class Decoder(eqx.Module):
    """Latent grid -> image: the encoder's mirror, with nearest-neighbour upsampling + 3x3 conv between levels."""

    stem: eqx.nn.Conv2d
    bottom: list[ResBlock]
    levels: list[list[ResBlock]]
    upsamples: list[eqx.nn.Conv2d]
    norm: eqx.nn.GroupNorm
    head: eqx.nn.Conv2d

    def __init__(
        self,
        *,
        in_dim: int,
        base_filters: int,
        channel_multipliers: tuple[int, ...],
        num_res_blocks: int,
        out_channels: int,
        key: PRNGKeyArray,
    ):
        stem_key, bottom_key, levels_key, up_key, head_key = jr.split(key, 5)
        ch = base_filters * channel_multipliers[-1]
        self.stem = eqx.nn.Conv2d(in_dim, ch, 3, padding=1, key=stem_key)
        self.bottom = [ResBlock(ch, ch, key=k) for k in jr.split(bottom_key, num_res_blocks)]
        # Levels run from the coarsest to the finest, so the multipliers are read in reverse.
        self.levels, self.upsamples = [], []
        level_keys = jr.split(levels_key, len(channel_multipliers))
        up_keys = jr.split(up_key, len(channel_multipliers) - 1)
        for i, (level_key, mult) in enumerate(zip(level_keys, channel_multipliers[::-1])):
            blocks = []
            for block_key in jr.split(level_key, num_res_blocks):
                blocks.append(ResBlock(ch, base_filters * mult, key=block_key))
                ch = base_filters * mult
            self.levels.append(blocks)
            if i < len(up_keys):
                self.upsamples.append(eqx.nn.Conv2d(ch, ch, 3, padding=1, key=up_keys[i]))
        self.norm = eqx.nn.GroupNorm(_num_groups(ch), ch)
        self.head = eqx.nn.Conv2d(ch, out_channels, 3, padding=1, key=head_key)

    def __call__(self, z: Float[Array, "h w D"]) -> Float[Array, "H W C"]:
        """Decode one latent grid to an image; unbounded, so the loss alone pulls it towards [-1, 1]."""
        x = self.stem(jnp.moveaxis(z, -1, 0))
        for block in self.bottom:
            x = block(x)
        for i, blocks in enumerate(self.levels):
            for block in blocks:
                x = block(x)
            if i < len(self.upsamples):
                x = self.upsamples[i](_upsample(x))
        x = self.head(jax.nn.swish(self.norm(x)))
        return jnp.moveaxis(x, 0, -1)


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """Sizes of the convolutional autoencoder; the latent dimension comes from the quantizer instead."""

    image_size: int
    channels: int
    base_filters: int
    channel_multipliers: tuple[int, ...]
    num_res_blocks: int

    def __post_init__(self):
        for name in ("image_size", "channels", "base_filters", "num_res_blocks"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not self.channel_multipliers or min(self.channel_multipliers) < 1:
            raise InputError(
                f"channel_multipliers must be a non-empty tuple of integers >= 1; got {self.channel_multipliers}"
            )
        if self.image_size % self.downsample:
            raise InputError(
                f"image_size {self.image_size} is not divisible by the downsampling factor {self.downsample} "
                f"(2 ** (len(channel_multipliers) - 1)); pick an image size that is, or fewer channel multipliers"
            )

    @property
    def downsample(self) -> int:
        """How many pixels along each side one token covers: one 2x pooling between consecutive levels."""
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def token_grid(self) -> int:
        """Side length `h = w` of the token grid."""
        return self.image_size // self.downsample


class Autoencoder(eqx.Module):
    """Encoder and decoder of one config; the quantizer sits between `encode` and `decode`, outside this module."""

    encoder: Encoder
    decoder: Decoder

    def __init__(self, config: AutoencoderConfig, latent_dim: int, *, key: PRNGKeyArray):
        if latent_dim < 1:
            raise InputError(f"latent_dim must be >= 1 (for FSQ, len(levels)); got {latent_dim}")
        enc_key, dec_key = jr.split(key)
        sizes = dict(
            base_filters=config.base_filters,
            channel_multipliers=config.channel_multipliers,
            num_res_blocks=config.num_res_blocks,
        )
        self.encoder = Encoder(in_channels=config.channels, out_dim=latent_dim, key=enc_key, **sizes)
        self.decoder = Decoder(in_dim=latent_dim, out_channels=config.channels, key=dec_key, **sizes)

    def encode(self, x: Float[Array, "H W C"]) -> Float[Array, "h w D"]:
        return self.encoder(x)

    def decode(self, z: Float[Array, "h w D"]) -> Float[Array, "H W C"]:
        return self.decoder(z)
