"""UViM: the stage-I/stage-II interface, code dropout, stage II's causality and decoding, the task heads, training."""

import dataclasses
import math

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings

from fsq_ref import dense, dense_tasks, presets, uvim, uvim_train
from fsq_ref.quantizers import QuantizerConfig

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
    metric = task.metric()
    metric.update(prediction, batch)
    return metric.result()


def test_depth_prediction_is_the_expected_bin_centre():
    task = dense_tasks.Depth(max_depth=12.0)
    outputs = jnp.full((1, 1, 1, dense_tasks.DEPTH_BINS), -1e9).at[0, 0, 0, 10].set(0.0)
    assert float(task.predict(outputs)["depth"][0, 0, 0]) == pytest.approx(10.5 * 12.0 / dense_tasks.DEPTH_BINS)


_INVALID_DEPTH = st.sampled_from([0.0, -1.0, np.nan, np.inf])


@given(
    true=hnp.arrays(np.float32, (2, 3, 4, 5), elements=st.floats(0.125, 10.0, width=32) | _INVALID_DEPTH),
    pred=hnp.arrays(np.float32, (2, 3, 4, 5), elements=st.floats(0.0, 12.0, width=32)),
)
@settings(deadline=None, max_examples=40)
def test_depth_metrics_count_only_pixels_with_a_valid_true_depth(true, pred):
    # Holes in the ground truth (zero: missing in 16-bit PNGs; negative or not finite) are left out of both metrics.
    metric = dense_tasks.Depth(max_depth=12.0).metric()
    for i in range(2):  # two batches: the sums carry over
        metric.update({"depth": pred[i]}, {"depth": true[i]})
    got = metric.result()
    t, p = true.astype(np.float64).ravel(), pred.astype(np.float64).ravel()
    keep = [i for i in range(t.size) if math.isfinite(t[i]) and t[i] > 0]
    if not keep:
        assert math.isnan(got["rmse"]) and math.isnan(got["abs_rel"])
        return
    rmse = math.sqrt(sum((p[i] - t[i]) ** 2 for i in keep) / len(keep))
    abs_rel = sum(abs(p[i] - t[i]) / t[i] for i in keep) / len(keep)
    assert got["rmse"] == pytest.approx(rmse, rel=1e-12, abs=1e-12)
    assert got["abs_rel"] == pytest.approx(abs_rel, rel=1e-12, abs=1e-12)
    # A prediction equal to the truth wherever it was measured scores 0 on both, whatever it says in the holes.
    perfect = dense_tasks.Depth(max_depth=12.0).metric()
    perfect.update({"depth": np.where(np.isfinite(true) & (true > 0), true, pred)}, {"depth": true})
    assert perfect.result() == {"rmse": 0.0, "abs_rel": 0.0}


def test_colour_distance_sees_washed_out_colour(scenes):
    images = scenes.images[:64]
    hist = dense_tasks.chroma_histograms(images)
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
