"""Tests for fsq_ref.maskgit: vocabulary, schedules, training masks and loss, decoding, and the training task."""

import dataclasses
import itertools
import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsq_ref import maskgit
from fsq_ref.common.errors import InputError
from fsq_ref.training import maskgit_train, presets, train

K, CLASSES, GRID = 16, 3, (3, 4)
S = GRID[0] * GRID[1]


@pytest.fixture(scope="module")
def config():
    return presets.maskgit("tiny", codebook_size=K, num_classes=CLASSES, grid=GRID)


@pytest.fixture(scope="module")
def model(config):
    return maskgit.MaskGIT(config, key=jr.key(0))


def test_vocabulary_layout(config, model):
    assert [int(config.class_token(c)) for c in range(CLASSES)] == [16, 17, 18]
    assert config.unconditional == CLASSES and int(config.class_token(config.unconditional)) == 19
    assert config.mask_token == 20 and config.vocab_size == 21 == model.embed.weight.shape[0]
    assert model.head.out_features == K and model.position.shape == (S + 1, config.dim)


@pytest.mark.parametrize("name", sorted(presets.MASKGIT))
def test_presets_build(name):
    config = presets.maskgit(name, codebook_size=1000, num_classes=10, grid=(7, 7))
    # eval_shape: the paper's 24 layers are traced without allocating them.
    model = eqx.filter_eval_shape(maskgit.MaskGIT, config, key=jr.key(0))
    tokens = jax.ShapeDtypeStruct((config.seq_len,), jnp.int32)
    assert eqx.filter_eval_shape(model, tokens, jnp.int32(0)).shape == (49, 1000)
    assert maskgit.MaskGITConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config  # as in a header
    with pytest.raises(InputError, match="unknown preset"):
        presets.maskgit("huge", codebook_size=1000, num_classes=10, grid=(7, 7))


@settings(deadline=None)
@given(st.floats(0, 1), st.floats(0, 1))
def test_mask_ratio_is_monotone_from_one_to_zero(a, b):
    a, b = min(a, b), max(a, b)
    assert float(maskgit.mask_ratio(a)) >= float(maskgit.mask_ratio(b))
    assert float(maskgit.mask_ratio(0.0)) == 1.0 and float(maskgit.mask_ratio(1.0)) == 0.0


@settings(deadline=None)
@given(st.integers(1, 16).flatmap(lambda steps: st.tuples(st.just(steps), st.integers(steps, 1024))))
def test_masked_count_falls_strictly_to_zero(steps_and_unknown):
    steps, unknown = steps_and_unknown
    counts = [unknown]
    for step in range(steps):
        counts.append(int(maskgit.num_still_masked(step, steps, unknown, counts[-1])))
    assert counts[-1] == 0 and all(a > b for a, b in zip(counts, counts[1:]))


@settings(deadline=None)
@given(st.integers(1, 16), st.integers(0, 40))
def test_masked_count_keeps_one_token_masked_until_the_last_step(steps, unknown):
    # MaskGIT's decoder: each step but the last decodes at least one token while two or more are masked, and keeps at
    # least one masked, so with fewer unknowns than steps the last one waits (resampled) for the final step.
    counts = [unknown]
    for step in range(steps):
        counts.append(int(maskgit.num_still_masked(step, steps, unknown, counts[-1])))
    assert counts[-1] == 0 and all(a >= b for a, b in zip(counts, counts[1:]))
    before_last = counts[1:-1]
    assert all(c >= min(unknown, 1) for c in before_last)
    assert all(b < a for a, b in zip(counts, before_last) if a >= 2)
    if 1 <= unknown < steps:
        assert counts[-2] == 1  # the lone remaining token is decided by the last step, not before


@pytest.mark.parametrize("seq_len", [1, 5, 12, 49])
def test_coding_schedule_reveals_every_position_once(seq_len):
    known = maskgit_train.coding_schedule(seq_len)
    assert known[0] == 0 and known[-1] == seq_len and np.all(np.diff(known) >= 0)
    assert len(known) == maskgit_train.CODING_STEPS + 1


def test_code_lengths_are_a_valid_code():
    # Every sequence of a 1x2 grid over 3 codes: the code lengths of a (random) model satisfy Kraft's equality, as
    # the lengths of a probability distribution over all 9 sequences do; a model that knows nothing costs log2 K.
    config = presets.maskgit("tiny", codebook_size=3, num_classes=1, grid=(1, 2))
    model = maskgit.MaskGIT(config, key=jr.key(3))
    every = np.array(list(itertools.product(range(3), repeat=2)), np.int32).reshape(9, 1, 2)
    bits = np.array([maskgit_train.bits_per_token(model, grid[None]) * 2 for grid in every])
    assert np.sum(2.0 ** -bits) == pytest.approx(1.0, abs=1e-4) and bits.std() > 0.01
    knows_nothing = eqx.tree_at(lambda m: (m.head.weight, m.head.bias), model,
                                (jnp.zeros_like(model.head.weight), jnp.zeros_like(model.head.bias)))
    assert maskgit_train.bits_per_token(knows_nothing, every) == pytest.approx(math.log2(3), rel=1e-5)


def test_training_masks_cover_at_least_the_minimum_fraction():
    for seq_len in (1, 12, 49, 256):
        masks = jax.vmap(maskgit.random_mask, (0, None))(jr.split(jr.key(seq_len), 2000), seq_len)
        counts = np.asarray(masks.sum(-1))
        assert counts.min() >= math.ceil(0.45 * seq_len - 1e-6) and counts.max() <= seq_len
        if seq_len >= 49:  # positions are chosen uniformly: every position masked about equally often
            assert np.ptp(np.asarray(masks.mean(0))) < 0.1 and len(np.unique(counts)) > seq_len // 3


def test_loss_counts_masked_positions_only(key):
    logits_key, target_key, mask_key = jr.split(key, 3)
    logits = jr.normal(logits_key, (2, S, K))
    targets = jr.randint(target_key, (2, S), 0, K)
    masked = jr.bernoulli(mask_key, 0.5, (2, S)).at[0, 0].set(True).at[0, 1].set(False)
    loss, aux = maskgit_train.masked_token_loss(logits, targets, masked)
    other_unmasked = targets.at[0, 1].set((targets[0, 1] + 1) % K)
    assert maskgit_train.masked_token_loss(logits, other_unmasked, masked)[0] == loss
    other_masked = targets.at[0, 0].set((targets[0, 0] + 1) % K)
    assert maskgit_train.masked_token_loss(logits, other_masked, masked)[0] != loss
    assert 0.0 <= aux["accuracy"] <= 1.0 and aux["nll"] > 0.0


def _dataset(n, seed=0):
    """n token grids whose content is a function of the class, so that they can be learned."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n).astype(np.int32)
    tokens = (labels[:, None, None] * 5 + np.arange(S).reshape(GRID) % 5).astype(np.int32)
    return tokens, labels


def test_a_few_steps_overfit_a_handful_of_sequences(config):
    tokens, labels = _dataset(8)
    state = maskgit_train.init_train_state(config, maskgit_train.WEIGHT_DECAY, key=jr.key(1))
    before = maskgit_train.evaluate(state.model, tokens, labels, key=jr.key(0))
    step = maskgit_train.make_step(maskgit_train.WEIGHT_DECAY)
    for i in range(40):
        state, stats, hist = step(state, (tokens, labels), jr.key(i), jnp.float32(3e-3))
    after = maskgit_train.evaluate(state.model, tokens, labels, key=jr.key(0))
    assert after["loss"] < 0.5 * before["loss"] and after["accuracy"] > 0.9
    # What the model learned shortens the code: under half the bits of the untrained model.
    untrained = maskgit.MaskGIT(config, key=jr.key(1))
    assert maskgit_train.bits_per_token(state.model, tokens) < 0.5 * maskgit_train.bits_per_token(untrained, tokens)
    assert hist.dtype == jnp.int32 and hist.shape == (K,) and hist.sum() >= math.ceil(0.45 * S) * 8
    assert maskgit_train.evaluate(state.model, tokens, labels, key=jr.key(0), batch_size=3) == pytest.approx(after)


def test_generation_inpaints_and_is_deterministic(config, model, key):
    B = 4
    known = jr.bernoulli(key, 0.4, (B, S))
    tokens = jnp.where(known, jr.randint(key, (B, S), 0, K), config.mask_token)
    labels = jnp.array([0, 1, 2, config.unconditional])
    out = maskgit.generate(model, tokens, labels, jr.key(1), steps=6)
    assert out.shape == (B, S) and out.dtype == jnp.int32
    assert jnp.all(jnp.where(known, out == tokens, True)) and jnp.all((out >= 0) & (out < K))
    assert jnp.array_equal(out, maskgit.generate(model, tokens, labels, jr.key(1), steps=6))
    fresh = maskgit.generate(model, jnp.full((B, S), config.mask_token), labels, jr.key(2), guidance=0.2)
    assert jnp.all((fresh >= 0) & (fresh < K))


def test_guidance_mixes_the_conditional_and_unconditional_logits(config, model):
    # `generate` guides the features before the head; that must be the same as guiding the logits.
    labels = jnp.array([0, 2, 1, 0])
    tokens = jnp.full((4, S), config.mask_token)

    def guided_logits(x):
        cond = maskgit.batch_logits(model, x, labels)
        free = maskgit.batch_logits(model, x, jnp.full_like(labels, config.unconditional))
        return cond + 1.5 * (cond - free)

    expected = maskgit.decode(tokens, jr.key(4), guided_logits, mask_token=config.mask_token, steps=4)
    assert jnp.array_equal(maskgit.generate(model, tokens, labels, jr.key(4), steps=4, guidance=1.5), expected)


def test_decoding_samples_from_the_logits(config):
    # A stand-in for the model that is sure of code 3 everywhere: every unknown position becomes 3.
    tokens = jnp.full((2, S), config.mask_token).at[:, 0].set(7)
    def sure_of_3(x):
        return jnp.broadcast_to(jnp.where(jnp.arange(K) == 3, 50.0, 0.0), (*x.shape, K))

    out = maskgit.decode(tokens, jr.key(0), sure_of_3, mask_token=config.mask_token, steps=5)
    assert jnp.all(out[:, 0] == 7) and jnp.all(out[:, 1:] == 3)


def test_task_trains_with_the_loop_and_loads(config, tmp_path):
    tokens, labels = _dataset(32)
    eval_tokens, eval_labels = _dataset(8, seed=1)
    task = maskgit_train.MaskGITTask(config, tokens, labels, eval_tokens=eval_tokens, eval_labels=eval_labels,
                               batch_size=8, seed=0, weight_decay=maskgit_train.WEIGHT_DECAY, header={"file": "t.npz"})
    loop = train.LoopConfig(steps=3, batch_size=8, log_every=1, warmup_steps=1, weight_decay=maskgit_train.WEIGHT_DECAY)
    state, result = train.run(task, tmp_path, loop, echo=lambda s: None)
    assert set(result) == {"loss", "nll", "accuracy"} and result == task.evaluate(state, tmp_path)
    model, header = maskgit_train.load(tmp_path)
    assert header["kind"] == "maskgit" and header["step"] == 3
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(state.model)):
        np.testing.assert_array_equal(a, b)
    # Batches are a function of the step alone, so a resumed run sees the same ones.
    resumed = next(task.batches(5))
    expected = next(itertools.islice(task.batches(0), 5, None))
    assert all(np.array_equal(a, b) for a, b in zip(resumed, expected))


def test_task_rejects_tokens_that_do_not_fit(config):
    tokens, labels = _dataset(8)
    kwargs = dict(eval_tokens=tokens, eval_labels=labels, batch_size=4, seed=0, weight_decay=0.0, header={})
    with pytest.raises(InputError, match="must lie in"):
        maskgit_train.MaskGITTask(config, tokens + K, labels, **kwargs)
    with pytest.raises(InputError, match=r"\[N, 3, 4\]"):
        maskgit_train.MaskGITTask(config, tokens.reshape(8, 4, 3), labels, **kwargs)
