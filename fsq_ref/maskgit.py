"""MaskGIT: a bidirectional transformer over a tokenizer's token grid, trained by masked token prediction and sampled by
iterative parallel decoding. The FSQ paper's headline experiment trains the same MaskGIT on FSQ and on VQ tokens.

- Model: the class token is prepended to the S grid tokens; token plus learned position embeddings go through a
  `transformer.Transformer`; a linear head gives, at each grid position, logits over the K codes.
- Training: a random fraction (cosine schedule, at least 45%) of each sequence is replaced by MASK; cross-entropy on
  the masked positions only, label smoothing 0.1; 10% of labels are replaced by the unconditional class token, so one
  model also gives the unconditional logits that classifier-free guidance needs.
- Decoding (`decode`): sample every masked token, keep the most confident, re-mask the rest; fewer each step.

This module is the model, the masking schedule and decoding; the training (loss, step, evaluation, the task for the
shared loop, loading a run) is in `training.maskgit_train`.

Vocabulary (defined in `MaskGITConfig` alone): codes 0..K-1, class tokens K..K+C-1, the unconditional class token K+C,
MASK K+C+1. Functions take class *indices* in [0, C], C (`config.unconditional`) meaning "no class".

Legend: B batch, N examples, S sequence length (= h * w), h w token grid, K codebook size, C number of classes,
V vocabulary size (= K + C + 2), F model width.

References: Chang et al., "MaskGIT: Masked Generative Image Transformer", CVPR 2022, Section 3; Mentzer et al.,
"Finite Scalar Quantization: VQ-VAE Made Simple", ICLR 2024, Section 4 and Appendix A.
"""

import dataclasses
import math
from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from fsq_ref.common.errors import InputError
from fsq_ref.data import datasets
from fsq_ref.sampling import categorical
from fsq_ref.transformer import Transformer, dense

MIN_MASKED_FRACTION = 0.45  # the FSQ paper's lower bound on the masked fraction during training
# r ~ U[R_MIN, 1] masks cos(pi/2 * (1 - r)) of the tokens: at least MIN_MASKED_FRACTION (R_MIN is about 0.297).
R_MIN = 1.0 - math.acos(MIN_MASKED_FRACTION) * 2.0 / math.pi


@dataclasses.dataclass(frozen=True)
class MaskGITConfig:
    codebook_size: int  # K
    num_classes: int  # C
    grid: tuple[int, int]  # (h, w)
    dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout: float

    def __post_init__(self):
        object.__setattr__(self, "grid", tuple(self.grid))
        for name in ("codebook_size", "num_classes", "dim", "depth", "num_heads", "mlp_dim"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1; got {getattr(self, name)}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise InputError(f"grid must be two positive sizes (h, w); got {self.grid}")
        if self.dim % self.num_heads:
            raise InputError(f"dim must be a multiple of num_heads; got dim={self.dim}, num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1); got {self.dropout}")

    @property
    def seq_len(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def unconditional(self) -> int:
        """The class index meaning "no class": unconditional sampling and classifier-free guidance."""
        return self.num_classes

    def class_token(self, label: Int[Array, "..."]) -> Int[Array, "..."]:
        """Class index in [0, C] (C: unconditional) -> its vocabulary id, right after the K codes."""
        return self.codebook_size + label

    @property
    def mask_token(self) -> int:
        return self.codebook_size + self.num_classes + 1

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + self.num_classes + 2


class MaskGIT(eqx.Module):
    embed: eqx.nn.Embedding  # V -> F
    position: Float[Array, "S+1 F"]  # learned; position 0 holds the class token
    transformer: Transformer
    head: eqx.nn.Linear  # F -> K: only codes are ever predicted
    config: MaskGITConfig = eqx.field(static=True)

    def __init__(self, config: MaskGITConfig, *, key: PRNGKeyArray):
        embed_key, pos_key, transformer_key, head_key = jr.split(key, 4)
        # MaskGIT's (BERT's) initialisation, std 0.02: equinox's default N(0, 1) embeddings would dwarf what the first
        # attention and MLP layers add to them.
        self.embed = eqx.nn.Embedding(weight=0.02 * jr.normal(embed_key, (config.vocab_size, config.dim)))
        self.position = 0.02 * jr.normal(pos_key, (config.seq_len + 1, config.dim))
        self.transformer = Transformer(depth=config.depth, dim=config.dim, num_heads=config.num_heads,
                                       mlp_dim=config.mlp_dim, dropout=config.dropout, key=transformer_key)
        self.head = eqx.nn.Linear(config.dim, config.codebook_size, key=head_key)
        self.config = config

    def features(self, tokens: Int[Array, " S"], label: Int[Array, ""], *, key: PRNGKeyArray | None = None,
                 inference: bool = False) -> Float[Array, "S F"]:
        """The transformer's output at every grid position of one sequence of codes and MASKs, given a class index in
        [0, C] (C: unconditional): what the head turns into logits. Dropout needs a `key` and `inference=False`."""
        sequence = jnp.concatenate([self.config.class_token(label)[None], tokens])
        x = jax.vmap(self.embed)(sequence) + self.position
        return self.transformer(x, key=key, inference=inference)[1:]

    def __call__(self, tokens: Int[Array, " S"], label: Int[Array, ""], *, key: PRNGKeyArray | None = None,
                 inference: bool = False) -> Float[Array, "S K"]:
        """Logits over the K codes at every grid position (arguments as `features`)."""
        return dense(self.head, self.features(tokens, label, key=key, inference=inference))


def batch_logits(model: MaskGIT, tokens: Int[Array, "B S"], labels: Int[Array, " B"], *,
                 key: PRNGKeyArray | None = None) -> Float[Array, "B S K"]:
    """The model over a batch; dropout is on exactly when a key is given."""
    if key is None:
        return jax.vmap(lambda t, c: model(t, c, inference=True))(tokens, labels)
    return jax.vmap(lambda t, c, k: model(t, c, key=k))(tokens, labels, jr.split(key, len(tokens)))


def mask_ratio(t: Float[Array, "..."]) -> Float[Array, "..."]:
    """The cosine schedule: the fraction of tokens still masked after progress t in [0, 1]; 1 at t=0, 0 at t=1."""
    # The clip removes float32's cos(pi/2) = -4e-8, so that the schedule ends at exactly zero.
    return jnp.clip(jnp.cos(jnp.pi / 2 * jnp.asarray(t, jnp.float32)), 0.0, 1.0)


def random_mask(key: PRNGKeyArray, seq_len: int) -> Bool[Array, " S"]:
    """A training mask for one sequence: r ~ U[R_MIN, 1], ceil(mask_ratio(1 - r) * S) positions, uniformly chosen."""
    ratio_key, position_key = jr.split(key)
    r = jr.uniform(ratio_key, minval=R_MIN, maxval=1.0)
    count = jnp.ceil(mask_ratio(1.0 - r) * seq_len).astype(jnp.int32)
    # A random permutation ranks the positions; the `count` lowest-ranked ones are masked.
    return jr.permutation(position_key, seq_len) < count


def num_still_masked(step: Int[Array, "..."], steps: int, num_unknown: Int[Array, "..."],
                     num_masked: Int[Array, "..."]) -> Int[Array, "..."]:
    """How many tokens stay masked after decoding step `step` (0-based) of `steps`.

    The schedule's count floor(num_unknown * mask_ratio((step + 1) / steps)), where num_unknown is the count at the
    start of decoding and num_masked the count before this step, clamped as MaskGIT's decoder clamps it
    (google-research/maskgit, `libml/parallel_decode.py::decode`): a step decodes at least one token and leaves at
    least one masked for later, so a sequence with fewer unknowns than steps keeps its last unknown token masked (and
    resampled) until the last step instead of deciding it early; the last step decodes everything. A sequence with
    nothing masked stays at zero. With num_unknown >= steps the count falls strictly, step by step, to 0.
    """
    ratio = (jnp.asarray(step, jnp.float32) + 1.0) / steps
    target = jnp.floor(jnp.asarray(num_unknown, jnp.float32) * mask_ratio(ratio)).astype(jnp.int32)
    num_masked = jnp.asarray(num_masked)
    kept = jnp.minimum(jnp.maximum(jnp.minimum(target, num_masked - 1), 1), num_masked)
    return jnp.where(jnp.asarray(step) == steps - 1, 0, kept)


class DecodeState(NamedTuple):
    tokens: Int[Array, "B S"]  # codes where decided, MASK where still unknown
    key: PRNGKeyArray  # [] (a key), split once per step


LogitsFn = Callable[[Int[Array, "B S"]], Float[Array, "B S K"]]  # tokens -> logits over the codes


def decode(tokens: Int[Array, "B S"], key: PRNGKeyArray, logits_fn: LogitsFn, *, mask_token: int, steps: int = 12,
           temperature: float = 1.0, choice_temperature: float = 4.5) -> Int[Array, "B S"]:
    """MaskGIT's iterative parallel decoding: fill every `mask_token` position of `tokens` in `steps` steps.

    At step t (ratio = (t + 1) / steps) every masked position gets a code sampled from softmax(logits / temperature);
    its confidence is that code's log-probability plus choice_temperature * (1 - ratio) Gumbel noise (randomness in
    which tokens are kept, annealed to none). Known tokens have confidence +inf and never change. The
    `num_still_masked` least confident samples are masked again.

    References: Chang et al. 2022, Sections 3.2-3.3.
    """
    if steps < 1 or temperature <= 0:
        raise InputError(f"steps must be >= 1 and temperature > 0; got steps={steps}, temperature={temperature}")
    num_unknown = jnp.sum(tokens == mask_token, axis=-1)

    def body(step, state: DecodeState) -> DecodeState:
        key, sample_key, choice_key = jr.split(state.key, 3)
        log_p = jax.nn.log_softmax(logits_fn(state.tokens) / temperature)
        sampled = categorical(sample_key, log_p)
        masked = state.tokens == mask_token
        ratio = (step.astype(jnp.float32) + 1.0) / steps
        noise = choice_temperature * (1.0 - ratio) * jr.gumbel(choice_key, sampled.shape)
        confidence = jnp.take_along_axis(log_p, sampled[..., None], axis=-1)[..., 0] + noise
        confidence = jnp.where(masked, confidence, jnp.inf)
        remask = num_still_masked(step, steps, num_unknown, jnp.sum(masked, axis=-1))
        # Rank of each position by confidence (0 = least confident); the `remask` lowest are masked again.
        rank = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1)
        tokens = jnp.where(masked, sampled, state.tokens)
        return DecodeState(jnp.where(rank < remask[:, None], mask_token, tokens), key)

    return jax.lax.fori_loop(0, steps, body, DecodeState(tokens, key)).tokens


@eqx.filter_jit
def generate(model: MaskGIT, tokens: Int[Array, "B S"], labels: Int[Array, " B"], key: PRNGKeyArray, *,
             steps: int = 12, temperature: float = 1.0, choice_temperature: float = 4.5,
             guidance: float = 0.0) -> Int[Array, "B S"]:
    """Codes for every MASK position of `tokens` [B, S] (all MASK: new samples; some known: inpainting), given class
    indices `labels` [B] (C for unconditional). Returns [B, S] codes in [0, K), the known ones unchanged.

    guidance: classifier-free guidance a, logits l_c + a * (l_c - l_u) with l_u from the unconditional class token;
    the FSQ paper's best is 0.1 for VQ tokens and 0.2 for FSQ tokens. The floats are static (one compile each).

    References: Chang et al. 2022, Section 3.2; Mentzer et al. 2024, Section 4 (guidance).
    """
    config = model.config

    def logits_fn(tokens):
        if guidance == 0.0:
            return batch_logits(model, tokens, labels)
        # Conditional and unconditional features in one batched pass. The head is affine, so guiding the features
        # and applying the head once gives the guided logits exactly (up to rounding), at half the head's cost.
        uncond = jnp.full_like(labels, config.unconditional)
        both = jax.vmap(lambda t, c: model.features(t, c, inference=True))(jnp.concatenate([tokens, tokens]),
                                                                          jnp.concatenate([labels, uncond]))
        cond, free = jnp.split(both, 2)
        return jax.vmap(lambda h: dense(model.head, h))(cond + guidance * (cond - free))

    return decode(tokens, key, logits_fn, mask_token=config.mask_token, steps=steps, temperature=temperature,
                  choice_temperature=choice_temperature)


def sample(model: MaskGIT, labels: np.ndarray, key: PRNGKeyArray, *, batch_size: int = 256,
           **options) -> np.ndarray:
    """Generate one token grid per label, int32 [N, h, w], in batches of `batch_size` (the last one padded, so the
    generator compiles once). `options` are those of `generate`; batch i uses key fold_in(key, i)."""
    config = model.config
    out = []
    for i, start in enumerate(range(0, len(labels), batch_size)):
        chunk = labels[start:start + batch_size]
        padded = datasets.pad_to(chunk.astype(np.int32), batch_size)
        tokens = jnp.full((batch_size, config.seq_len), config.mask_token, jnp.int32)
        out.append(np.asarray(generate(model, tokens, jnp.asarray(padded), jr.fold_in(key, i), **options))[:len(chunk)])
    return np.concatenate(out).reshape(len(labels), *config.grid)
