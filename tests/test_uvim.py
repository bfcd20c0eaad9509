"""UViM: the stage-I/stage-II interface, code dropout, stage II's causality and decoding, the task heads, training."""

import dataclasses
import math

import equinox as eqx
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings

from fsq_ref import dense_tasks, uvim
from fsq_ref.common.errors import InputError
from fsq_ref.data import dense
from fsq_ref.evaluation import dense_metrics, uvim_eval
from fsq_ref.quantizer_config import QuantizerConfig
from fsq_ref.training import presets, uvim_train

TINY = presets.ORACLE["tiny"]


@pytest.fixture(scope="module")
def scenes():
    return dense.load("scenes:64", "train", size=32)


@pytest.fixture(scope="module", params=dense_tasks.TASKS)
def task(request, scenes):
    return dense_tasks.make(request.param, scenes)


@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 8), grid=st.integers(1, 5))
@settings(deadline=None, max_examples=15)
def test_code_dropout_is_a_function_of_the_key(seed, batch, grid):
    keep = np.asarray(uvim.code_dropout_mask(jr.key(seed), batch, grid))
    assert keep.shape == (batch, grid, grid) and keep.dtype == bool
    # A training step is reproducible (and resumable) only if the mask depends on nothing but the key.
    np.testing.assert_array_equal(uvim.code_dropout_mask(jr.key(seed), batch, grid), keep)


def test_code_dropout_keeps_a_uniform_count_at_uniformly_random_places():
    # With S = 4 tokens, example b keeps the tokens whose importance (4/5, 3/5, 2/5, 1/5) exceeds u_b ~ U[0, 1]: 0 to
    # 4 of them, each count with probability 1/5, and given the count, each set of positions equally likely. Fixed
    # keys make this deterministic; the bounds are ~5 standard deviations of the sampling error.
    n, grid = 6000, 2
    keep = np.asarray(uvim.code_dropout_mask(jr.key(0), n, grid)).reshape(n, -1)
    counts = keep.sum(axis=1)
    np.testing.assert_allclose(np.bincount(counts, minlength=5) / n, 0.2, atol=0.025)
    # Each example draws its own fraction: the counts of neighbouring examples are uncorrelated.
    assert abs(np.corrcoef(counts[:-1], counts[1:])[0, 1]) < 0.06
    for c in (1, 2, 3):
        subsets = keep[counts == c]
        _, freq = np.unique(subsets, axis=0, return_counts=True)
        assert len(freq) == math.comb(4, c)  # every set of c positions occurs, equally often
        np.testing.assert_allclose(freq / len(subsets), 1 / math.comb(4, c), atol=5 * (0.25 / len(subsets)) ** 0.5)
    # Another key, another mask: two keys agree on an example's whole mask only by chance (p = 0.107 here).
    other = np.asarray(uvim.code_dropout_mask(jr.key(1), n, grid)).reshape(n, -1)
    assert np.mean(np.all(keep == other, axis=1)) < 0.107 + 0.02


def test_code_dropout_fraction_is_uniform_over_many_examples():
    keep = np.asarray(uvim.code_dropout_mask(jr.key(0), 4000, 4)).reshape(4000, -1)
    fractions = keep.mean(axis=1)
    # u ~ U[0, 1]: the kept fraction is close to uniform on {0, 1/16, ..., 1}; its mean is 1/2.
    assert abs(fractions.mean() - 0.5) < 0.02
    # Every position is dropped about equally often (the "random" variant shuffles the importance order).
    assert np.ptp(keep.mean(axis=0)) < 0.06


@given(code=st.lists(st.integers(0, 4374), min_size=1, max_size=20))
@settings(deadline=None)
def test_shift_right_is_the_only_offset(code):
    code = jnp.asarray([code], jnp.int32)
    shifted = np.asarray(uvim.shift_right(code))
    assert shifted[0, 0] == uvim.START
    np.testing.assert_array_equal(shifted[0, 1:], np.asarray(code)[0, :-1] + 1)


def _oracle(task, key, quantizer=None):
    config = TINY if quantizer is None else dataclasses.replace(TINY, quantizer=quantizer)
    return uvim_train.init_oracle_state(config, task, 1e-4, key=key)


def test_decode_code_of_encode_target_is_the_oracle_reconstruction(task, scenes, key):
    """Stage II's view of stage I (indices in, outputs out) gives what the oracle itself computes, bit for bit."""
    for quantizer in (None, QuantizerConfig("vq-split", codebook_size=64)):
        state = _oracle(task, key, quantizer)
        batch = scenes.batch(np.arange(4))
        context, target = task.context(batch), task.target(batch)
        q, _ = state.model.encode(target, context, state.qstate)
        direct = state.model.decode(q.codes, jnp.ones(q.indices.shape, bool), context)
        code = uvim.encode_target(state.model, state.qstate, target, context)
        assert code.shape == (4, TINY.grid**2) and code.dtype == jnp.int32
        via_interface = uvim.decode_code(state.model, state.qstate, code, context)
        np.testing.assert_array_equal(np.asarray(direct), np.asarray(via_interface))


@pytest.fixture(scope="module")
def fsq_oracles(scenes):
    """Two FSQ [8,5,5,5] oracles, dropped tokens as zeros and with the flag; the image context of two scenes; and
    `decode_code` jitted once."""
    task = dense_tasks.make("depth", scenes)
    quantizer = QuantizerConfig("fsq", levels=(8, 5, 5, 5))
    models = [uvim_train.init_oracle_state(dataclasses.replace(TINY, quantizer=quantizer, dropped_tokens=form), task,
                                           1e-4, key=jr.key(7)).model for form in uvim.DROPPED_TOKENS]
    return models, task.context(scenes.batch(np.arange(2))), eqx.filter_jit(uvim.decode_code)


@pytest.mark.parametrize("seed", range(4))
def test_decode_code_reads_only_the_kept_tokens(fsq_oracles, seed):
    """Two codes that agree where tokens are kept decode alike whatever the dropped tokens hold, in both forms of a
    dropped token (a random mask and random codes per seed); all kept is the default. `fsq eval`'s "no code" row drops
    every token."""
    models, context, decode = fsq_oracles
    keys = jr.split(jr.key(seed), 3)
    code, other = (jr.randint(k, (2, TINY.grid**2), 0, 1000) for k in keys[:2])
    kept = jr.bernoulli(keys[2], 0.5, code.shape)
    mixed = jnp.where(kept, code, other)
    everything = jnp.ones_like(kept)
    for model in models:
        np.testing.assert_array_equal(np.asarray(decode(model, None, code, context, kept)),
                                      np.asarray(decode(model, None, mixed, context, kept)))
        full = np.asarray(decode(model, None, code, context, everything))
        np.testing.assert_array_equal(full, np.asarray(decode(model, None, code, context)))
        # and the kept tokens do matter: with every token kept, the two codes decode apart
        assert np.abs(full - np.asarray(decode(model, None, mixed, context, everything))).max() > 0


def test_a_dropped_token_is_zeros_and_only_the_flag_form_tells_the_decoder(scenes, key):
    task = dense_tasks.make("depth", scenes)
    batch = scenes.batch(np.arange(2))
    context = task.context(batch)
    zeros = jnp.zeros((2, TINY.grid, TINY.grid, 4))  # FSQ [8,5,5,5]: the all-zero vector is the grid's centre code
    codes = zeros.at[:, 0, 0].set(0.5)
    kept = jnp.ones(codes.shape[:3], bool).at[:, 0, 0].set(False)
    quantizer = QuantizerConfig("fsq", levels=(8, 5, 5, 5))
    outputs = {}
    for form in uvim.DROPPED_TOKENS:
        config = dataclasses.replace(TINY, quantizer=quantizer, dropped_tokens=form)
        model = uvim_train.init_oracle_state(config, task, 1e-4, key=key).model
        outputs[form] = [np.asarray(model.decode(c, k, context)) for c, k in ((codes, kept), (zeros, jnp.ones_like(kept)))]
    # UViM's form: dropping the token is decoding the centre code there; with the flag, the decoder sees the difference.
    np.testing.assert_array_equal(*outputs["zeros"])
    assert np.abs(outputs["flag"][0] - outputs["flag"][1]).max() > 1e-6
    with pytest.raises(InputError, match="dropped tokens must be one of zeros, flag"):
        dataclasses.replace(TINY, dropped_tokens="mask")
    # Oracles written before the choice existed had the flag channel, and load with it.
    old = {k: v for k, v in TINY.to_dict().items() if k != "dropped_tokens"}
    assert uvim.OracleConfig.from_dict(old).dropped_tokens == "flag"


@pytest.mark.slow  # builds and compiles an oracle; test_cli_uvim trains one without context by default
def test_an_oracle_without_context_never_reads_the_input(scenes, key):
    task = dense_tasks.make("depth", scenes)
    model = uvim_train.init_oracle_state(dataclasses.replace(TINY, context=False), task, 1e-4, key=key).model
    assert model.context_encoder is None
    batch = scenes.batch(np.arange(2))
    target, context = task.target(batch), task.context(batch)
    encode, decode = eqx.filter_jit(uvim.encode_target), eqx.filter_jit(uvim.decode_code)  # one compilation each
    codes = [encode(model, None, target, c) for c in (context, -context)]
    np.testing.assert_array_equal(np.asarray(codes[0]), np.asarray(codes[1]))
    outputs = [decode(model, None, codes[0], c) for c in (context, -context)]
    np.testing.assert_array_equal(np.asarray(outputs[0]), np.asarray(outputs[1]))


def _lm(key, task, codebook_size=4375, length=16):
    return uvim.GuidingCodeLM(presets.LM["tiny"], image_size=32, in_channels=task.context_channels,
                              code_length=length, codebook_size=codebook_size, key=key)


def test_stage_two_is_causal(key, scenes):
    task = dense_tasks.make("depth", scenes)
    lm = _lm(key, task)
    image = task.context(scenes.batch(np.arange(1)))[0]
    code = jr.randint(jr.key(1), (1, 16), 0, 4375)
    logits = lm(image, uvim.shift_right(code)[0], inference=True)
    for t in (0, 5, 15):
        changed = code.at[0, t].set((code[0, t] + 1) % 4375)
        other = lm(image, uvim.shift_right(changed)[0], inference=True)
        # Token t is fed at position t + 1: positions <= t must not see it.
        np.testing.assert_allclose(np.asarray(other[:t + 1]), np.asarray(logits[:t + 1]), atol=1e-5)
        if t < 15:
            assert not np.allclose(np.asarray(other[t + 1]), np.asarray(logits[t + 1]), atol=1e-5)


def test_greedy_decoding_agrees_with_teacher_forcing(key, scenes):
    """Every greedily generated token is the arg-max of the model's logits given the tokens before it."""
    task = dense_tasks.make("depth", scenes)
    lm = _lm(key, task, codebook_size=50)
    context = task.context(scenes.batch(np.arange(6)))
    code = uvim.generate_code(lm, context, jr.key(3))
    assert code.shape == (6, 16) and int(code.min()) >= 0 and int(code.max()) < 50
    logits = jax.vmap(lambda c, i: lm(c, i, inference=True))(context, uvim.shift_right(code))
    np.testing.assert_array_equal(np.asarray(jnp.argmax(logits, axis=-1)), np.asarray(code))
    sampled = uvim.generate_code(lm, context, jr.key(3), temperature=1.0)
    assert sampled.shape == code.shape and int(sampled.max()) < 50


def test_the_held_out_loss_is_the_training_loss_without_an_update(scenes):
    task = dense_tasks.make("depth", scenes)
    state = uvim_train.init_lm_state(presets.LM["tiny"], TINY, task, 1e-4, key=jr.key(0))
    codes = np.asarray(jr.randint(jr.key(1), (len(scenes), 16), 0, 4375), np.int32)
    coded = uvim_eval.CodedData(scenes, codes)
    held_out = uvim_eval.heldout_loss(state.model, task, coded)
    # Equal logits give every code probability 1 / K.
    flat = eqx.tree_at(lambda m: (m.head.weight, m.head.bias), state.model, replace_fn=jnp.zeros_like)
    assert uvim_eval.heldout_loss(flat, task, coded) == pytest.approx(math.log(4375), rel=1e-6)
    # One batch of all the examples: the step's loss is taken before its update (the tiny preset has no dropout).
    _, stats, _ = uvim_train.make_lm_step(task, 1e-4)(state, coded.batch(np.arange(len(scenes))), jr.key(2),
                                                      jnp.float32(1e-3))
    assert held_out == pytest.approx(float(stats["loss"]), rel=1e-5)


def test_sincos_positions_start_code_places_and_image_patches_alike(scenes):
    table = np.asarray(uvim.sincos_positions(4, 8))
    # Row-major raster: place 5 is row 1, column 1; columns 0 and 2 are sin and cos of the row at frequency 1.
    np.testing.assert_allclose(table[5, [0, 2]], [math.sin(1), math.cos(1)], rtol=1e-6)
    np.testing.assert_allclose(table[:4, 0], 0.0, atol=1e-7)  # row 0 everywhere in the first row of places
    assert len(np.unique(table.round(6), axis=0)) == 16  # every place distinct
    config = dataclasses.replace(presets.LM["tiny"], patch_size=8, positions="sincos")
    lm = uvim.GuidingCodeLM(config, image_size=32, in_channels=3, code_length=16, codebook_size=10, key=jr.key(0))
    np.testing.assert_array_equal(lm.encoder_positions, lm.decoder_positions)  # 4x4 patches, 4x4 code
    with pytest.raises(InputError, match="sincos"):
        uvim.GuidingCodeLM(dataclasses.replace(config, positions="rope"), image_size=32, in_channels=3,
                           code_length=16, codebook_size=10, key=jr.key(0))


def test_the_image_encoder_moves_by_its_learning_rate_multiplier(scenes):
    task = dense_tasks.make("depth", scenes)
    batch = {"image": scenes.images[:8], "code": np.asarray(jr.randint(jr.key(1), (8, 16), 0, 4375), np.int32)}

    def moved(mult):  # each array's change over one step from the same start (Adam's first step: lr * sign-like)
        start = uvim_train.init_lm_state(presets.LM["tiny"], TINY, task, 1e-4, key=jr.key(0))
        before = jax.tree.map(np.asarray, eqx.filter(start.model, eqx.is_array))
        state, _, _ = uvim_train.make_lm_step(task, 1e-4, encoder_lr_mult=mult)(start, batch, jr.key(2),
                                                                                 jnp.float32(1e-3))
        return jax.tree.map(lambda a, b: np.asarray(a) - b, eqx.filter(state.model, eqx.is_array), before)

    base, scaled = moved(1.0), moved(3.0)
    image_part = lambda m: (m.patches, m.encoder_positions, m.encoder)  # noqa: E731
    for b, s in zip(jax.tree.leaves(image_part(base)), jax.tree.leaves(image_part(scaled))):
        np.testing.assert_allclose(s, 3.0 * b, rtol=1e-4, atol=1e-7)  # parameters round to ~1e-8
    code_part = lambda m: (m.embed, m.decoder_positions, m.decoder, m.head)  # noqa: E731
    for b, s in zip(jax.tree.leaves(code_part(base)), jax.tree.leaves(code_part(scaled))):
        np.testing.assert_array_equal(s, b)
    assert np.abs(jax.tree.leaves(image_part(base))[0]).max() > 0


def test_task_heads(task, scenes):
    batch = scenes.batch(np.arange(8))
    target = task.target(batch)
    assert target.shape == (8, 32, 32, task.target_channels)
    assert float(target.min()) >= -1.0 and float(target.max()) <= 1.0
    assert task.context(batch).shape == (8, 32, 32, task.context_channels)
    outputs = jr.normal(jr.key(0), (8, 32, 32, task.out_channels))
    assert np.isfinite(float(task.loss(outputs, batch)))
    prediction = task.predict(outputs)
    result = _score(task, prediction, batch)
    assert task.primary in result and all(np.isfinite(v) for v in result.values())
    # The target itself scores perfectly.
    truth = {k: batch[k] for k in prediction}
    perfect = _score(task, truth, batch)
    best = {"depth": ("rmse", 0.0), "colorization": ("psnr", 120.0), "panoptic": ("pq", 100.0)}[task.name]
    assert perfect[best[0]] == pytest.approx(best[1])
    assert dense_tasks.from_dict(dense_tasks.to_dict(task)) == task
    assert task.show(prediction).shape == (8, 32, 32, 3)


def _score(task, prediction, batch):
    metric = dense_metrics.for_task(task)
    metric.update(prediction, batch)
    return metric.result()


def test_depth_head_is_the_arg_max_bin_centre_or_optionally_the_expectation():
    # Two bins share the probability, the larger one at bin 10: UViM's head takes bin 10's centre; the expectation
    # lies between the two centres.
    outputs = jnp.full((1, 1, 1, dense_tasks.DEPTH_BINS), -1e9).at[0, 0, 0, 10].set(1.0).at[0, 0, 0, 30].set(0.0)
    width = 12.0 / dense_tasks.DEPTH_BINS
    arg_max = dense_tasks.Depth(max_depth=12.0).predict(outputs)["depth"]
    assert float(arg_max[0, 0, 0]) == pytest.approx(10.5 * width)
    p = 1 / (1 + math.exp(-1.0))
    expected = dense_tasks.Depth(max_depth=12.0, head="expectation").predict(outputs)["depth"]
    assert float(expected[0, 0, 0]) == pytest.approx((p * 10.5 + (1 - p) * 30.5) * width, rel=1e-5)
    with pytest.raises(InputError, match="depth head"):
        dense_tasks.Depth(max_depth=12.0, head="median")


def test_depth_loss_leaves_invalid_depth_out():
    task = dense_tasks.Depth(max_depth=12.0)
    outputs = np.random.default_rng(0).normal(size=(1, 1, 4, dense_tasks.DEPTH_BINS)).astype(np.float32)
    depth = np.array([[[3.0, 0.0, np.nan, 7.0]]], np.float32)
    loss = jax.jit(task.loss)(outputs, {"depth": depth})
    log_p = outputs[0, 0] - np.log(np.exp(outputs[0, 0]).sum(-1, keepdims=True))
    bins = (np.array([3.0, 7.0]) / 12.0 * dense_tasks.DEPTH_BINS).astype(int)  # the two valid pixels only
    assert float(loss) == pytest.approx(-(log_p[0, bins[0]] + log_p[3, bins[1]]) / 2, rel=1e-5)


def test_depth_rmse_is_per_image_then_averaged():
    # Image 0 is off by 1 m on one of its 4 pixels, image 1 by 2 m on all 4: per image sqrt(1/4) = 0.5 and 2, mean
    # 1.25 (big_vision's NYU evaluator); pooling all 8 pixels would give sqrt(17/8) = 1.46.
    true = np.full((2, 2, 2), 4.0, np.float32)
    pred = true.copy()
    pred[0, 0, 0] += 1.0
    pred[1] += 2.0
    metric = dense_metrics.for_task(dense_tasks.Depth(max_depth=12.0))
    metric.update({"depth": pred}, {"depth": true})
    got = metric.result()
    assert got["rmse"] == pytest.approx(1.25) and got["abs_rel"] == pytest.approx((0.25 / 4 + 0.5) / 2)
    assert got["delta1"] == pytest.approx((0.75 + 0.0) / 2)  # 5/4 is not < 1.25; 6/4 neither


_INVALID_DEPTH = st.sampled_from([0.0, -1.0, 13.0, np.nan, np.inf])


@given(
    true=hnp.arrays(np.float32, (2, 3, 4, 5), elements=st.floats(0.125, 10.0, width=32) | _INVALID_DEPTH),
    pred=hnp.arrays(np.float32, (2, 3, 4, 5), elements=st.floats(0.0625, 12.0, width=32)),
)
@settings(deadline=None, max_examples=40)
def test_depth_metrics_count_only_pixels_with_a_valid_true_depth(true, pred):
    # Holes in the ground truth (zero: missing in 16-bit PNGs; negative, beyond the range or not finite) are left out
    # of every metric; images without a valid pixel are left out of the average.
    metric = dense_metrics.for_task(dense_tasks.Depth(max_depth=12.0))
    for i in range(2):  # two batches: the images carry over
        metric.update({"depth": pred[i]}, {"depth": true[i]})
    got = metric.result()
    per_image = []
    for t, p in zip(true.reshape(6, -1).astype(np.float64), pred.reshape(6, -1).astype(np.float64)):
        keep = [i for i in range(t.size) if math.isfinite(t[i]) and 0 < t[i] <= 12.0]
        if keep:
            per_image.append((math.sqrt(sum((p[i] - t[i]) ** 2 for i in keep) / len(keep)),
                              sum(abs(p[i] - t[i]) / t[i] for i in keep) / len(keep),
                              sum(max(p[i] / t[i], t[i] / p[i]) < 1.25 for i in keep) / len(keep)))
    if not per_image:
        assert all(math.isnan(v) for v in got.values())
        return
    for name, value in zip(("rmse", "abs_rel", "delta1"), np.mean(per_image, axis=0)):
        assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-12)
    # A prediction equal to the truth wherever it was measured is perfect, whatever it says in the holes.
    perfect = dense_metrics.for_task(dense_tasks.Depth(max_depth=12.0))
    perfect.update({"depth": np.where(np.isfinite(true) & (true > 0), true, pred)}, {"depth": true})
    assert perfect.result() == {"rmse": 0.0, "abs_rel": 0.0, "delta1": 1.0}


def test_panoptic_instance_takes_the_class_of_its_summed_logits():
    # Instance 1 covers 3 pixels: two lean weakly to class 2, one strongly to class 1. Per-pixel arg-max would split
    # the instance into two classes; UViM's post-processing gives all three class 1 (summed logits: 5 against 2).
    task = dense_tasks.Panoptic(num_classes=3, max_instances=2, thing_classes=(1, 2))
    semantic = jnp.array([[[0.0, 5.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [3.0, 0.0, 0.0]]])  # [1, 4, K=3]
    instance = jnp.array([[[0.0, 9.0, 0.0], [0.0, 9.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0]]])  # ids 1, 1, 1, 2
    prediction = task.predict(jnp.concatenate([semantic, instance], axis=-1)[:, None])
    np.testing.assert_array_equal(prediction["instance"][0, 0], [1, 1, 1, 2])
    np.testing.assert_array_equal(prediction["semantic"][0, 0], [1, 1, 1, 0])
    assert np.argmax(semantic, axis=-1).tolist() == [[1, 2, 2, 0]]


def test_every_grey_has_zero_chroma_and_one_histogram_bin():
    greys = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=-1)  # [256, 1, 3]: (v, v, v)
    cb, cr = dense_metrics.cbcr(greys)
    assert np.all(cb == 0) and np.all(cr == 0)
    for bins in (4, 8, 16):
        assert len(np.unique(dense_metrics.chroma_bins(greys, bins))) == 1


def test_colour_distance_sees_washed_out_colour(scenes):
    images = scenes.images[:64]
    hist = dense_metrics.chroma_histograms(images)
    np.testing.assert_allclose(hist.sum(axis=1), 1.0)
    task = dense_tasks.Colorization()
    batch = scenes.batch(np.arange(64))
    same = _score(task, {"image": images}, batch)["colour_fd"]
    grey = _score(task, task.baseline(batch), batch)["colour_fd"]
    assert same == pytest.approx(0.0, abs=1e-6) and grey > 1.0


# Panoptic by default (the richest head); all three with -m slow. test_cli_uvim trains every task's oracle anyway.
@pytest.mark.parametrize("name", [pytest.param(t, marks=[] if t == "panoptic" else pytest.mark.slow)
                                  for t in dense_tasks.TASKS])
def test_oracle_training_lowers_the_loss(name, scenes):
    task = dense_tasks.make(name, scenes)
    state = _oracle(task, jr.key(0))
    step = uvim_train.make_oracle_step(task, 1e-4)
    batch = scenes.batch(np.arange(8))
    losses = []
    for i in range(30):
        state, stats, hist = step(state, batch, jr.key(i), jnp.float32(3e-3))
        losses.append(float(stats["task_loss"]))
    assert int(hist.sum()) == 8 * TINY.grid**2
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_stage_two_training_learns_the_codes(scenes):
    task = dense_tasks.make("depth", scenes)
    state = uvim_train.init_lm_state(presets.LM["tiny"], TINY, task, 1e-4, key=jr.key(0))
    step = uvim_train.make_lm_step(task, 1e-4)
    batch = {"image": scenes.images[:8], "code": np.asarray(jr.randint(jr.key(1), (8, 16), 0, 4375), np.int32)}
    first = None
    for i in range(60):
        state, stats, _ = step(state, batch, jr.key(i), jnp.float32(3e-3))
        first = first or float(stats["loss"])
    assert float(stats["loss"]) < 0.5 * first


def test_an_oracles_seed_seeds_its_training_and_its_data_seed_the_scenes():
    def scenes_of(**seeds):
        task = uvim_train.make_oracle_task(TINY, "depth", "scenes:16:8", None, batch_size=4, weight_decay=0.0, **seeds)
        return task.train_ds.batch(np.arange(16))["depth"], task.test_ds.batch(np.arange(8))["depth"]

    default = scenes_of(seed=0)
    for same, other in zip(default, scenes_of(seed=1)):  # another training run on the same scenes
        np.testing.assert_array_equal(same, other)
    for same, other in zip(default, scenes_of(seed=0, data_seed=1)):
        assert not np.array_equal(same, other)
