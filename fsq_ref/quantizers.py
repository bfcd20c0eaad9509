"""The contract every quantizer keeps.

A model never asks which quantizer it holds. FSQ (`fsq.FSQ`) and VQ (`vq.VQ`) are called the same way,

    state = q.init_state(key=key)                       # None for FSQ and gradient-trained VQ
    (codes, indices, loss, metrics), state = q(z, state, key=key, train=True)
    codes = q.indices_to_codes(indices, state)

and expose `dim` (the latent channels they take) and `codebook_size`. Which quantizer a model holds is chosen by
`bottleneck.QuantizerConfig`; this module depends on nothing else in the package.

Legend: D latent channels, K codebook size, "..." any leading (batch, grid) axes.
"""

from typing import Any, NamedTuple, Protocol

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
