"""The image tokenizer: encoder -> quantizer (FSQ or VQ) -> decoder, and its jitted training step.

This is the model of the paper's MaskGIT experiments (Section 4.1) at a size that trains on a CPU: the convolutional
autoencoder of `nets.py` with either quantizer in its bottleneck. Swapping FSQ for VQ is one config field; everything
else (network, optimiser, data, budget) stays the same, which is the comparison the paper makes.

The reconstruction loss is the mean squared error on images scaled to [-1, 1]. MaskGIT's tokenizer adds a perceptual
(LPIPS) loss and a GAN loss; both need pretrained or adversarial networks that this project cannot download, and
MSE is what PSNR, the figure we report, measures.

Legend: B batch, H W image size, C image channels, h w token grid, D latent channels, K codebook size.
"""

import dataclasses
from pathlib import Path
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, UInt8

from fsq_ref import checkpoint, data, fsq, metrics, precision, vq
from fsq_ref.errors import InputError
from fsq_ref.images import grid, save_png
from fsq_ref.nets import AUTOENCODER_PRESETS, Autoencoder, AutoencoderConfig
from fsq_ref.train import CHECKPOINT

QuantizerKind = Literal["fsq", "vq", "vq-entropy", "vq-split"]
QUANTIZER_KINDS: tuple[str, ...] = QuantizerKind.__args__


@dataclasses.dataclass(frozen=True)
class QuantizerConfig:
    """Which quantizer sits in the bottleneck.

    kind: "fsq" (levels); "vq" (codebook + commitment loss, MaskGIT's VQ without its entropy term); "vq-entropy"
    (plus MaskGIT's entropy loss, weight 0.1); "vq-split" (UViM: EMA dictionary, momentum 0.995, l2-normalised codes,
    dead codes split off the most used one when their discounted count falls under 0.1).
    """

    kind: QuantizerKind = "fsq"
    levels: tuple[int, ...] = (8, 6, 5)  # FSQ only
    codebook_size: int = 256  # VQ only (FSQ's is prod(levels))
    vq_dim: int = 16  # VQ codeword size

    def __post_init__(self):
        if self.kind not in QUANTIZER_KINDS:
            raise InputError(f"unknown quantizer {self.kind!r}: use one of {', '.join(QUANTIZER_KINDS)}")
        if self.kind == "fsq":
            object.__setattr__(self, "levels", fsq.check_levels(self.levels))

    @property
    def size(self) -> int:
        return fsq.codebook_size(self.levels) if self.kind == "fsq" else self.codebook_size

    def build(self, *, key: PRNGKeyArray) -> fsq.FSQ | vq.VQ:
        if self.kind == "fsq":
            return fsq.FSQ(self.levels)
        options = {
            "vq": {},
            "vq-entropy": {"entropy_weight": 0.1},
            "vq-split": {"ema_decay": 0.995, "split_threshold": 0.1, "l2_normalize": True},
        }[self.kind]
        return vq.VQ(self.codebook_size, self.vq_dim, key=key, **options)


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    autoencoder: AutoencoderConfig
    quantizer: QuantizerConfig

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        ae = {k: tuple(v) if isinstance(v, list) else v for k, v in d["autoencoder"].items()}
        q = {k: tuple(v) if isinstance(v, list) else v for k, v in d["quantizer"].items()}
        return cls(AutoencoderConfig(**ae), QuantizerConfig(**q))


def preset(name: str) -> AutoencoderConfig:
    if name not in AUTOENCODER_PRESETS:
        raise InputError(f"unknown preset {name!r}: use one of {', '.join(AUTOENCODER_PRESETS)}")
    return AUTOENCODER_PRESETS[name]


def to_unit(images: UInt8[Array, "B H W C"]) -> Float[Array, "B H W C"]:
    """uint8 pixels -> float32 in [-1, 1], the range the networks work in."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(x: Float[Array, "B H W C"]) -> UInt8[Array, "B H W C"]:
    """[-1, 1] floats -> uint8 pixels, rounded (not truncated) and clipped."""
    return jnp.round(jnp.clip((x + 1.0) * 127.5, 0.0, 255.0)).astype(jnp.uint8)


class Tokenizer(eqx.Module):
    autoencoder: Autoencoder
    quantizer: fsq.FSQ | vq.VQ

    def __init__(self, config: TokenizerConfig, *, key: PRNGKeyArray):
        ae_key, q_key = jr.split(key)
        self.quantizer = config.quantizer.build(key=q_key)
        self.autoencoder = Autoencoder(config.autoencoder, self.quantizer.dim, key=ae_key)

    def __call__(self, x: Float[Array, "B H W C"], qstate, *, key: PRNGKeyArray | None = None, train: bool = False):
        """Reconstruct a batch: returns (reconstruction [B, H, W, C], fsq.Quantized, new quantizer state)."""
        z = jax.vmap(self.autoencoder.encode)(x)
        q, qstate = self.quantizer(z, qstate, key=key, train=train)
        return jax.vmap(self.autoencoder.decode)(q.codes), q, qstate

    def encode(self, x: Float[Array, "B H W C"], qstate) -> Int[Array, "B h w"]:
        z = jax.vmap(self.autoencoder.encode)(x)
        return self.quantizer(z, qstate)[0].indices

    def decode(self, indices: Int[Array, "B h w"], qstate) -> Float[Array, "B H W C"]:
        return jax.vmap(self.autoencoder.decode)(self.quantizer.indices_to_codes(indices, qstate))


def init_qstate(model: Tokenizer, *, key: PRNGKeyArray):
    q = model.quantizer
    return q.init_state(key=key) if isinstance(q, vq.VQ) else q.init_state()


def optimizer(weight_decay: float) -> optax.GradientTransformation:
    """AdamW without its learning rate: the step scales the update by a learning rate passed in as an array, so that
    the schedule (`train.learning_rate`, whose length may be fixed only once a time budget is known) never forces a
    recompile."""
    return optax.chain(optax.scale_by_adam(b1=0.9, b2=0.99), optax.add_decayed_weights(weight_decay))


class TrainState(eqx.Module):
    """Everything that changes during training, as one pytree: what a checkpoint saves."""

    model: Tokenizer
    opt_state: optax.OptState
    qstate: vq.VQState | None


def init_train_state(config: TokenizerConfig, weight_decay: float, *, key: PRNGKeyArray) -> TrainState:
    model_key, state_key = jr.split(key)
    model = Tokenizer(config, key=model_key)
    opt_state = optimizer(weight_decay).init(eqx.filter(model, eqx.is_array))
    return TrainState(model, opt_state, init_qstate(model, key=state_key))


def make_step(weight_decay: float, dtype: str = "float32"):
    """The jitted training step: (state, uint8 images, key, learning rate) -> (state, metrics, code histogram).

    The network computes in `dtype` (`precision`); parameters, optimiser and quantizer state stay float32.
    """
    opt = optimizer(weight_decay)
    compute = precision.compute_dtype(dtype)

    # Every input is consumed by the step: donating them lets XLA update the parameters in place.
    @eqx.filter_jit(donate="all")
    def step(state: TrainState, images: UInt8[Array, "B H W C"], key: PRNGKeyArray, lr: Float[Array, ""]):
        x = to_unit(images)

        def loss_fn(model):
            model = precision.cast_network(model, compute)
            recon, q, qstate = model(precision.cast(x, compute), state.qstate, key=key, train=True)
            mse = jnp.mean((recon.astype(jnp.float32) - x) ** 2)
            return mse + q.loss, (mse, q, qstate)

        (loss, (mse, q, qstate)), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(state.model)
        # optax's bias correction mixes its int32 step count with floats; allow that here even when a caller (our
        # tests) makes dtype promotion strict everywhere else.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = opt.update(grads, state.opt_state, eqx.filter(state.model, eqx.is_array))
        model = eqx.apply_updates(state.model, jax.tree.map(lambda u: -lr * u, updates))
        stats = {"loss": loss, "mse": mse, **q.metrics}
        return TrainState(model, opt_state, qstate), stats, metrics.histogram(q.indices, model.quantizer.codebook_size)

    return step


@eqx.filter_jit
def reconstruct(model: Tokenizer, qstate, images: UInt8[Array, "B H W C"]):
    """uint8 images -> (uint8 reconstructions, indices [B, h, w], per-image squared and absolute errors in [0, 1])."""
    x = to_unit(images)
    recon, q, _ = model(x, qstate)
    recon = to_uint8(recon)
    diff = (recon.astype(jnp.float32) - images.astype(jnp.float32)) / 255.0
    return recon, q.indices, jnp.mean(diff**2, axis=(1, 2, 3)), jnp.mean(jnp.abs(diff), axis=(1, 2, 3))


def reconstruct_all(model: Tokenizer, qstate, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """uint8 reconstructions [N, H, W, C] of uint8 images, in batches padded to one size (one compilation)."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        out.append(np.asarray(reconstruct(model, qstate, data.pad_to(batch, batch_size))[0])[:len(batch)])
    return np.concatenate(out)


@eqx.filter_jit
def encode(model: Tokenizer, qstate, images: UInt8[Array, "B H W C"]) -> Int[Array, "B h w"]:
    return model.encode(to_unit(images), qstate)


@eqx.filter_jit
def decode(model: Tokenizer, qstate, indices: Int[Array, "B h w"]) -> UInt8[Array, "B H W C"]:
    return to_uint8(model.decode(indices, qstate))


def evaluate(model: Tokenizer, qstate, ds: data.Dataset, batch_size: int = 500) -> dict[str, float]:
    """Reconstruction L1, MSE and PSNR (pixels in [0, 1], after rounding to uint8, i.e. the images a user gets) and
    codebook usage, perplexity and entropy over the whole of `ds`."""
    counter = metrics.CodeCounter(model.quantizer.codebook_size)
    sq_err = abs_err = 0.0
    for images, _ in data.eval_batches(ds, batch_size):
        n = len(images)
        _, indices, mse, mae = reconstruct(model, qstate, data.pad_to(images, batch_size))
        counter.update(indices[:n])
        sq_err += float(jnp.sum(mse[:n]))
        abs_err += float(jnp.sum(mae[:n]))
    mse = sq_err / len(ds)
    return {"l1": abs_err / len(ds), "mse": mse, "psnr": metrics.psnr(mse), **counter.stats()}


def comparison_png(path, model: Tokenizer, qstate, ds: data.Dataset, count: int = 16) -> str:
    """A PNG of the first `count` images of `ds` above their reconstructions."""
    images, _ = ds.get(np.arange(min(count, len(ds))))
    recon = np.asarray(reconstruct(model, qstate, images)[0])
    return save_png(path, grid([images, recon], scale=3))


class AutoencoderTask:
    """Training an autoencoder with `train.run`."""

    kind = "autoencoder"

    def __init__(self, config: TokenizerConfig, train_ds: data.Dataset, eval_ds: data.Dataset, *, batch_size: int,
                 seed: int, weight_decay: float, data_header: dict, dtype: str = "float32"):
        if train_ds.image_shape != (config.autoencoder.image_size,) * 2 + (config.autoencoder.channels,):
            raise InputError(f"the data's images are {train_ds.image_shape} but the preset expects "
                             f"{config.autoencoder.image_size}x{config.autoencoder.image_size}x"
                             f"{config.autoencoder.channels}: pick a matching --preset or --image-size")
        self.config, self.train_ds, self.eval_ds = config, train_ds, eval_ds
        self.batch_size, self.seed, self.weight_decay = batch_size, seed, weight_decay
        self.header = {"tokenizer": dataclasses.asdict(config), "data": data_header}
        self.codebook_size = config.quantizer.size
        self.step_fn = make_step(weight_decay, dtype)

    def init_state(self, key: PRNGKeyArray) -> TrainState:
        return init_train_state(self.config, self.weight_decay, key=key)

    def step(self, state: TrainState, batch, key, lr):
        return self.step_fn(state, batch, key, lr)

    def batches(self, start_step: int):
        for images, _ in data.iterate(self.train_ds, self.batch_size, seed=self.seed, start_step=start_step):
            yield images

    def evaluate(self, state: TrainState, workdir: Path) -> dict:
        comparison_png(workdir / "reconstructions.png", state.model, state.qstate, self.eval_ds)
        return evaluate(state.model, state.qstate, self.eval_ds)


def load(workdir: str | Path) -> tuple[Tokenizer, object, dict]:
    """The trained tokenizer in `workdir`: (model, quantizer state, checkpoint header)."""
    path = Path(workdir) / CHECKPOINT
    header = checkpoint.read_header(path)
    if header.get("kind") != "autoencoder":
        raise InputError(f"{path} holds a {header.get('kind')} model, not a tokenizer: point --workdir at the "
                         "folder of `fsq train autoencoder`")
    config = TokenizerConfig.from_dict(header["task"]["tokenizer"])
    # The structure (shapes and dtypes) of the saved state, without computing an initialisation.
    like = eqx.filter_eval_shape(init_train_state, config, header["loop"]["weight_decay"], key=jr.key(0))
    _, state = checkpoint.load(path, like)
    return state.model, state.qstate, header
