"""Finite Scalar Quantization (FSQ): Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple", ICLR 2024.

FSQ replaces the learned codebook of a VQ-VAE by a fixed grid (paper Section 3, Eq. 1-2). The encoder outputs a few
channels, D = len(levels); channel i is squashed into a bounded interval (`bound`), rounded to one of L_i integer
values with a straight-through gradient, and rescaled to [-1, 1]. `quantize_reference` is that formula as the paper
writes it; `quantize` gives the same codes and gradient faster, and rounded exactly, by comparing each latent with the
latents where the bound crosses a half-integer (`decision_thresholds`). The implicit codebook is the product of the
per-channel grids, of size K = prod(levels). There are no codebook parameters and no auxiliary losses.

Everything here is a pure function of `levels`, a tuple of Python ints, so it is static under `jax.jit`; all functions
jit and vmap. Channels are last: a latent of shape [..., D] has one code per leading position.

Legend: D channels (= len(levels)), K codebook size (= prod(levels)), "..." any leading (batch, grid) axes.
"""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from fsq_ref.common.errors import InputError
from fsq_ref.quantizers import Quantized, usage_metrics

# The paper's recommended levels (Table 1 and appendix A.4.1), keyed by target codebook size. The appendix gives
# [7,5,5,5] for 2^12; Table 1 and the UViM experiments use [7,5,5,5,5], which is what we follow.
RECOMMENDED_LEVELS: dict[int, tuple[int, ...]] = {
    2**4: (5, 3), 2**6: (8, 8), 2**8: (8, 6, 5), 2**9: (8, 8, 8), 2**10: (8, 5, 5, 5), 2**11: (8, 8, 6, 5),
    2**12: (7, 5, 5, 5, 5), 2**14: (8, 8, 8, 6, 5), 2**16: (8, 8, 8, 5, 5, 5),
}

# Indices are int32 (JAX's default integer, and what embedding tables take), so a codebook has at most 2^31 codes.
MAX_CODEBOOK_SIZE = 2**31
# Above this many entries `implicit_codebook` refuses to build the [K, D] table (it would be gigabytes).
MAX_MATERIALISED_CODEBOOK = 2**24

_EPS = 1e-3  # keeps tanh's range strictly inside the outermost rounding interval (paper listing)


def _bound_constants(levels: tuple[int, ...]):
    """`bound`'s constants in float64: (half_l, offset, shift), one per channel."""
    L = np.asarray(levels, np.float64)
    half_l = (L - 1) * (1 - _EPS) / 2
    offset = np.where(L % 2 == 0, 0.5, 0.0)
    shift = np.arctanh(np.where(L == 2, 0.0, offset / half_l))  # no shift for L = 2 (`bound` says why)
    return half_l, offset, shift


def half_widths(levels: tuple[int, ...]) -> np.ndarray:
    return np.asarray([l // 2 for l in levels], np.float32)  # L // 2: the scale from rounded integers to [-1, 1]


def bound(z: Float[Array, "... D"], levels) -> Float[Array, "... D"]:
    """Squash each channel so that rounding it gives exactly L_i integer values: tanh(z + shift) half_l - offset.

    half_l = (L - 1)(1 - eps) / 2; offset = 0.5 for even L, as an even number of integers, {-L/2, ..., L/2 - 1}, is
    not symmetric about zero, and shift = arctanh(offset / half_l) then makes bound(0) = 0, the grid's centre. The
    paper's listing writes `tan` there; the authors confirmed that is a slip (bound(0) = -1.4e-5 for L = 8, which
    "barely matters"). We use the exact inverse.

    L = 2, a binary channel (lookup-free quantization's case): the values are {-1, 0} and the range,
    (-0.9995, -0.0005), does not contain 0, so no shift can centre it (arctanh(0.5 / 0.4995) is undefined; the
    official colab's `tan` gives an arbitrary shift of 1.56, putting the decision at z = -1.56). We use no shift:
    bound(z) = 0.4995 tanh(z) - 0.5 is symmetric about the decision point -0.5, so the sign of z picks the bit
    (z >= 0 -> 0, as -0.5 rounds half to even), as in LFQ; a zero-centred latent uses both values equally, and the
    gradient, 0.4995 (1 - tanh(z)^2), is finite everywhere.

    Args:
      z: latents, [..., D], any float dtype.
      levels: the number of values of each channel, D ints >= 2.

    Returns:
      float32 [..., D]; rounding channel i gives an integer in [-(L_i // 2), (L_i - 1) // 2].
    References: paper Section 3 and Appendix A.1 (code listing).
    """
    levels = check_levels(levels)
    _check_channels(z, levels)
    half_l, offset, shift = _bound_constants(levels)
    # float32 even for bf16 inputs: bf16's 8-bit mantissa cannot place 1000 codes apart (docs/choices.md).
    z = z.astype(jnp.float32)
    return jnp.tanh(z + shift.astype(np.float32)) * half_l.astype(np.float32) - offset.astype(np.float32)


def quantize_reference(z: Float[Array, "... D"], levels) -> Float[Array, "... D"]:
    """The paper's quantizer as written: codes = round_ste(bound(z)) / (L // 2), each channel in [-1, 1].

    round_ste(x) = x + stop_gradient(round(x) - x), the straight-through estimator: the forward pass rounds (half to
    even); rounding has zero gradient almost everywhere, so the backward pass treats it as the identity and passes
    the gradient of bound(z) / (L // 2). tanh(+-inf) = +-1 puts saturated latents on the ends of the grid; NaN stays
    NaN. Computed in float32, whose tanh is not exactly rounded, so a latent within a few ulps of a decision
    threshold may land on either neighbouring value: `quantize` rounds the exact bound, faster; this plain form is
    what it is tested against.

    Args:
      z: latents, [..., D], any float dtype.
      levels: D ints >= 2.

    Returns:
      codes in the dtype of `z`, same shape; channel i takes L_i values, k / (L_i // 2) for integer k.
    References: paper Section 3 and Appendix A.1.
    """
    levels = check_levels(levels)
    x = bound(z, levels)
    rounded = x + jax.lax.stop_gradient(jnp.round(x) - x)
    return (rounded / half_widths(levels)).astype(z.dtype)


# The fast, exactly-rounded equivalent: `bound` is increasing, so round(bound(z)) is fixed by how many of the latents
# where the bound crosses a half-integer z has reached, latents found once per `levels` in extended precision.
@functools.cache
def decision_thresholds(levels: tuple[int, ...]) -> np.ndarray:
    """Where rounding `bound(z)` steps from one value to the next, as latents: float32 [D, max(L) - 1], row i holding
    channel i's L_i - 1 thresholds in increasing order, padded with NaN, which no comparison reaches (so z = +inf
    counts only its channel's own thresholds). Channel i of z rounds to the (number of thresholds <= z_i)-th of its
    L_i values.

    bound(z) crosses the half-integer b between two values where tanh(z + shift) = (b + offset) / half_l, i.e. at
    z = arctanh((b + offset) / half_l) - shift. Computed in extended precision, each threshold is irrational (the
    difference of two arctanh of distinct rationals), so no float32 latent lies on it: the stored threshold is the
    smallest float32 above it. The one rational threshold is L = 2's z = 0, where bound(0) = -0.5 and rounding half
    to even picks the upper value, 0: z = 0 (and -0) counts as past it.
    """
    half_l, offset, shift = (np.asarray(c, np.longdouble) for c in _bound_constants(levels))
    table = np.full((len(levels), max(levels) - 1), np.nan, np.float32)
    for i, L in enumerate(levels):
        half_integers = np.arange(L - 1, dtype=np.longdouble) - L // 2 + np.longdouble(0.5)
        exact = np.arctanh((half_integers + offset[i]) / half_l[i]) - shift[i]
        nearest = exact.astype(np.float32)
        table[i, :L - 1] = np.where(nearest.astype(np.longdouble) > exact, nearest,
                                    np.nextafter(nearest, np.float32(np.inf)))
        if L == 2:
            table[i, 0] = 0.0
    table.setflags(write=False)  # cached: shared by every call
    return table


def digits(z: Float[Array, "... D"], levels) -> Int[Array, "... D"]:
    """Each channel's value after `bound` and rounding, as a digit in [0, L_i): round(bound(z)) + L_i // 2.

    Counts the `decision_thresholds` each latent has reached instead of evaluating tanh and rounding: comparisons
    cost far less than a tanh, and they round the exact bound, where float32 tanh misrounds latents within a few ulps
    of a threshold. -inf reaches no threshold and +inf all of its channel's: the ends of the grid, as in the paper's
    form. A NaN latent reaches none: digit 0 (`quantize` keeps the NaN in its codes).
    """
    levels = check_levels(levels)
    _check_channels(z, levels)
    thresholds = decision_thresholds(levels)
    z = z.astype(jnp.float32)
    # One comparison per threshold column over all channels: a single elementwise pass that XLA fuses.
    return sum((z >= thresholds[:, j]).astype(jnp.int32) for j in range(thresholds.shape[1]))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _quantize_float32(z: Float[Array, "... D"], levels: tuple[int, ...]) -> Float[Array, "... D"]:
    half_width = half_widths(levels)
    codes = (digits(z, levels).astype(jnp.float32) - half_width) / half_width
    return jnp.where(jnp.isnan(z), z, codes)  # a NaN latent stays NaN, so a diverging run fails loudly


@_quantize_float32.defjvp
def _quantize_float32_jvp(levels, primals, tangents):
    # The straight-through estimator: rounding passes the gradient of bound(z) / (L // 2) unchanged.
    (z,), (dz,) = primals, tangents
    _, d_bound = jax.jvp(lambda x: bound(x, levels), (z,), (dz,))
    return _quantize_float32(z, levels), d_bound / half_widths(levels)


def quantize(z: Float[Array, "... D"], levels) -> Float[Array, "... D"]:
    """Quantize latents [..., D] to the FSQ grid: `quantize_reference` with the exact bound rounded. The codes,
    round(bound(z)) / (L // 2) in the dtype of `z`, come from `digits` (threshold comparisons, no tanh); the gradient
    is the straight-through one, that of bound(z) / (L // 2). References: paper Eq. 1-2 and Appendix A.1.
    """
    levels = check_levels(levels)
    return _quantize_float32(z.astype(jnp.float32), levels).astype(z.dtype)


def mixed_radix(levels: tuple[int, ...]) -> np.ndarray:
    """Each channel's place value in an index, first channel least significant: int32 [1, L0, L0*L1, ...]."""
    return np.cumprod((1,) + levels[:-1]).astype(np.int32)


def codes_to_indices(codes: Float[Array, "... D"], levels) -> Int[Array, "..."]:
    """Map codes on the grid to their index in the implicit codebook, int32 in [0, K).

    Each channel's code is turned into its integer digit in [0, L_i) by rounding, never by truncation, so codes that
    picked up rounding error (from bf16, say) still land on the right digit; the digits are then read as a mixed-radix
    number, first channel least significant. Exact for float32 codes; bf16 codes are exact while L_i // 2 <= 128.
    References: paper Appendix A.1 (`codes_to_indexes`).
    """
    levels = check_levels(levels)
    _check_channels(codes, levels)
    half_width = half_widths(levels)
    digits = jnp.round(codes.astype(jnp.float32) * half_width + half_width).astype(jnp.int32)
    return jnp.sum(digits * mixed_radix(levels), axis=-1, dtype=jnp.int32)


def indices_to_codes(indices: Int[Array, "..."], levels) -> Float[Array, "... D"]:
    """Inverse of `codes_to_indices`: digit_i = (index // basis_i) % L_i, code_i = (digit_i - L_i // 2) / (L_i // 2).

    Integer arithmetic (jnp, not NumPy, so it traces under jit) up to the float32 codes [..., D] it returns.
    """
    levels = check_levels(levels)
    indices = jnp.asarray(indices).astype(jnp.int32)[..., None]
    half_width = np.asarray([l // 2 for l in levels], np.int32)
    digits = (indices // mixed_radix(levels)) % np.asarray(levels, np.int32)
    return (digits - half_width).astype(jnp.float32) / half_width.astype(np.float32)


def implicit_codebook(levels) -> Float[Array, "K D"]:
    """The whole codebook as a [K, D] table, row k = indices_to_codes(k). Built only when called."""
    levels = check_levels(levels)
    size = math.prod(levels)
    if size > MAX_MATERIALISED_CODEBOOK:
        raise InputError(f"the implicit codebook of levels {list(levels)} has {size} entries "
                         f"({size * len(levels) * 4 / 2**30:.1f} GiB as float32); use indices_to_codes on the indices "
                         "you need instead of building the table")
    return indices_to_codes(jnp.arange(size, dtype=jnp.int32), levels)


def check_levels(levels) -> tuple[int, ...]:
    """Return `levels` as a tuple of ints, or raise `InputError` saying what is wrong with it."""
    try:
        levels = tuple(levels)
    except TypeError:
        raise InputError(f"levels must be a sequence of integers such as (8, 5, 5, 5); got {levels!r}") from None
    if not levels:
        raise InputError("levels must not be empty; give one level count per channel, e.g. (8, 5, 5, 5)")
    if not all(isinstance(l, (int, np.integer)) and not isinstance(l, bool) for l in levels):
        raise InputError(f"levels must all be integers; got {list(levels)}")
    levels = tuple(int(l) for l in levels)
    if min(levels) < 2:
        # One value carries no information; L = 2 is a binary channel (`bound` says how it is handled).
        raise InputError(f"levels must all be >= 2 (a channel of one value carries nothing); got {list(levels)}")
    if math.prod(levels) > MAX_CODEBOOK_SIZE:
        raise InputError(f"prod(levels) = {math.prod(levels)} exceeds {MAX_CODEBOOK_SIZE}, the most that int32 indices "
                         f"can address; use fewer or smaller levels; got {list(levels)}")
    return levels


def codebook_size(levels) -> int:
    """K = prod(levels), the size of the implicit codebook."""
    return math.prod(check_levels(levels))


def _check_channels(z: Array, levels: tuple[int, ...]) -> None:
    if z.ndim == 0 or z.shape[-1] != len(levels):
        raise InputError(f"the input's last axis must have one channel per level of {list(levels)}; got shape "
                         f"{tuple(z.shape)}: project the latent to {len(levels)} channels first")


def levels_for(size: int) -> tuple[int, ...]:
    """The paper's recommended levels for a target codebook size (Table 1; 2^4 ... 2^16).

    The actual size prod(levels) is close to, not equal to, the target: levels_for(1024) = (8, 5, 5, 5), 1000 codes.
    """
    if size not in RECOMMENDED_LEVELS:
        known = ", ".join(str(k) for k in RECOMMENDED_LEVELS)
        raise InputError(f"no recommended levels for codebook size {size}; the paper gives levels for {known}. "
                         "Pick one of those, or pass explicit levels (e.g. --levels 8,5,5,5)")
    return RECOMMENDED_LEVELS[size]


class FSQ(eqx.Module):
    """FSQ as a quantizer module with the same calling shape as `vq.VQ`.

    No parameters, no state: `init_state` gives None and `__call__` returns the state unchanged (`quantizers`).
    """

    levels: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, levels):
        self.levels = check_levels(levels)

    @property
    def dim(self) -> int:
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def init_state(self, *, key=None):
        del key
        return None

    def __call__(self, z: Float[Array, "... D"], state=None, *, key=None, train: bool = False):
        """Quantize `z`; returns (Quantized, state). `key` and `train` are accepted for parity with VQ."""
        del key, train
        # Indices from the float32 codes, so bf16 inputs give exactly the indices of the same values in float32.
        codes = quantize(z.astype(jnp.float32), self.levels)
        indices = codes_to_indices(jax.lax.stop_gradient(codes), self.levels)
        metrics = usage_metrics(indices, self.codebook_size)
        return Quantized(codes.astype(z.dtype), indices, jnp.zeros((), jnp.float32), metrics), state

    def indices_to_codes(self, indices: Int[Array, "..."], state=None) -> Float[Array, "... D"]:
        del state
        return indices_to_codes(indices, self.levels)
