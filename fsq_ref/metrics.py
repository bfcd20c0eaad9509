"""Metrics: how a quantizer uses its codebook, and how well an autoencoder reconstructs.

Codebook usage is the fraction of the K codes used at least once over a whole evaluation set (paper Fig. 3). A
per-batch fraction would understate it for large K (a batch of 256x49 latents cannot touch all of 2^16 codes), so
usage is computed from a histogram accumulated across batches: `CodeCounter` keeps it.

Legend: K codebook size, B batch, H W image size, C image channels.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

# Beyond this many codes a [K] histogram (8 bytes a code) is too large to keep; usage is then not measured.
MAX_HISTOGRAM_SIZE = 2**28


@functools.partial(jax.jit, static_argnames="codebook_size")
def histogram(indices: Int[Array, "..."], codebook_size: int) -> Int[Array, " K"]:
    """How often each code occurs in `indices`, int32 [K]."""
    return jnp.bincount(indices.reshape(-1), length=codebook_size).astype(jnp.int32)


def codebook_stats(counts) -> dict[str, float]:
    """Usage, perplexity and entropy (bits) of a code histogram.

    usage: fraction of codes used at least once; entropy: H of the empirical code distribution in bits, the cost of
    coding each token independently; perplexity: 2^H, the effective number of equally used codes.
    """
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total == 0:
        return {"usage": 0.0, "perplexity": 0.0, "entropy_bits": 0.0}
    p = counts[counts > 0] / total
    entropy = float(-(p * np.log2(p)).sum())
    return {"usage": float((counts > 0).mean()), "perplexity": 2.0**entropy, "entropy_bits": entropy}


class CodeCounter:
    """Accumulates a code histogram over many batches (on the device; one small transfer at the end)."""

    def __init__(self, codebook_size: int):
        if codebook_size > MAX_HISTOGRAM_SIZE:
            raise ValueError(f"a histogram of {codebook_size} codes is too large to keep; usage is not measurable")
        self.codebook_size = codebook_size
        self.counts = jnp.zeros((codebook_size,), jnp.int32)

    def update(self, indices: Int[Array, "..."]) -> None:
        self.counts = self.counts + histogram(indices, self.codebook_size)

    def stats(self) -> dict[str, float]:
        return codebook_stats(self.counts)


def psnr(mse: float, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB for a mean squared error on a signal of range `peak`."""
    return 10.0 * math.log10(peak**2 / max(mse, 1e-12))


def channel_stats(counts, levels) -> dict[str, float]:
    """Why an FSQ codebook is not fully used: its channels' own usage against the joint usage.

    From a code histogram [K] of FSQ with `levels`: each channel's marginal distribution over its L_i values; the sum
    of their entropies against the joint entropy (the difference is the total correlation: bits the channels share,
    so combinations of values never occur together); and the usage expected if the channels were independent with
    those marginals and as many tokens were drawn: sum_k 1 - (1 - p_k)^N, p_k the product of the marginals.
    """
    counts = np.asarray(counts, np.float64)
    levels = tuple(int(l) for l in levels)
    total = counts.sum()
    joint = counts.reshape(levels[::-1]) / total  # the first channel is the least significant digit
    marginals = [joint.sum(axis=tuple(a for a in range(len(levels)) if a != len(levels) - 1 - i))
                 for i in range(len(levels))]
    entropy = lambda p: float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    independent = marginals[0]
    for m in marginals[1:]:
        independent = np.multiply.outer(m, independent).reshape(-1)
    marginal_bits = sum(entropy(m) for m in marginals)
    return {
        "values_used": min(float((m > 0).mean()) for m in marginals),  # of the least used channel
        "marginal_bits": marginal_bits,
        "joint_bits": entropy(joint.reshape(-1)),
        "total_correlation_bits": marginal_bits - entropy(joint.reshape(-1)),
        "independent_usage": float(np.mean(1.0 - (1.0 - independent) ** total)),
    }
