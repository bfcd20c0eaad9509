"""Transformer blocks (pre-LayerNorm, GELU MLP, optional cross-attention) for MaskGIT's bidirectional token model and
UViM's encoder-decoder.

Every module here works on ONE sequence; callers `jax.vmap` over the batch. The layers are equinox's (`Linear`,
`MultiheadAttention`), so checkpoints hold equinox's parameters, but they are applied here to the whole sequence at
once (`dense`, `attention`): `jax.vmap(linear)` computes weight @ x per row, which XLA on the CPU lays out transposed
and copies back around every matrix product; x @ weight.T over the rows needs no such copies, and attention runs
head-major, the layout XLA's batched products are fastest on (docs/choices.md has what it gains).

Dimension letters: S sequence length, T context length (cross-attention), F model width.
"""

import dataclasses
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from fsq_ref.common.errors import InputError
from fsq_ref.ops import gelu, layer_norm


def causal_mask(seq_len: int) -> Bool[Array, "S S"]:
    """`mask[i, j]` is True where position i may attend to position j, i.e. j <= i."""
    return jnp.tril(jnp.ones((seq_len, seq_len), dtype=bool))


def dense(layer: eqx.nn.Linear, x: Float[Array, "S I"]) -> Float[Array, "S O"]:
    """`layer` applied to every row of `x`, as one matrix product."""
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


def split_heads(layer: eqx.nn.Linear, x: Float[Array, "S F"], heads: int) -> Float[Array, "H S D"]:
    """A projection of `x`, split into `heads` heads, head-major (the layout XLA's batched products run fastest on)."""
    return dense(layer, x).reshape(x.shape[0], heads, -1).transpose(1, 0, 2)


def attend(attn: eqx.nn.MultiheadAttention, q: Float[Array, "H S D"], k: Float[Array, "H T D"],
           v: Float[Array, "H T D"], mask: Bool[Array, "S T"] | None = None, *, key: PRNGKeyArray | None = None,
           inference: bool = False) -> Float[Array, "S F"]:
    """Scaled dot-product attention over projected heads, then `attn`'s output projection: softmax in float32
    (whatever the compute dtype), dropout on the attention weights."""
    logits = jnp.einsum("hsd,htd->hst", q / math.sqrt(q.shape[-1]), k)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(logits.dtype)
    weights = attn.dropout(weights, key=key, inference=inference)
    out = jnp.einsum("hst,htd->hsd", weights, v).transpose(1, 0, 2)
    return dense(attn.output_proj, out.reshape(q.shape[1], -1))


def attention(attn: eqx.nn.MultiheadAttention, query: Float[Array, "S F"], context: Float[Array, "T F"],
              mask: Bool[Array, "S T"] | None = None, *, key: PRNGKeyArray | None = None,
              inference: bool = False) -> Float[Array, "S F"]:
    """What `attn(query, context, context, mask=mask)` computes, with every head in one product."""
    heads = attn.num_heads
    return attend(attn, split_heads(attn.query_proj, query, heads), split_heads(attn.key_proj, context, heads),
                  split_heads(attn.value_proj, context, heads), mask, key=key, inference=inference)


class DecodingCache(NamedTuple):
    """What a causal stack keeps between steps of token-by-token decoding, for one sequence: every block's arrays,
    stacked on a leading axis L (the blocks' order). Positions not yet decoded hold zeros and are masked out."""

    keys: Float[Array, "L H S D"]  # self-attention keys and values of the positions decoded so far
    values: Float[Array, "L H S D"]
    context_keys: Float[Array, "L H T D"] | None  # cross-attention keys and values of the context, computed once
    context_values: Float[Array, "L H T D"] | None


class FeedForward(eqx.Module):
    """Position-wise MLP: Linear -> GELU -> Linear."""

    hidden: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(self, dim: int, mlp_dim: int, *, key: PRNGKeyArray):
        hidden_key, out_key = jr.split(key)
        self.hidden = eqx.nn.Linear(dim, mlp_dim, key=hidden_key)
        self.out = eqx.nn.Linear(mlp_dim, dim, key=out_key)

    def __call__(self, x: Float[Array, "S F"]) -> Float[Array, "S F"]:
        return dense(self.out, gelu(dense(self.hidden, x)))


class TransformerBlock(eqx.Module):
    """Pre-LayerNorm block: self-attention, optional cross-attention to a context, MLP; each one a residual branch."""

    self_norm: eqx.nn.LayerNorm
    self_attn: eqx.nn.MultiheadAttention
    cross_norm: eqx.nn.LayerNorm | None
    cross_attn: eqx.nn.MultiheadAttention | None
    mlp_norm: eqx.nn.LayerNorm
    mlp: FeedForward
    dropout: eqx.nn.Dropout

    def __init__(self, *, dim: int, num_heads: int, mlp_dim: int, dropout: float, cross_attention: bool = False,
                 key: PRNGKeyArray):
        if dim % num_heads:
            raise InputError(f"dim must be a multiple of num_heads; got dim={dim}, num_heads={num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1); got {dropout}")
        self_key, cross_key, mlp_key = jr.split(key, 3)

        def make_attention(attn_key):
            return eqx.nn.MultiheadAttention(num_heads, dim, use_query_bias=True, use_key_bias=True,
                                             use_value_bias=True, use_output_bias=True, dropout_p=dropout, key=attn_key)

        self.self_norm = eqx.nn.LayerNorm(dim)
        self.self_attn = make_attention(self_key)
        self.cross_norm = eqx.nn.LayerNorm(dim) if cross_attention else None
        self.cross_attn = make_attention(cross_key) if cross_attention else None
        self.mlp_norm = eqx.nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_dim, key=mlp_key)
        self.dropout = eqx.nn.Dropout(dropout)

    def __call__(self, x: Float[Array, "S F"], *, context: Float[Array, "T F"] | None = None,
                 mask: Bool[Array, "S S"] | None = None, key: PRNGKeyArray | None = None,
                 inference: bool = False) -> Float[Array, "S F"]:
        """Apply the block to one sequence.

        Args:
            x: the sequence, [S, F].
            context: [T, F], attended to by cross-attention; required exactly when built with `cross_attention=True`.
            mask: [S, S], `mask[i, j]` True where position i may attend to j (e.g. `causal_mask(S)`); None: all.
            key: randomness for dropout; without one, dropout is off.
            inference: turn dropout off.

        Returns:
            The updated sequence, [S, F].
        """
        self._check_context(context)
        # Dropout draws random masks, so without a key it can only be the identity.
        inference = inference or key is None
        self_key, cross_key, mlp_key = (None, None, None) if inference else jr.split(key, 3)

        h = layer_norm(self.self_norm, x)
        x = x + self._attend(self.self_attn, h, h, mask, self_key, inference)
        if self.cross_attn is not None:
            # The context is attended to as given: it is the output of another stack, which ends in its own LayerNorm.
            h = layer_norm(self.cross_norm, x)
            x = x + self._attend(self.cross_attn, h, context, None, cross_key, inference)
        h = self.mlp(layer_norm(self.mlp_norm, x))
        return x + self.dropout(h, key=mlp_key, inference=inference)

    def start_decoding(self, seq_len: int, context: Float[Array, "T F"] | None = None) -> DecodingCache:
        """This block's part of an empty cache over `seq_len` positions (no leading L axis; `Transformer` stacks the
        blocks' parts), with the context's keys and values."""
        heads, dim = self.self_attn.num_heads, self.self_attn.query_proj.in_features
        empty = jnp.zeros((heads, seq_len, dim // heads), self.self_attn.query_proj.weight.dtype)
        self._check_context(context)
        if context is None:
            return DecodingCache(empty, empty, None, None)
        return DecodingCache(empty, empty, split_heads(self.cross_attn.key_proj, context, heads),
                             split_heads(self.cross_attn.value_proj, context, heads))

    def decode_step(self, x: Float[Array, "1 F"], position: Int[Array, ""], layer: Int[Array, ""],
                    keys: Float[Array, "L H S D"], values: Float[Array, "L H S D"],
                    context_keys: Float[Array, "H T D"] | None, context_values: Float[Array, "H T D"] | None
                    ) -> tuple[Float[Array, "1 F"], Float[Array, "L H S D"], Float[Array, "L H S D"]]:
        """The block at one position of a causally masked sequence, given the stack's cache of the earlier
        positions (this block's self-attention keys and values at index `layer` of `keys` and `values`, its
        context's): the row `position` of `self(x_all, context=..., mask=causal_mask(S), inference=True)`. Returns
        it, and `keys` and `values` with this position's written in. Writing one position into the stack's arrays
        lets XLA update them in place; updating this block's slice and stacking the slices again copied the whole
        cache at every step."""
        heads = self.self_attn.num_heads
        h = layer_norm(self.self_norm, x)
        at = (layer, 0, position, 0)
        keys = jax.lax.dynamic_update_slice(keys, split_heads(self.self_attn.key_proj, h, heads)[None], at)
        values = jax.lax.dynamic_update_slice(values, split_heads(self.self_attn.value_proj, h, heads)[None], at)
        visible = (jnp.arange(keys.shape[2]) <= position)[None, :]
        x = x + attend(self.self_attn, split_heads(self.self_attn.query_proj, h, heads), keys[layer], values[layer],
                       visible, inference=True)
        if self.cross_attn is not None:
            h = layer_norm(self.cross_norm, x)
            x = x + attend(self.cross_attn, split_heads(self.cross_attn.query_proj, h, heads), context_keys,
                           context_values, inference=True)
        x = x + self.mlp(layer_norm(self.mlp_norm, x))
        return x, keys, values

    def _check_context(self, context: Float[Array, "T F"] | None) -> None:
        if (context is None) != (self.cross_attn is None):
            has = "None" if context is None else "an array"
            raise InputError(
                "pass `context` exactly when the block was built with cross_attention=True; "
                f"got context={has}, cross_attention={self.cross_attn is not None}"
            )

    def _attend(self, attn: eqx.nn.MultiheadAttention, query: Float[Array, "S F"], context: Float[Array, "T F"],
                mask: Bool[Array, "S T"] | None, key: PRNGKeyArray | None, inference: bool) -> Float[Array, "S F"]:
        # One key for dropout on the attention weights, one for dropout on the branch's output.
        attn_key, out_key = (None, None) if key is None else jr.split(key)
        out = attention(attn, query, context, mask, key=attn_key, inference=inference)
        return self.dropout(out, key=out_key, inference=inference)


@dataclasses.dataclass(frozen=True)
class TransformerSize:
    """The sizes of a `Transformer` (MaskGIT's presets are these)."""

    dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout: float


class Transformer(eqx.Module):
    """A stack of `TransformerBlock`s and a final LayerNorm (needed because the blocks are pre-norm)."""

    blocks: TransformerBlock  # all `depth` blocks in one: every array has a leading `depth` axis
    norm: eqx.nn.LayerNorm
    depth: int = eqx.field(static=True)

    def __init__(
        self,
        *,
        depth: int,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float,
        cross_attention: bool = False,
        key: PRNGKeyArray,
    ):
        if depth < 1:
            raise InputError(f"depth must be >= 1; got {depth}")
        # The blocks are stored stacked (every array gains a leading `depth` axis): one array per parameter, and
        # token-by-token decoding scans over them.
        self.blocks = eqx.filter_vmap(
            lambda block_key: TransformerBlock(
                dim=dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                dropout=dropout,
                cross_attention=cross_attention,
                key=block_key,
            )
        )(jr.split(key, depth))
        self.norm = eqx.nn.LayerNorm(dim)
        self.depth = depth

    def __call__(
        self,
        x: Float[Array, "S F"],
        *,
        context: Float[Array, "T F"] | None = None,
        mask: Bool[Array, "S S"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
    ) -> Float[Array, "S F"]:
        """Same arguments as `TransformerBlock.__call__`; each block gets its own dropout key."""
        params, static = eqx.partition(self.blocks, eqx.is_array)
        block_keys = None if inference or key is None else jr.split(key, self.depth)
        # A Python loop, not `lax.scan`: XLA then sees the whole stack, and the backward pass reads each block's
        # saved activations where they were made, instead of from arrays stacked over the blocks (docs/choices.md).
        for i in range(self.depth):
            block = eqx.combine(jax.tree.map(lambda a: a[i], params), static)
            x = block(x, context=context, mask=mask, key=None if block_keys is None else block_keys[i],
                      inference=inference)
        return layer_norm(self.norm, x)

    def start_decoding(self, seq_len: int, context: Float[Array, "T F"] | None = None) -> DecodingCache:
        """An empty cache for `decode_step`, one per block (stacked as the blocks are)."""
        return eqx.filter_vmap(lambda block: block.start_decoding(seq_len, context))(self.blocks)

    def decode_step(self, x: Float[Array, " F"], position: Int[Array, ""],
                    cache: DecodingCache) -> tuple[Float[Array, " F"], DecodingCache]:
        """Token-by-token decoding of a causal stack: the output at `position` of
        `self(x_all, context=..., mask=causal_mask(S), inference=True)`, computed from this position's input and the
        cache of the earlier ones, in the time of one position instead of S. Returns it and the updated cache."""
        params, static = eqx.partition(self.blocks, eqx.is_array)

        def step(carry, block_inputs):
            x, keys, values = carry
            block_params, layer, context_keys, context_values = block_inputs
            block = eqx.combine(block_params, static)
            return block.decode_step(x, position, layer, keys, values, context_keys, context_values), None

        per_block = (params, jnp.arange(self.depth), cache.context_keys, cache.context_values)
        (x, keys, values), _ = jax.lax.scan(step, (x[None], cache.keys, cache.values), per_block)
        return layer_norm(self.norm, x)[0], cache._replace(keys=keys, values=values)
