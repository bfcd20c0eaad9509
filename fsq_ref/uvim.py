"""UViM (Kolesnikov et al. 2022) with an FSQ guiding code: the paper's Section 4 experiment (Table 2).

Two stages solve a dense-prediction task (`dense_tasks`: depth, colorization, panoptic segmentation):

- Stage I, the restricted oracle: an encoder reads the task's output together with its input (the context) and
  compresses it into a short discrete code, the guiding code; a decoder rebuilds the output from the code plus the
  input. The code only has to carry what the input does not already tell, so it can be short. The bottleneck is FSQ
  (default levels [7,5,5,5,5], 4375 codes, as in the paper) or the VQ UViM used (EMA dictionary with codebook
  splitting), the comparison the paper makes. Code dropout (UViM's "random" variant) hides a random fraction of each
  training example's tokens from the decoder, so that it learns to lean on the context and stays useful when stage II
  gets tokens wrong. A dropped token's code becomes zeros, as in UViM (big_vision `models/proj/uvim/vit.py::Model`);
  `OracleConfig.dropped_tokens = "flag"` also gives the decoder a "kept" channel (for FSQ, zeros are a real code, the
  grid's centre: docs/uvim.md). Without context (`OracleConfig.context` False: the paper's context ablation,
  big_vision's `with_encoder_ctx` and `with_decoder_ctx` off) the code has to carry the whole output; code dropout
  stays on.
- Stage II, the language model: an encoder-decoder transformer reads the input image and predicts the guiding code
  token by token. At inference: image -> stage II code -> stage I decoder (with the image) -> prediction.

Stage II sees stage I only through `encode_target` and `decode_code`. The code is flattened in raster order to S
tokens; stage II's input vocabulary shifts codes by one to free 0 as the start symbol (`shift_right`, the only place
the offset exists).

Our stage I is convolutional (the `nets` encoder/decoder) rather than UViM's ViT: at 32x32 pixels a conv net trains
far faster on a CPU. The code is short, as UViM's: 8x8 = 64 tokens for a 32x32 image with the `quick-8x8` preset
(4x4 = 16 with `quick`), 16x16 = 256 for 512x512 in UViM's models; see `presets.ORACLE`.

Legend: B batch, H W image size, Cc context channels, Ct target channels, O output channels, h w code grid,
S = h*w code length, D code dimension, K codebook size, P image patches, F transformer width.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from fsq_ref import fsq, vq
from fsq_ref.common.errors import InputError, from_record
from fsq_ref.nets import Decoder, Encoder
from fsq_ref.quantizer_config import QuantizerConfig
from fsq_ref.sampling import categorical
from fsq_ref.transformer import Transformer, causal_mask, dense

START = 0  # stage II's start-of-code symbol; code k is fed to it as k + 1
DROPPED_TOKENS = ("zeros", "flag")


@dataclasses.dataclass(frozen=True)
class OracleConfig:
    image_size: int
    base_filters: int
    channel_multipliers: tuple[int, ...]  # len(...) - 1 halvings: the code grid is image_size / 2**(len - 1)
    num_res_blocks: int
    context_dim: int  # channels of the context features the decoder gets beside the code
    quantizer: QuantizerConfig = QuantizerConfig("fsq", levels=(7, 5, 5, 5, 5))
    code_dropout: bool = True
    context: bool = True  # False: stage I never sees the input (the paper's context ablation)
    dropped_tokens: str = "zeros"  # how the decoder gets a dropped token: "zeros" (UViM's) or "flag" (zeros + a flag)

    def __post_init__(self):
        if self.quantizer.indices_per_position != 1:
            raise InputError("UViM's guiding code has one index per position: leave out --codebooks and --stages")
        if self.dropped_tokens not in DROPPED_TOKENS:
            raise InputError(f"dropped tokens must be one of {', '.join(DROPPED_TOKENS)}; got {self.dropped_tokens!r}")

    @property
    def grid(self) -> int:
        return self.image_size // 2 ** (len(self.channel_multipliers) - 1)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "quantizer": self.quantizer.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "OracleConfig":
        # Oracles written before the choice existed all had the flag channel.
        return from_record(cls, {"dropped_tokens": "flag", **d, "channel_multipliers": tuple(d["channel_multipliers"]),
                                 "quantizer": QuantizerConfig.from_dict(d["quantizer"])})


@dataclasses.dataclass(frozen=True)
class LMConfig:
    patch_size: int
    dim: int
    encoder_depth: int
    decoder_depth: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    # How the learned position tables start: "normal" (N(0, 0.02^2), big_vision's `posemb_type='learn'`), or "sincos":
    # both from the same 2-D sine-cosine table of their grid, so that a code position and the image patch at the same
    # place start out alike (the code grid and the patch grid coincide in the quick presets).
    positions: str = "normal"


def sincos_positions(grid: int, dim: int) -> Float[Array, "S F"]:
    """A 2-D sine-cosine table for a grid x grid raster: a quarter of the channels each for sin and cos of the row and
    of the column, at frequencies 10000^(-k / (dim / 4)) (as big_vision's ViT `posemb_sincos_2d`)."""
    if dim % 4:
        raise InputError(f"sine-cosine positions need a width divisible by 4; got {dim}")
    rows, cols = jnp.meshgrid(jnp.arange(grid, dtype=jnp.float32), jnp.arange(grid, dtype=jnp.float32), indexing="ij")
    omega = 1.0 / 10000 ** (jnp.arange(dim // 4, dtype=jnp.float32) / (dim // 4))
    angles = [axis.reshape(-1, 1) * omega for axis in (rows, cols)]
    return jnp.concatenate([f(a) for a in angles for f in (jnp.sin, jnp.cos)], axis=1)


def _hw(x: Float[Array, "H W C"]) -> Float[Array, "C H W"]:  # eqx convolutions are channels-first
    return jnp.moveaxis(x, -1, 0)


def _channels_last(x: Float[Array, "C H W"]) -> Float[Array, "H W C"]:
    return jnp.moveaxis(x, 0, -1)


class Oracle(eqx.Module):
    """Stage I: (target, context) -> guiding code -> (code, context) -> decoder outputs (logits or values)."""

    context_encoder: Encoder | None
    encoder: Encoder
    quantizer: fsq.FSQ | vq.VQ
    decoder: Decoder
    head_hidden: eqx.nn.Conv2d
    head_out: eqx.nn.Conv2d
    code_dropout: bool = eqx.field(static=True)
    flag: bool = eqx.field(static=True)  # the decoder gets a "kept" channel beside each code

    def __init__(self, config: OracleConfig, *, context_channels: int, target_channels: int, out_channels: int,
                 key: PRNGKeyArray):
        ctx_key, enc_key, q_key, dec_key, hidden_key, out_key = jr.split(key, 6)
        shape = dict(base_filters=config.base_filters, channel_multipliers=config.channel_multipliers,
                     num_res_blocks=config.num_res_blocks)
        self.quantizer = config.quantizer.build(key=q_key)
        if not config.context:
            context_channels = 0
        self.context_encoder = (Encoder(in_channels=context_channels, out_dim=config.context_dim, key=ctx_key, **shape)
                                if config.context else None)
        self.encoder = Encoder(in_channels=target_channels + context_channels, out_dim=self.quantizer.dim,
                               key=enc_key, **shape)
        # Decoder input per code position: the code (zeros where dropped), its "kept" flag if asked for, and the
        # context's features.
        self.flag = config.dropped_tokens == "flag"
        self.decoder = Decoder(in_dim=self.quantizer.dim + self.flag + config.context_dim * config.context,
                               out_channels=config.base_filters, key=dec_key, **shape)
        # The full-resolution context joins again at the end, so fine detail need not pass through the code.
        self.head_hidden = eqx.nn.Conv2d(config.base_filters + context_channels, config.base_filters, 3, padding=1,
                                         key=hidden_key)
        self.head_out = eqx.nn.Conv2d(config.base_filters, out_channels, 1, key=out_key)
        self.code_dropout = config.code_dropout

    def encode(self, target: Float[Array, "B H W Ct"], context: Float[Array, "B H W Cc"], qstate, *,
               key: PRNGKeyArray | None = None, train: bool = False):
        """-> (quantizers.Quantized with codes [B, h, w, D] and indices [B, h, w], new quantizer state)."""
        z = jax.vmap(self.encoder)(jnp.concatenate([target, *self._context(context)], axis=-1))
        return self.quantizer(z, qstate, key=key, train=train)

    def _context(self, context: Float[Array, "B H W Cc"]) -> list:
        return [] if self.context_encoder is None else [context]

    def decode(self, codes: Float[Array, "B h w D"], kept: Bool[Array, "B h w"],
               context: Float[Array, "B H W Cc"]) -> Float[Array, "B H W O"]:
        flag = kept[..., None].astype(codes.dtype)
        features = [jax.vmap(self.context_encoder)(c) for c in self._context(context)]
        x = jnp.concatenate([codes * flag, *([flag] if self.flag else []), *features], axis=-1)
        x = jnp.concatenate([jax.vmap(self.decoder)(x), *self._context(context)], axis=-1)
        return jax.vmap(lambda x: _channels_last(self.head_out(jax.nn.swish(self.head_hidden(_hw(x))))))(x)


def code_dropout_mask(key: PRNGKeyArray, batch: int, grid: int) -> Bool[Array, "B h w"]:
    """UViM's random code dropout: example b keeps the tokens whose "importance" (S evenly spaced values in (0, 1))
    exceeds a threshold u_b ~ U[0, 1], i.e. a random fraction 1 - u_b of them, at random positions."""
    length = grid * grid
    threshold_key, shuffle_key = jr.split(key)
    importance = jnp.linspace(1.0, 0.0, length + 2)[1:-1]
    keep = importance[None, :] > jr.uniform(threshold_key, (batch, 1))
    return jr.permutation(shuffle_key, keep, axis=1, independent=True).reshape(batch, grid, grid)


def encode_target(oracle: Oracle, qstate, target: Float[Array, "B H W Ct"],
                  context: Float[Array, "B H W Cc"]) -> Int[Array, "B S"]:
    """Stage I's half of the interface: a target (with its input) -> its guiding code, S indices in raster order."""
    indices = oracle.encode(target, context, qstate)[0].indices
    return indices.reshape(indices.shape[0], -1)


def decode_code(oracle: Oracle, qstate, code: Int[Array, "B S"], context: Float[Array, "B H W Cc"],
                kept: Bool[Array, "B S"] | None = None) -> Float[Array, "B H W O"]:
    """Stage I's other half: a guiding code (with the input) -> the decoder's outputs. Tokens not `kept` (default:
    all are) reach the decoder as code dropout leaves them."""
    batch, grid = code.shape[0], int(round(code.shape[1] ** 0.5))
    codes = oracle.quantizer.indices_to_codes(code.reshape(batch, grid, grid), qstate)
    kept = jnp.ones(codes.shape[:3], bool) if kept is None else kept.reshape(batch, grid, grid)
    return oracle.decode(codes, kept, context)


def shift_right(code: Int[Array, "B S"]) -> Int[Array, "B S"]:
    """Stage II's input for teacher forcing: the start symbol, then the code shifted by one position and one value."""
    return jnp.concatenate([jnp.full_like(code[:, :1], START), code[:, :-1] + 1], axis=1)


def teacher_forced_logits(lm: "GuidingCodeLM", context: Float[Array, "B H W Cc"], code: Int[Array, "B S"], *,
                          key: PRNGKeyArray | None = None) -> Float[Array, "B S K"]:
    """Stage II's logits for every code token given the tokens before it (teacher forcing): with dropout when `key` is
    given (training), without it otherwise (evaluation)."""
    inputs = shift_right(code)
    if key is None:
        return jax.vmap(lambda c, i: lm(c, i, inference=True))(context, inputs)
    return jax.vmap(lambda c, i, k: lm(c, i, key=k))(context, inputs, jr.split(key, code.shape[0]))


def code_nll(logits: Float[Array, "B S K"], code: Int[Array, "B S"]) -> Float[Array, "B S"]:
    """Stage II's loss per token: the cross-entropy (nats) of each code token under the logits, in float32."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.take_along_axis(log_p, code[..., None], axis=-1)[..., 0]


class GuidingCodeLM(eqx.Module):
    """Stage II: a ViT encoder over the input's patches; a causal decoder with cross-attention predicts the code."""

    patches: eqx.nn.Conv2d
    encoder_positions: Float[Array, "P F"]
    encoder: Transformer
    embed: eqx.nn.Embedding
    decoder_positions: Float[Array, "S F"]
    decoder: Transformer
    head: eqx.nn.Linear
    code_length: int = eqx.field(static=True)

    def __init__(self, config: LMConfig, *, image_size: int, in_channels: int, code_length: int,
                 codebook_size: int, key: PRNGKeyArray):
        if image_size % config.patch_size:
            raise InputError(f"image size {image_size} is not a multiple of the patch size {config.patch_size}: "
                             "pick another --lm-preset")
        patch_key, enc_pos_key, enc_key, embed_key, dec_pos_key, dec_key, head_key = jr.split(key, 7)
        num_patches = (image_size // config.patch_size) ** 2
        blocks = dict(dim=config.dim, num_heads=config.num_heads, mlp_dim=config.mlp_dim, dropout=config.dropout)
        self.patches = eqx.nn.Conv2d(in_channels, config.dim, config.patch_size, stride=config.patch_size,
                                     key=patch_key)
        self.encoder_positions = _positions(config, num_patches, enc_pos_key)
        self.encoder = Transformer(depth=config.encoder_depth, key=enc_key, **blocks)
        self.embed = eqx.nn.Embedding(codebook_size + 1, config.dim, key=embed_key)  # + the start symbol
        self.decoder_positions = _positions(config, code_length, dec_pos_key)
        self.decoder = Transformer(depth=config.decoder_depth, cross_attention=True, key=dec_key, **blocks)
        self.head = eqx.nn.Linear(config.dim, codebook_size, key=head_key)
        self.code_length = code_length

    def encode(self, image: Float[Array, "H W Cc"], *, key=None, inference=False) -> Float[Array, "P F"]:
        x = self.patches(_hw(image)).reshape(self.encoder_positions.shape[1], -1).T
        return self.encoder(x + self.encoder_positions, key=key, inference=inference)

    def decode(self, inputs: Int[Array, " S"], memory: Float[Array, "P F"], *, key=None,
               inference=False) -> Float[Array, "S K"]:
        x = jax.vmap(self.embed)(inputs) + self.decoder_positions
        x = self.decoder(x, context=memory, mask=causal_mask(self.code_length), key=key, inference=inference)
        return dense(self.head, x)

    def __call__(self, image: Float[Array, "H W Cc"], inputs: Int[Array, " S"], *, key=None,
                 inference=False) -> Float[Array, "S K"]:
        enc_key, dec_key = (None, None) if key is None else jr.split(key)
        return self.decode(inputs, self.encode(image, key=enc_key, inference=inference), key=dec_key,
                           inference=inference)


def _positions(config: LMConfig, length: int, key: PRNGKeyArray) -> Float[Array, "S F"]:
    """A learned position table's starting value (`LMConfig.positions`) for a square raster of `length` places."""
    if config.positions == "normal":
        return 0.02 * jr.normal(key, (length, config.dim))
    if config.positions == "sincos":
        return sincos_positions(int(round(length**0.5)), config.dim)
    raise InputError(f"unknown positions {config.positions!r}: use normal or sincos")


@eqx.filter_jit
def generate_code(lm: GuidingCodeLM, context: Float[Array, "B H W Cc"], key: PRNGKeyArray, *,
                  temperature: float = 0.0) -> Int[Array, "B S"]:
    """Stage II decoding, one token per step in a `lax.fori_loop`: greedy when temperature is 0, else sampled from
    softmax(logits / temperature). The decoder keeps each layer's keys and values of the tokens decoded so far (and
    of the image's patches) in a cache, so a step costs one position, not S: the same tokens as running the causally
    masked decoder over the whole sequence at every step, S / 2 times faster on average."""
    if temperature < 0:
        raise InputError(f"temperature must be >= 0; got {temperature}")
    memory = jax.vmap(lambda image: lm.encode(image, inference=True))(context)
    batch, length = context.shape[0], lm.code_length
    cache = jax.vmap(lambda m: lm.decoder.start_decoding(length, m))(memory)

    def step(t, state):
        code, cache, key = state
        key, sample_key = jr.split(key)
        # Position t reads what `shift_right` puts there: the start symbol, or the previous token plus one.
        inputs = jnp.where(t == 0, START, code[:, t - 1] + 1)
        x = jax.vmap(lm.embed)(inputs) + lm.decoder_positions[t]
        features, cache = jax.vmap(lambda x, c: lm.decoder.decode_step(x, t, c))(x, cache)
        logits = dense(lm.head, features)
        token = (jnp.argmax(logits, axis=-1) if temperature == 0
                 else categorical(sample_key, logits / temperature))
        return code.at[:, t].set(token.astype(jnp.int32)), cache, key

    code, _, _ = jax.lax.fori_loop(0, length, step, (jnp.zeros((batch, length), jnp.int32), cache, key))
    return code
