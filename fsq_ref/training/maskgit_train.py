"""Training MaskGIT (`maskgit`) on a tokenizer's token files, as a task for the shared loop (`train.run`); loading a
trained one; and generating images with it and the tokenizer whose tokens it learned.

Training, as the FSQ paper trains MaskGIT: each sequence is masked by `maskgit.random_mask` (cosine schedule, at least
45% of the tokens), the loss is the cross-entropy on the masked positions only with label smoothing 0.1, 10% of the
labels are replaced by the unconditional class token (classifier-free guidance needs the unconditional logits), and
AdamW has MaskGIT's betas (0.9, 0.96) and weight decay 0.045.

Legend: B batch, N examples, S sequence length (= h * w), h w token grid, K codebook size.
"""

import dataclasses
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from fsq_ref.common.errors import InputError, from_record
from fsq_ref.data import datasets, tokens
from fsq_ref.maskgit import MaskGIT, MaskGITConfig, batch_logits, num_still_masked, random_mask, sample
from fsq_ref.training import checkpoint, precision, presets, tokenizer_train, train

LABEL_SMOOTHING = 0.1
LABEL_DROPOUT = 0.1  # fraction of training labels replaced by the unconditional token
WEIGHT_DECAY = 0.045  # MaskGIT's AdamW setting
ADAM_B2 = 0.96  # MaskGIT's
EVAL_KEY = 0  # one fixed set of evaluation masks, whatever the training seed, so that runs are comparable
HELD_OUT_FRACTION = 20  # without evaluation tokens, the last 1/20 of the training tokens is held out


def masked_token_loss(logits: Float[Array, "B S K"], targets: Int[Array, "B S"],
                      masked: Bool[Array, "B S"]) -> tuple[Float[Array, ""], dict]:
    """Label-smoothed cross-entropy averaged over the masked positions only, and (nll, accuracy) there too.

    Computed in float32 whatever the dtype of `logits` (bf16 under mixed precision, `precision`).
    """
    logits = logits.astype(jnp.float32)
    log_p = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
    # Label smoothing: the target puts LABEL_SMOOTHING of its mass uniformly on all K codes.
    ce = (1.0 - LABEL_SMOOTHING) * nll - LABEL_SMOOTHING * jnp.mean(log_p, axis=-1)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(masked.astype(jnp.float32)), 1.0)

    def mean(x):
        return jnp.sum(jnp.where(masked, x, 0.0)) / count

    return mean(ce), {"nll": mean(nll), "accuracy": mean(correct)}


class TrainState(eqx.Module):
    model: MaskGIT
    opt_state: optax.OptState


def init_train_state(config: MaskGITConfig, weight_decay: float, *, key: PRNGKeyArray) -> TrainState:
    model = MaskGIT(config, key=key)
    return TrainState(model, train.optimizer(weight_decay, b2=ADAM_B2).init(eqx.filter(model, eqx.is_array)))


def _masked_prediction(model: MaskGIT, tokens: Int[Array, "B S"], labels: Int[Array, " B"], mask_keys: PRNGKeyArray,
                       dropout_key: PRNGKeyArray | None = None, valid: Bool[Array, " B"] | None = None):
    """Mask each sequence with its own key, predict: (loss, stats, logits [B, S, K], masked [B, S]). Rows where
    `valid` is False (a padded batch's extra rows) count as having no masked token."""
    masked = jax.vmap(random_mask, (0, None))(mask_keys, tokens.shape[1])
    if valid is not None:
        masked = masked & valid[:, None]
    out = batch_logits(model, jnp.where(masked, model.config.mask_token, tokens), labels, key=dropout_key)
    return *masked_token_loss(out, tokens, masked), out, masked


def make_step(weight_decay: float, dtype: str = "float32"):
    """The jitted training step: (state, (tokens [B, h, w], labels [B]), key, lr) -> (state, stats, histogram [K]).

    The transformer computes in `dtype` (`precision`); parameters and optimiser state stay float32.
    """
    opt = train.optimizer(weight_decay, b2=ADAM_B2)
    compute = precision.compute_dtype(dtype)

    @eqx.filter_jit(donate="all")
    def step(state: TrainState, batch, key: PRNGKeyArray, lr: Float[Array, ""]):
        tokens, labels = batch
        tokens, config = tokens.reshape(len(tokens), -1), state.model.config
        mask_key, drop_key, dropout_key = jr.split(key, 3)
        labels = jnp.where(jr.bernoulli(drop_key, LABEL_DROPOUT, labels.shape), config.unconditional, labels)

        def loss_fn(model):
            model = precision.cast(model, compute)
            loss, *aux = _masked_prediction(model, tokens, labels, jr.split(mask_key, len(tokens)), dropout_key)
            return loss, aux

        (loss, (stats, out, masked)), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(state.model)
        model, opt_state = train.apply_updates(opt, grads, state.opt_state, state.model, lr)
        # Which codes the model predicts where it has to guess: the "usage" the training loop displays.
        predicted = jnp.argmax(out, axis=-1).reshape(-1)
        hist = jnp.zeros(config.codebook_size, jnp.int32).at[predicted].add(masked.reshape(-1).astype(jnp.int32))
        return TrainState(model, opt_state), {"loss": loss, **stats}, hist

    return step


@eqx.filter_jit
def _eval_batch(model: MaskGIT, tokens: Int[Array, "B S"], labels: Int[Array, " B"], mask_keys: PRNGKeyArray,
                valid: Bool[Array, " B"]):
    loss, stats, _, masked = _masked_prediction(model, tokens, labels, mask_keys, valid=valid)
    return {"loss": loss, **stats}, jnp.sum(masked.astype(jnp.float32))


def evaluate(model: MaskGIT, tokens: Int[np.ndarray, "N h w"], labels: Int[np.ndarray, " N"], *,
             key: PRNGKeyArray, batch_size: int = 256) -> dict[str, float]:
    """Masked-token loss, nll (nats) and accuracy over all examples, conditional (no label dropout), dropout off.

    Example i is masked with the i-th key split from `key`: the same masks on every call, for every batch size.
    """
    tokens, keys = np.asarray(tokens).reshape(len(tokens), -1), jr.split(key, len(tokens))
    totals, count = {}, 0.0
    for idx, n in datasets.pass_indices(len(tokens), batch_size):
        valid = np.arange(len(idx)) < n
        stats, masked = _eval_batch(model, tokens[idx], labels[idx], keys[idx], valid)
        for name, value in stats.items():  # the batch's means, weighted by its number of masked tokens
            totals[name] = totals.get(name, 0.0) + float(value) * float(masked)
        count += float(masked)
    return {name: total / count for name, total in totals.items()}


CODING_STEPS = 12  # MaskGIT's number of decoding steps, and the cosine schedule's counts
CODING_ORDER_SEED = 0  # the fixed order in which positions are revealed when coding


def coding_schedule(seq_len: int, steps: int = CODING_STEPS) -> np.ndarray:
    """How many tokens are known before each coding step and after the last: int [steps + 1], from 0 to seq_len,
    the counts MaskGIT's decoding schedule (`maskgit.num_still_masked`) reveals step by step."""
    masked = [seq_len]
    for step in range(steps):
        masked.append(int(num_still_masked(step, steps, seq_len, masked[-1])))
    return seq_len - np.array(masked, np.int32)


@eqx.filter_jit
def _code_lengths(model: MaskGIT, tokens: Int[Array, "B S"], known: Int[Array, " T+1"]) -> Float[Array, " B"]:
    config = model.config
    turn = jr.permutation(jr.key(CODING_ORDER_SEED), config.seq_len)  # position -> when it is revealed
    unconditional = jnp.full((len(tokens),), config.unconditional)

    def body(bits, bounds):
        before, after = bounds
        inputs = jnp.where(turn < before, tokens, config.mask_token)
        log_p = jax.nn.log_softmax(batch_logits(model, inputs, unconditional).astype(jnp.float32))
        nll = -jnp.take_along_axis(log_p, tokens[..., None], axis=-1)[..., 0]
        coded = (turn >= before) & (turn < after)
        return bits + jnp.sum(jnp.where(coded, nll, 0.0), axis=-1) / jnp.log(2.0), None

    return jax.lax.scan(body, jnp.zeros(len(tokens)), (known[:-1], known[1:]))[0]


def bits_per_token(model: MaskGIT, tokens: Int[np.ndarray, "N h w"], *, batch_size: int = 256) -> float:
    """What coding `tokens` losslessly with the model costs, in bits per token (the compression cost of the paper's
    codebook-size study, Section 4, Fig. 3).

    The grid is revealed in CODING_STEPS steps of MaskGIT's decoding schedule, in one fixed pseudo-random order of the
    positions (seed CODING_ORDER_SEED; the sampler's confidence order depends on the samples, which a decoder of the
    true tokens does not have). At each step the newly revealed tokens cost -log2 p under the model's prediction from
    the tokens revealed before, with the unconditional class token (a decoder knows no label). This is a valid code
    length: the decoder knows the order and computes the same distributions, and the product of per-position
    distributions is a distribution over the step's tokens, so an arithmetic coder reaches the sum within 2 bits per
    grid.
    """
    flat = np.asarray(tokens, np.int32).reshape(len(tokens), -1)
    known = jnp.asarray(coding_schedule(flat.shape[1]))
    total = 0.0
    for idx, n in datasets.pass_indices(len(flat), batch_size):
        total += float(jnp.sum(_code_lengths(model, jnp.asarray(flat[idx]), known)[:n]))
    return total / flat.size


class MaskGITTask:
    """Training MaskGIT with `train.run` on a token file's indices [N, h, w] and class labels [N]."""

    kind = "maskgit"
    pictures = ()

    def __init__(self, config: MaskGITConfig, tokens: np.ndarray, labels: np.ndarray, *, eval_tokens: np.ndarray,
                 eval_labels: np.ndarray, batch_size: int, seed: int, weight_decay: float, header: dict,
                 dtype: str = "float32"):
        for name, (t, l) in {"training": (tokens, labels), "evaluation": (eval_tokens, eval_labels)}.items():
            if t.ndim != 3 or t.shape[1:] != config.grid or l.shape != t.shape[:1]:
                raise InputError(f"the {name} tokens must be [N, {config.grid[0]}, {config.grid[1]}] with labels [N]; "
                                 f"got {list(t.shape)} and {list(l.shape)}: use tokens from `fsq encode`")
            if t.min() < 0 or t.max() >= config.codebook_size or l.min() < 0 or l.max() >= config.num_classes:
                raise InputError(f"the {name} tokens must lie in [0, {config.codebook_size}) and labels in "
                                 f"[0, {config.num_classes}): the config does not match the token file")
        self.config, self.batch_size, self.seed, self.weight_decay = config, batch_size, seed, weight_decay
        self.tokens, self.labels = tokens.astype(np.int32), labels.astype(np.int32)
        self.eval_tokens, self.eval_labels = eval_tokens.astype(np.int32), eval_labels.astype(np.int32)
        self.header = {"maskgit": dataclasses.asdict(config), "tokens": header}
        self.codebook_size = config.codebook_size
        self.step = make_step(weight_decay, dtype)

    def init_state(self, key: PRNGKeyArray) -> TrainState:
        return init_train_state(self.config, self.weight_decay, key=key)

    def architecture(self, header: dict) -> dict:
        # The transformer, the codebook size, classes and grid; not the tokenizer's fingerprint: a fine-tuned
        # tokenizer's tokens keep the codebook.
        return {"maskgit": header["maskgit"]}

    def batches(self, start_step: int):
        return datasets.step_batches(len(self.tokens), self.batch_size, self.seed, start_step,
                                 lambda idx: (self.tokens[idx], self.labels[idx]))

    def evaluate(self, state: TrainState, workdir: Path) -> dict:
        return evaluate(state.model, self.eval_tokens, self.eval_labels, key=jr.key(EVAL_KEY))


def labels_of(token_file: tokens.TokenFile) -> np.ndarray:
    """Class labels, or class 0 for every grid of an unlabelled token file (one class: unconditional modelling)."""
    if token_file.labels is not None:
        return token_file.labels
    return np.zeros(len(token_file.indices), np.int32)


def make_task(preset: str, train_tokens: tokens.TokenFile, eval_tokens: tokens.TokenFile | None, *,
              batch_size: int, seed: int, dtype: str = "float32") -> MaskGITTask:
    """The MaskGIT task of size `preset` for a token file; without `eval_tokens` the last 1/20 of the training tokens
    is held out (and not trained on)."""
    if train_tokens.indices.ndim != 3:
        raise InputError(f"{train_tokens.path or 'the token file'} has {train_tokens.indices.shape[-1]} indices per "
                         "position (codebooks or residual stages); MaskGIT models one: train the tokenizer without "
                         "--codebooks and --stages")
    if eval_tokens is not None:
        tokens.check_made_by(eval_tokens, train_tokens.tokenizer, train_tokens.grid, train_tokens.codebook_size)
        held_out = eval_tokens
    else:
        n = len(train_tokens.indices) - max(1, len(train_tokens.indices) // HELD_OUT_FRACTION)
        labels = labels_of(train_tokens)
        held_out = dataclasses.replace(train_tokens, indices=train_tokens.indices[n:], labels=labels[n:])
        train_tokens = dataclasses.replace(train_tokens, indices=train_tokens.indices[:n], labels=labels[:n])
    config = presets.maskgit(preset, codebook_size=train_tokens.codebook_size,
                             num_classes=train_tokens.num_classes or 1, grid=train_tokens.grid)
    return MaskGITTask(config, train_tokens.indices, labels_of(train_tokens), eval_tokens=held_out.indices,
                       eval_labels=labels_of(held_out), batch_size=batch_size, seed=seed, weight_decay=WEIGHT_DECAY,
                       header={"tokenizer": train_tokens.tokenizer, "codebook_size": train_tokens.codebook_size},
                       dtype=dtype)


def config_of(header: dict) -> MaskGITConfig:
    """The config a MaskGIT checkpoint header records (read without loading the weights: `checkpoint.read_run`)."""
    return from_record(MaskGITConfig, header["task"]["maskgit"])


def load(workdir: str | Path) -> tuple[MaskGIT, dict]:
    """The trained MaskGIT in `workdir`: (model, checkpoint header)."""
    def init(header, key):
        return init_train_state(config_of(header), header["loop"]["weight_decay"], key=key)

    header, state = checkpoint.load_run(workdir, "maskgit", init)
    return state.model, header


def generate_images(workdir: str | Path, autoencoder: str | Path, labels: np.ndarray, key: PRNGKeyArray, *,
                    batch_size: int = 256, **options) -> tuple[np.ndarray, np.ndarray]:
    """Samples of the MaskGIT in `workdir`, decoded by the tokenizer in `autoencoder` (the one whose tokens it learned):
    (token grids int32 [N, h, w], uint8 images [N, H, W, C]), one per class index in `labels` (C: unconditional).
    `options` are those of `maskgit.generate` (steps, temperature, choice_temperature, guidance)."""
    model, header = load(workdir)
    ae_model, qstate, ae_header = tokenizer_train.load(autoencoder)
    if header["task"]["tokens"]["tokenizer"] != ae_header["sha256"]:
        raise InputError(f"{workdir} was trained on tokens of another tokenizer than {autoencoder}: give the "
                         "--autoencoder whose `fsq encode` made its training tokens")
    indices = sample(model, labels, key, batch_size=batch_size, **options)
    return indices, tokenizer_train.decode_all(ae_model, qstate, indices, batch_size)
