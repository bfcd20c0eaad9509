"""Vector quantization (VQ-VAE), the baseline that FSQ is compared against, with the machinery FSQ removes.

A latent vector is replaced by its nearest codeword in a codebook of K vectors, with a straight-through gradient
(van den Oord et al., 2017). The options are those the FSQ paper's baselines used (paper Section 4;
docs/paper-notes.md):

- codebook loss ||sg(z) - e||^2 and commitment loss beta ||z - sg(e)||^2 (beta = 0.25), the codebook learned by
  gradient: the MaskGIT tokenizer's VQ;
- entropy loss (weight 0.1 in MaskGIT): each latent should pick one code confidently while the batch as a whole
  spreads over many codes;
- an EMA dictionary instead of the codebook loss, as in UViM: the state keeps discounted per-code counts and sums of
  the latents assigned to each code, and a codeword is their ratio;
- UViM's codebook splitting (needs the EMA dictionary): while some code's discounted count is below a threshold, it
  is replaced by a slightly perturbed copy of the most used code and the two share that code's count. Counts start
  at 1, so a code no latent picks first falls under UViM's threshold 0.1 after ln 0.1 / ln decay steps: 460 at
  UViM's decay 0.995, 5% of the 9294 steps of big_vision's NYU-depth stage I (200 epochs of 47,584 images at batch
  1024), and from then on splitting acts at every step. `scaled_decay` gives a run of another length the decay
  that puts the first split, and the dictionary's time constant 1 / (1 - decay), at the same fraction of training;
  at UViM's decay, a 600-step run would split only in its last quarter;
- normalisation: l2-normalised codewords, with latents either l2-normalised too or standardised per token (zero mean
  and unit variance over the channels, as `jax.nn.standardize`). UViM's stage I does the latter and trains without
  a commitment loss (`w_commitment` 0): follows big_vision's `models/proj/uvim/vit.py::Model.encode` and
  `::split_the_most_frequent_embedding` (`quantizer_config.QuantizerConfig` "vq-split"; "vq-nosplit" is the same without
  splitting, the paper's "VQ without splitting" ablation).

Codeword size: big_vision's UViM configs set `codeword_dim` 768, the width of their ViT (one codeword per ViT token).
Ours default to 16 channels (`QuantizerConfig.vq_dim`): our oracle is a small conv net whose widest layer has 64
channels, and the nearest-neighbour search costs `N*K*D`, so a 768-wide codeword would make VQ many times more
expensive than the network around it on a CPU; 16 channels still give standardisation enough channels to be
meaningful, and more than FSQ's 5 channels for the same ~4k codes.

State that changes in training (the EMA dictionary) is passed to `VQ.__call__` and returned, never mutated.

Legend: N latents, D channels, K codebook size, "..." any leading (batch, grid) axes.
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray

from fsq_ref.common.errors import InputError
from fsq_ref.quantizers import Quantized, usage_metrics


class VQState(NamedTuple):
    """The EMA dictionary: codeword k = sums[k] / counts[k]."""

    sums: Float[Array, "K D"]  # discounted sum of the latents assigned to each code
    counts: Float[Array, " K"]  # discounted number of latents assigned to each code


def _normalize(x: Float[Array, "... D"]) -> Float[Array, "... D"]:
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def standardize(x: Float[Array, "... D"]) -> Float[Array, "... D"]:
    """Zero mean and unit variance over the channels of each latent (`jax.nn.standardize` with its epsilon 1e-5)."""
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + 1e-5)


def nearest(x: Float[Array, "N D"], codebook: Float[Array, "K D"]) -> tuple[Int[Array, " N"], Float[Array, "N K"]]:
    """Index of the nearest codeword to each row of `x`, and all squared distances.

    ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2: one matrix product instead of an [N, K, D] difference tensor.
    """
    dist = (
        jnp.sum(x * x, axis=-1, keepdims=True)
        - 2.0 * x @ codebook.T
        + jnp.sum(codebook * codebook, axis=-1)
    )
    return jnp.argmin(dist, axis=-1).astype(jnp.int32), dist


def entropy_loss(logits: Float[Array, "N K"]) -> Float[Array, ""]:
    """Mean per-latent entropy of the code distribution minus the entropy of the batch-averaged distribution.

    Minimising it makes each assignment confident (low first term) while using many codes across the batch (high
    second term). `logits` are negative distances over a temperature (MaskGIT's VQ).
    """
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    probs = jnp.exp(log_probs)
    per_latent = -jnp.mean(jnp.sum(probs * log_probs, axis=-1))
    avg = jnp.mean(probs, axis=0)
    of_average = -jnp.sum(avg * jnp.log(avg + 1e-5))
    return per_latent - of_average


# The smallest discounted count `ema_update` lets a code decay to (see there). Far above float32's smallest normal
# number (1.2e-38), so a sum of `MIN_COUNT` times a codeword component stays exact for components down to ~1e-26.
MIN_COUNT = 1e-12


def ema_update(
    state: VQState, x: Float[Array, "N D"], indices: Int[Array, " N"], decay: float, axis_name: str | None = None
) -> VQState:
    """Discount the dictionary and add this batch's per-code counts and sums.

    The new codeword, (decay * sums + batch_sum) / (decay * counts + batch_count), is a convex combination of the old
    codeword and the mean of the latents assigned to it. Counts and sums are totals over the global batch: under
    `jax.jit` with a sharded batch the sums below already are; under `shard_map`/`pmap`, give the batch's
    `axis_name` and they are summed across devices, so every replica makes the same update.

    A code that no latent picks for a long time is discounted geometrically: at decay 0.995 its count would reach
    float32 zero after ~17k steps (XLA flushes subnormals) and its codeword would become 0/0 = NaN, which `argmin`
    then picks for every latent. So a code whose count would fall below `MIN_COUNT` is not discounted at all: its sum
    and count stay as they are, and so does its codeword, exactly. Its weight against new data is then at most
    `MIN_COUNT / decay`, so the first latents assigned to it again replace it as they would have without the floor.
    """
    K = state.counts.shape[0]
    one_hot = jax.nn.one_hot(indices, K, dtype=jnp.float32)  # [N, K]
    batch_counts = jnp.sum(one_hot, axis=0)
    batch_sums = one_hot.T @ jax.lax.stop_gradient(x)
    if axis_name is not None:
        batch_counts = jax.lax.psum(batch_counts, axis_name)
        batch_sums = jax.lax.psum(batch_sums, axis_name)
    discount = jnp.where(state.counts * decay < MIN_COUNT, 1.0, decay)
    return VQState(state.sums * discount[:, None] + batch_sums, state.counts * discount + batch_counts)


def split_dead_codes(state: VQState, threshold: float, key: PRNGKeyArray,
                     perturbation: float = 1e-3) -> tuple[VQState, Int[Array, ""]]:
    """Replace every code whose discounted count is below `threshold` by a perturbed copy of the most used code;
    returns the new state and the number of codes replaced.

    One code at a time: the least used code becomes the most used codeword times a factor drawn from
    U[1 - perturbation, 1 + perturbation] per channel, and the two share the most used code's count and sum (each
    halved), so the total mass is conserved and later batches pull the two copies apart. At most K splits, so the
    loop ends even if the total count could not lift every code above the threshold.
    """
    K = state.counts.shape[0]

    def needs_split(carry):
        (sums, counts), _, i = carry
        return jnp.any(counts < threshold) & (i < K)

    def split_once(carry):
        (sums, counts), key, i = carry
        key, sub = jr.split(key)
        hi, lo = jnp.argmax(counts), jnp.argmin(counts)
        factor = jr.uniform(sub, sums.shape[1:], jnp.float32, 1.0 - perturbation, 1.0 + perturbation)
        half_sum, half_count = sums[hi] / 2.0, counts[hi] / 2.0
        sums = sums.at[lo].set(half_sum * factor).at[hi].set(half_sum)
        counts = counts.at[lo].set(half_count).at[hi].set(half_count)
        return (sums, counts), key, i + 1

    (sums, counts), _, splits = jax.lax.while_loop(needs_split, split_once, (tuple(state), key, 0))
    return VQState(sums, counts), splits


UVIM_DECAY = 0.995  # big_vision's `dict_momentum`
UVIM_STEPS = 9294  # big_vision's NYU-depth stage I: 200 epochs of 47,584 images at batch 1024


def scaled_decay(steps: int) -> float:
    """The EMA decay that gives a run of `steps` steps UViM's dictionary dynamics as fractions of training: the
    same first split (5%) and time constant (2.2%) as decay 0.995 over big_vision's 9294 steps."""
    return UVIM_DECAY ** (UVIM_STEPS / steps)


class VQ(eqx.Module):
    """A vector quantizer with the calling shape of `fsq.FSQ`: `(Quantized, state) = vq(z, state, key=, train=)`.

    Without `ema_decay` the codebook is a parameter learned by the codebook loss and the state is None. With it, the
    dictionary lives in `VQState` (initialise with `init_state`) and `codebook` is None. `l2_normalize` normalises
    the codewords and the latents; `standardize` standardises the latents per token instead (UViM's stage I).
    """

    codebook: Float[Array, "K D"] | None
    codebook_size: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    commitment: float = eqx.field(static=True)
    entropy_weight: float = eqx.field(static=True)
    entropy_temperature: float = eqx.field(static=True)
    ema_decay: float | None = eqx.field(static=True)
    split_threshold: float | None = eqx.field(static=True)
    l2_normalize: bool = eqx.field(static=True)
    standardize: bool = eqx.field(static=True)
    axis_name: str | None = eqx.field(static=True)

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        *,
        commitment: float = 0.25,
        entropy_weight: float = 0.0,
        entropy_temperature: float = 0.01,
        ema_decay: float | None = None,
        split_threshold: float | None = None,
        l2_normalize: bool = False,
        standardize: bool = False,
        axis_name: str | None = None,
        key: PRNGKeyArray,
    ):
        if codebook_size < 2 or dim < 1:
            raise InputError(f"VQ needs codebook_size >= 2 and dim >= 1; got {codebook_size} and {dim}")
        if standardize and dim < 2:
            raise InputError(f"standardising a latent over its channels needs dim >= 2; got {dim}")
        if split_threshold is not None and ema_decay is None:
            raise InputError("codebook splitting works on the EMA dictionary: set ema_decay (UViM uses 0.995) too")
        self.codebook_size, self.dim = codebook_size, dim
        self.commitment, self.ema_decay, self.split_threshold = commitment, ema_decay, split_threshold
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        self.l2_normalize, self.standardize, self.axis_name = l2_normalize, standardize, axis_name
        # Variance 1/K, as MaskGIT's and UViM's dictionaries are initialised.
        limit = (3.0 / codebook_size) ** 0.5
        self.codebook = None if ema_decay else jr.uniform(key, (codebook_size, dim), jnp.float32, -limit, limit)

    def init_state(self, *, key: PRNGKeyArray | None = None) -> VQState | None:
        """The EMA dictionary with unit counts (None without EMA, which needs no key)."""
        if self.ema_decay is None:
            return None
        if key is None:
            raise InputError("this VQ keeps an EMA dictionary, initialised at random: pass init_state(key=...)")
        sums = jr.normal(key, (self.codebook_size, self.dim), jnp.float32) / self.codebook_size**0.5
        return VQState(sums, jnp.ones((self.codebook_size,), jnp.float32))

    def codewords(self, state: VQState | None) -> Float[Array, "K D"]:
        """The current codebook, [K, D] float32."""
        if self.ema_decay is None:
            # Under mixed precision the learned codebook arrives in bf16 like every parameter (`precision`); the
            # distances, the codes and the losses are computed in float32 all the same.
            codebook = self.codebook.astype(jnp.float32)
        else:
            if state is None:
                raise InputError("this VQ keeps an EMA dictionary: pass the state from vq.init_state(key=...)")
            # `ema_update` keeps counts >= MIN_COUNT; the maximum only covers a state that underflowed before it
            # did (an old checkpoint): its codes come out as zero vectors, not NaN.
            codebook = state.sums / jnp.maximum(state.counts, MIN_COUNT)[:, None]
        return _normalize(codebook) if self.l2_normalize else codebook

    def __call__(
        self, z: Float[Array, "... D"], state: VQState | None = None, *, key: PRNGKeyArray | None = None,
        train: bool = False,
    ) -> tuple[Quantized, VQState | None]:
        """Quantize `z` to its nearest codewords; in training, also update the EMA dictionary and split dead codes.

        Returns (Quantized, new state). The quantizer computes in float32 whatever the dtype of `z`, and returns
        codes in that dtype. `key` is needed only when training with splitting.
        """
        if z.ndim == 0 or z.shape[-1] != self.dim:
            raise InputError(f"VQ expects latents with {self.dim} channels last; got shape {tuple(z.shape)}")
        codebook = self.codewords(state)
        x = z.astype(jnp.float32).reshape(-1, self.dim)
        if self.standardize:
            x = standardize(x)
        elif self.l2_normalize:
            x = _normalize(x)
        indices, dist = nearest(x, codebook)
        e = codebook[indices]
        # Straight-through: the forward pass sees exactly the codeword (x - sg(x) is exactly zero), the backward pass
        # the identity.
        codes = jax.lax.stop_gradient(e) + (x - jax.lax.stop_gradient(x))

        metrics, loss = usage_metrics(indices, self.codebook_size), jnp.zeros((), jnp.float32)
        if self.commitment:  # UViM's stage I has none
            metrics["vq_commitment"] = self.commitment * jnp.mean((x - jax.lax.stop_gradient(e)) ** 2)
            loss = metrics["vq_commitment"]
        if self.ema_decay is None:  # with EMA the dictionary is not trained by gradient
            metrics["vq_codebook"] = jnp.mean((e - jax.lax.stop_gradient(x)) ** 2)
            loss = loss + metrics["vq_codebook"]
        if self.entropy_weight:
            metrics["vq_entropy"] = self.entropy_weight * entropy_loss(-dist / self.entropy_temperature)
            loss = loss + metrics["vq_entropy"]

        if train and self.ema_decay is not None:
            state = ema_update(state, x, indices, self.ema_decay, self.axis_name)
            if self.split_threshold is not None:
                if key is None:
                    raise InputError("training VQ with codebook splitting needs a key (the splits are perturbed)")
                state, splits = split_dead_codes(state, self.split_threshold, key)
                metrics["vq_splits"] = splits.astype(jnp.float32)

        return Quantized(codes.reshape(z.shape).astype(z.dtype), indices.reshape(z.shape[:-1]), loss, metrics), state

    def indices_to_codes(self, indices: Int[Array, "..."], state: VQState | None = None) -> Float[Array, "... D"]:
        """The codewords of `indices`, float32 [..., D]."""
        return self.codewords(state)[indices]
