"""The image tokenizer: encoder -> quantizer (FSQ or VQ) -> decoder (its training is `training.tokenizer_train`).

This is the model of the paper's MaskGIT experiments (Section 4) at a size that trains on a CPU: the convolutional
autoencoder of `nets.py` with either quantizer in its bottleneck. Swapping FSQ for VQ is one config field; everything
else (network, optimiser, data, budget) stays the same, which is the comparison the paper makes.

The reconstruction loss is the mean squared error on images scaled to [-1, 1]. MaskGIT's tokenizer adds a perceptual
(LPIPS) loss and a GAN loss; both need pretrained or adversarial networks that this project cannot download, and
MSE is what PSNR, the figure we report, measures.

Legend: B batch, H W image size, C image channels, h w token grid, D latent channels, K codebook size.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray, UInt8

from fsq_ref import fsq, vq
from fsq_ref.common.errors import from_record
from fsq_ref.data.images import to_uint8, to_unit
from fsq_ref.nets import Autoencoder, AutoencoderConfig
from fsq_ref.quantizer_config import QuantizerConfig


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    autoencoder: AutoencoderConfig
    quantizer: QuantizerConfig

    def to_dict(self) -> dict:
        return {"autoencoder": dataclasses.asdict(self.autoencoder), "quantizer": self.quantizer.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        ae = {k: tuple(v) if isinstance(v, list) else v for k, v in d["autoencoder"].items()}
        return cls(from_record(AutoencoderConfig, ae), QuantizerConfig.from_dict(d["quantizer"]))


class Tokenizer(eqx.Module):
    autoencoder: Autoencoder
    quantizer: fsq.FSQ | vq.VQ

    def __init__(self, config: TokenizerConfig, *, key: PRNGKeyArray):
        ae_key, q_key = jr.split(key)
        self.quantizer = config.quantizer.build(key=q_key)
        self.autoencoder = Autoencoder(config.autoencoder, self.quantizer.dim, key=ae_key)

    def __call__(self, x: Float[Array, "B H W C"], qstate, *, key: PRNGKeyArray | None = None, train: bool = False):
        """Reconstruct a batch: returns (reconstruction [B, H, W, C], quantizers.Quantized, new quantizer state)."""
        z = jax.vmap(self.autoencoder.encode)(x)
        q, qstate = self.quantizer(z, qstate, key=key, train=train)
        return jax.vmap(self.autoencoder.decode)(q.codes), q, qstate

    def encode(self, x: Float[Array, "B H W C"], qstate) -> Int[Array, "B h w"]:
        z = jax.vmap(self.autoencoder.encode)(x)
        return self.quantizer(z, qstate)[0].indices

    def decode(self, indices: Int[Array, "B h w"], qstate) -> Float[Array, "B H W C"]:
        return jax.vmap(self.autoencoder.decode)(self.quantizer.indices_to_codes(indices, qstate))


@eqx.filter_jit
def reconstruct(model: Tokenizer, qstate, images: UInt8[Array, "B H W C"]):
    """uint8 images -> (uint8 reconstructions, indices [B, h, w], per-image squared and absolute errors in [0, 1])."""
    x = to_unit(images)
    recon, q, _ = model(x, qstate)
    recon = to_uint8(recon)
    diff = (recon.astype(jnp.float32) - images.astype(jnp.float32)) / 255.0
    return recon, q.indices, jnp.mean(diff**2, axis=(1, 2, 3)), jnp.mean(jnp.abs(diff), axis=(1, 2, 3))


@eqx.filter_jit
def encode(model: Tokenizer, qstate, images: UInt8[Array, "B H W C"]) -> Int[Array, "B h w"]:
    return model.encode(to_unit(images), qstate)


@eqx.filter_jit
def decode(model: Tokenizer, qstate, indices: Int[Array, "B h w"]) -> UInt8[Array, "B H W C"]:
    return to_uint8(model.decode(indices, qstate))
