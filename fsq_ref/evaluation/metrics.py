"""Metrics: how a quantizer uses its codebook, how well an autoencoder reconstructs, and how close two sets of image
features are (Frechet distance, precision and recall; `features` supplies the features).

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
from jaxtyping import Array, Float, Int

from fsq_ref.common.errors import InputError

# Pairwise distances are computed a few million at a time: all 10^8 of two 10^4-image sets would take 800 MB.
CHUNK_ELEMENTS = 2**22
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


def frechet_distance(feats_a: Float[np.ndarray, "N F"], feats_b: Float[np.ndarray, "M F"]) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)) between Gaussians fitted to two feature sets.

    S_a S_b is not symmetric, and a general matrix square root of it (scipy's sqrtm) can turn complex from rounding.
    Its eigenvalues equal those of sqrt(S_a) S_b sqrt(S_a), which is symmetric positive semi-definite, so the trace of
    the square root is the sum of the square roots of that matrix's eigenvalues, all real (clipped at 0 against
    rounding).

    References: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
    Equilibrium", Eq. 6.
    """
    a, b = _check_features(feats_a, feats_b, minimum=2)
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    eigvals, eigvecs = np.linalg.eigh(cov_a)
    sqrt_a = (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    return max(float(distance), 0.0)  # a squared distance; rounding can leave it a hair below zero


def precision_recall(real_feats: Float[np.ndarray, "N F"], fake_feats: Float[np.ndarray, "M F"],
                     k: int = 3) -> tuple[float, float]:
    """Improved precision and recall: (fraction of fake samples inside the real manifold, fraction of real samples
    inside the fake manifold), a manifold being the union of balls around its points, each reaching that point's
    k-th nearest neighbour in its own set.

    References: Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative Models",
    Eqs. 1-3.
    """
    real, fake = _check_features(real_feats, fake_feats, minimum=k + 1)
    if k < 1:
        raise InputError(f"k must be >= 1; got {k}")
    real_radii, fake_radii = _knn_radii(real, k), _knn_radii(fake, k)
    fake_inside = np.zeros(len(fake), bool)  # inside some real ball
    real_inside = np.zeros(len(real), bool)  # inside some fake ball
    for start, d2 in _squared_distances(real, fake):  # d2: rows of real against all of fake
        rows = slice(start, start + len(d2))
        fake_inside |= (d2 <= real_radii[rows, None]).any(axis=0)
        real_inside[rows] = (d2 <= fake_radii[None, :]).any(axis=1)
    return float(fake_inside.mean()), float(real_inside.mean())


def _check_features(a, b, *, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < minimum:
        raise InputError(f"need two feature sets [N, F] with the same F and at least {minimum} rows each; got "
                         f"{list(a.shape)} and {list(b.shape)}")
    return a, b


def _squared_distances(a: np.ndarray, b: np.ndarray):
    """Yields (row offset, squared distances [rows, M]) for chunks of the rows of `a` [N, F] against all of `b`."""
    rows = max(1, CHUNK_ELEMENTS // len(b))
    b_sq = np.sum(b**2, axis=1)
    for start in range(0, len(a), rows):
        chunk = a[start:start + rows]
        d2 = np.sum(chunk**2, axis=1)[:, None] + b_sq[None, :] - 2 * chunk @ b.T
        yield start, np.maximum(d2, 0)  # the expansion can round a tiny distance below zero


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """The squared distance from each point of `x` to its k-th nearest other point: [N]."""
    radii = np.empty(len(x))
    for start, d2 in _squared_distances(x, x):
        # Column k after partitioning: column 0 is the point itself, at distance 0.
        radii[start:start + len(d2)] = np.partition(d2, k, axis=1)[:, k]
    return radii
