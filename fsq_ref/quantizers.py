"""The contract every quantizer keeps.

A model never asks which quantizer it holds. FSQ (`fsq.FSQ`) and VQ (`vq.VQ`) are called the same way,

    state = q.init_state(key=key)                       # None for FSQ and gradient-trained VQ
    (codes, indices, loss, metrics), state = q(z, state, key=key, train=True)
    codes = q.indices_to_codes(indices, state)

and expose `dim` (the latent channels they take) and `codebook_size`. Which quantizer a model holds is chosen by
`quantizer_config.QuantizerConfig`; this module depends on nothing else in the package. Both report `usage_metrics`
of every call in `metrics`.

Legend: D latent channels, K codebook size, "..." any leading (batch, grid) axes.
"""

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray


class Quantized(NamedTuple):
    """What every quantizer returns, so that a model can switch between them."""

    codes: Float[Array, "... D"]  # quantized latents with a straight-through gradient, in the input dtype
    indices: Int[Array, "..."]  # int32 codebook indices in [0, K)
    loss: Float[Array, ""]  # auxiliary loss to add to the training objective (0 for FSQ)
    metrics: dict[str, Array]  # scalar diagnostics for logging


class Quantizer(Protocol):
    """The calling shape both quantizers share; `state` is whatever `init_state` made (None for FSQ)."""

    @property
    def dim(self) -> int: ...

    @property
    def codebook_size(self) -> int: ...

    def init_state(self, *, key: PRNGKeyArray | None = None) -> Any: ...

    def __call__(self, z: Float[Array, "... D"], state: Any = None, *, key: PRNGKeyArray | None = None,
                 train: bool = False) -> tuple[Quantized, Any]: ...

    def indices_to_codes(self, indices: Int[Array, "..."], state: Any = None) -> Float[Array, "... D"]: ...


USAGE_METRICS = ("usage", "perplexity")  # the names `usage_metrics` reports


def usage_metrics(indices: Int[Array, "..."], codebook_size: int) -> dict[str, Array]:
    """What one call's codes say about codebook use: "usage", the fraction of the K codes that occur in `indices`,
    and "perplexity", exp of the entropy of their distribution (K when all are used equally, 1 for a single code).

    Counted by sorting the N indices, never with a [K] table, so it costs O(N log N) whatever K is (FSQ's implicit
    codebooks reach 2^31 codes); under `jax.jit` it is computed only if the result is used. A whole dataset's usage
    needs the counts of every call together (`evaluation.metrics.CodeCounter`).
    """
    flat = jnp.sort(indices.reshape(-1))
    if flat.size == 0:
        return dict.fromkeys(USAGE_METRICS, jnp.zeros((), jnp.float32))
    starts = jnp.concatenate([jnp.ones((1,), bool), flat[1:] != flat[:-1]])  # the first of each run of one code
    counts = jax.ops.segment_sum(jnp.ones_like(flat, jnp.float32), jnp.cumsum(starts) - 1, num_segments=flat.size)
    p = counts / flat.size
    entropy = -jnp.sum(jnp.where(counts > 0, p * jnp.log(jnp.where(counts > 0, p, 1.0)), 0.0))
    return dict(zip(USAGE_METRICS, (jnp.sum(starts, dtype=jnp.float32) / codebook_size, jnp.exp(entropy))))
