"""Training the image tokenizer (`tokenizer.Tokenizer`) as a task for the shared loop (`train.run`), measuring it,
encoding whole datasets to token files, and loading a trained one.

Legend: B batch, H W image size, C image channels, h w token grid, K codebook size.
"""

from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, UInt8

from fsq_ref import fsq, vq
from fsq_ref.common.errors import InputError
from fsq_ref.data import datasets, tokens
from fsq_ref.data.images import grid, save_png, to_unit
from fsq_ref.evaluation import metrics
from fsq_ref.tokenizer import Tokenizer, TokenizerConfig, decode, encode, reconstruct
from fsq_ref.training import checkpoint, precision, train


class TrainState(eqx.Module):
    """Everything that changes during training, as one pytree: what a checkpoint saves."""

    model: Tokenizer
    opt_state: optax.OptState
    qstate: vq.VQState | None


def init_train_state(config: TokenizerConfig, weight_decay: float, *, key: PRNGKeyArray) -> TrainState:
    model_key, state_key = jr.split(key)
    model = Tokenizer(config, key=model_key)
    opt_state = train.optimizer(weight_decay).init(eqx.filter(model, eqx.is_array))
    return TrainState(model, opt_state, model.quantizer.init_state(key=state_key))


def make_step(weight_decay: float, dtype: str = "float32"):
    """The jitted training step: (state, uint8 images, key, learning rate) -> (state, metrics, code histogram).

    The network computes in `dtype` (`precision`); parameters, optimiser and quantizer state stay float32.
    """
    opt = train.optimizer(weight_decay)
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
        model, opt_state = train.apply_updates(opt, grads, state.opt_state, state.model, lr)
        diagnostics, hist = train.quantizer_outputs(q, model.quantizer.codebook_size)
        return TrainState(model, opt_state, qstate), {"loss": loss, "mse": mse, **diagnostics}, hist

    return step


def reconstruct_all(model: Tokenizer, qstate, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """uint8 reconstructions [N, H, W, C] of uint8 images, in padded batches of one size (one compilation)."""
    return np.concatenate([np.asarray(reconstruct(model, qstate, images[idx])[0])[:n]
                           for idx, n in datasets.pass_indices(len(images), batch_size)])


def decode_all(model: Tokenizer, qstate, indices: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """uint8 images [N, H, W, C] of token grids [N, h, w], in padded batches of one size."""
    return np.concatenate([np.asarray(decode(model, qstate, indices[idx]))[:n]
                           for idx, n in datasets.pass_indices(len(indices), batch_size)])


def encode_dataset(model: Tokenizer, qstate, fingerprint: str, ds: datasets.Dataset,
                   batch_size: int = 500) -> tokens.TokenFile:
    """The token file of every image of `ds` (with its labels, if any), made by the tokenizer whose checkpoint has
    `fingerprint`, so that decoding with another tokenizer is caught."""
    chunks, labels = [], []
    for images, batch_labels, n in datasets.eval_batches(ds, batch_size):
        chunks.append(np.asarray(encode(model, qstate, images))[:n])
        if batch_labels is not None:
            labels.append(batch_labels[:n])
    q = model.quantizer
    return tokens.TokenFile(np.concatenate(chunks), q.codebook_size, fingerprint,
                            labels=np.concatenate(labels) if labels else None,
                            num_classes=ds.num_classes if labels else None,
                            levels=q.levels if isinstance(q, fsq.FSQ) else None)


def evaluate(model: Tokenizer, qstate, ds: datasets.Dataset, batch_size: int = 500) -> dict[str, float]:
    """Reconstruction L1, MSE and PSNR (pixels in [0, 1], after rounding to uint8, i.e. the images a user gets) and
    codebook usage, perplexity and entropy over the whole of `ds`."""
    counter = metrics.CodeCounter(model.quantizer.codebook_size)
    sq_err = abs_err = 0.0
    for images, _, n in datasets.eval_batches(ds, batch_size):
        _, indices, mse, mae = reconstruct(model, qstate, images)
        counter.update(indices[:n])
        sq_err += float(jnp.sum(mse[:n]))
        abs_err += float(jnp.sum(mae[:n]))
    mse = sq_err / len(ds)
    return {"l1": abs_err / len(ds), "mse": mse, "psnr": metrics.psnr(mse), **counter.stats()}


def comparison_png(path, model: Tokenizer, qstate, ds: datasets.Dataset, count: int = 16, batch_size: int = 500) -> str:
    """A PNG of the first `count` images of `ds` above their reconstructions. It reconstructs the first batch that
    `evaluate` reconstructs, so the two share one compiled program (a batch of `count` would compile another, which
    costs more than the batch)."""
    images, _, _ = next(datasets.eval_batches(ds, batch_size))
    recon = np.asarray(reconstruct(model, qstate, images)[0])
    count = min(count, len(ds))
    return save_png(path, grid([images[:count], recon[:count]], scale=3))


class AutoencoderTask:
    """Training an autoencoder with `train.run`."""

    kind = "autoencoder"
    pictures = ("reconstructions.png",)

    def __init__(self, config: TokenizerConfig, train_ds: datasets.Dataset, eval_ds: datasets.Dataset, *,
                 batch_size: int, seed: int, weight_decay: float, data_header: dict, dtype: str = "float32"):
        if train_ds.image_shape != (config.autoencoder.image_size,) * 2 + (config.autoencoder.channels,):
            raise InputError(f"the data's images are {train_ds.image_shape} but the preset expects "
                             f"{config.autoencoder.image_size}x{config.autoencoder.image_size}x"
                             f"{config.autoencoder.channels}: pick a matching --preset or --image-size")
        self.config, self.train_ds, self.eval_ds = config, train_ds, eval_ds
        self.batch_size, self.seed, self.weight_decay = batch_size, seed, weight_decay
        self.header = {"tokenizer": config.to_dict(), "data": data_header}
        self.codebook_size = config.quantizer.size
        self.step = make_step(weight_decay, dtype)

    def init_state(self, key: PRNGKeyArray) -> TrainState:
        return init_train_state(self.config, self.weight_decay, key=key)

    def architecture(self, header: dict) -> dict:
        return {"tokenizer": header["tokenizer"]}  # the network and the quantizer

    def batches(self, start_step: int):
        return datasets.step_batches(len(self.train_ds), self.batch_size, self.seed, start_step,
                                 lambda idx: self.train_ds.get(idx)[0])

    def evaluate(self, state: TrainState, workdir: Path) -> dict:
        comparison_png(workdir / "reconstructions.png", state.model, state.qstate, self.eval_ds)
        return evaluate(state.model, state.qstate, self.eval_ds)


def make_task(config: TokenizerConfig, data_spec: str, data_dir: str | None, *, batch_size: int, seed: int,
              weight_decay: float, dtype: str = "float32") -> AutoencoderTask:
    """The task of training `config` on the train split of `data_spec`, evaluated on its test split; the checkpoint
    records the data (spec, folder, stored image shape), so that later commands default to it."""
    ae = config.autoencoder
    load = dict(data_dir=data_dir, image_size=ae.image_size, channels=ae.channels, seed=seed)
    train_ds, eval_ds = datasets.load(data_spec, "train", **load), datasets.load(data_spec, "test", **load)
    native = getattr(train_ds, "native_shape", None)
    data_header = {"spec": data_spec, "data_dir": data_dir, "image_shape": list(native) if native else None}
    return AutoencoderTask(config, train_ds, eval_ds, batch_size=batch_size, seed=seed, weight_decay=weight_decay,
                           data_header=data_header, dtype=dtype)


def load(workdir: str | Path) -> tuple[Tokenizer, object, dict]:
    """The trained tokenizer in `workdir`: (model, quantizer state, checkpoint header)."""
    def init(header, key):
        config = TokenizerConfig.from_dict(header["task"]["tokenizer"])
        return init_train_state(config, header["loop"]["weight_decay"], key=key)

    header, state = checkpoint.load_run(workdir, "autoencoder", init)
    return state.model, state.qstate, header
