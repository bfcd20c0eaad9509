"""Tests for fsq_ref.panoptic: hand-computed PQ values, and the properties that the definition implies."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fsq_ref.common.errors import InputError
from fsq_ref.data.dense import canonical_instances
from fsq_ref.evaluation import panoptic

# Classes: 0 background and 1 grass are stuff, 2 cat and 3 dog are things.
NAMES, THINGS = ("background", "grass", "cat", "dog"), (2, 3)


def pq(pred_semantic, pred_instance, true_semantic, true_instance):
    arrays = [np.asarray(a)[None] if np.ndim(a) == 2 else np.asarray(a)
              for a in (pred_semantic, pred_instance, true_semantic, true_instance)]
    return panoptic.panoptic_quality(*arrays, num_classes=4, thing_classes=THINGS, class_names=NAMES)


def test_segments_ignore_stuff_ids_and_never_span_images():
    semantic = np.array([[[1, 1, 2, 2]], [[1, 1, 2, 2]]])
    instance = np.array([[[4, 5, 1, 2]], [[0, 0, 1, 1]]])
    segment, classes = panoptic.segments(semantic, instance, THINGS)
    # Image 0: grass (one segment despite ids 4, 5), cat 1, cat 2; image 1: grass, cat 1.
    np.testing.assert_array_equal(segment, [[[0, 0, 1, 2]], [[3, 3, 4, 4]]])
    np.testing.assert_array_equal(classes, [1, 2, 2, 1, 2])


def test_perfect_prediction_and_permuted_ids():
    semantic = np.zeros((4, 4), int)
    semantic[:2, :2] = semantic[2:, 2:] = 2
    instance = np.where(semantic == 2, 1, 0)
    instance[2:, 2:] = 2
    assert pq(semantic, instance, semantic, instance)["pq"] == 1.0
    swapped = np.choose(instance, [0, 9, 5])  # cat 1 -> 9, cat 2 -> 5
    result = pq(semantic, swapped, semantic, instance)
    assert result["pq"] == result["sq"] == result["rq"] == 1.0
    assert result["per_class"]["cat"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "tp": 2, "fp": 0, "fn": 0}


def test_everything_background():
    # 6x6 truth: a 2x2 cat and a 1x3 dog on background (29 pixels); the prediction is all background (36 pixels).
    # background: IoU 29/36 > 0.5, a TP: PQ = 29/36. cat and dog: one FN each, PQ 0. Mean over the 3 classes.
    semantic = np.zeros((6, 6), int)
    semantic[:2, :2], semantic[5, :3] = 2, 3
    instance = (semantic > 1).astype(int)
    result = pq(np.zeros_like(semantic), np.zeros_like(semantic), semantic, instance)
    assert result["pq"] == pytest.approx(29 / 36 / 3)
    assert result["sq"] == pytest.approx(29 / 36 / 3) and result["rq"] == pytest.approx(1 / 3)
    assert result["pq_stuff"] == pytest.approx(29 / 36) and result["pq_things"] == 0.0
    assert result["per_class"]["dog"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert "grass" not in result["per_class"]  # a class that occurs nowhere does not count


@pytest.mark.parametrize("first_piece, cat_pq", [
    # A 10-pixel cat predicted as two pieces. 6 + 4: the 6-pixel piece has IoU 0.6 > 0.5, a TP; the other piece is
    # an FP: PQ = 0.6 / (1 + 1/2) = 0.4 (SQ 0.6, RQ 2/3). 5 + 5: IoU 0.5 is not > 0.5, so no match: 2 FP, 1 FN, PQ 0.
    (6, 0.4), (5, 0.0)])
def test_instance_split_in_two(first_piece, cat_pq):
    true_semantic = np.zeros((4, 5), int)
    true_semantic[:2] = 2
    true_instance = (true_semantic == 2).astype(int)
    pred_instance = true_instance.copy()
    pred_instance[:2].flat[first_piece:] = 2
    result = pq(true_semantic, pred_instance, true_semantic, true_instance)
    cat = result["per_class"]["cat"]
    assert cat["pq"] == pytest.approx(cat_pq) and (cat["tp"], cat["fp"], cat["fn"]) == (
        (1, 1, 0) if first_piece == 6 else (0, 2, 1))
    assert result["pq"] == pytest.approx((1 + cat_pq) / 2)  # the background is perfect


def test_false_positive_only_class():
    # Truth all background; the prediction calls one pixel a dog. background: IoU 15/16, a TP. dog: 1 FP, PQ 0; it
    # counts, because it occurs in the prediction. PQ = (15/16 + 0) / 2.
    pred_semantic = np.zeros((4, 4), int)
    pred_semantic[0, 0] = 3
    result = pq(pred_semantic, pred_semantic // 3, np.zeros((4, 4), int), np.zeros((4, 4), int))
    assert result["pq"] == pytest.approx(15 / 32)
    assert result["per_class"]["dog"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 0}


def test_stuff_is_one_segment_per_class():
    # Truth: grass in columns 0 and 3 (one segment of 8 pixels, though not connected), background in columns 1-2.
    # Prediction: grass in column 0 only. grass: IoU 4/8 = 0.5, no match: PQ 0. background: IoU 8/12, PQ 2/3.
    true_semantic = np.zeros((4, 4), int)
    true_semantic[:, [0, 3]] = 1
    pred_semantic = np.zeros((4, 4), int)
    pred_semantic[:, 0] = 1
    result = pq(pred_semantic, np.zeros((4, 4), int), true_semantic, np.zeros((4, 4), int))
    assert result["pq"] == pytest.approx(1 / 3) and np.isnan(result["pq_things"])
    # Instance ids on stuff are ignored: scattering ids over the grass changes nothing.
    noisy = np.arange(16).reshape(4, 4)
    assert pq(true_semantic, noisy, true_semantic, np.zeros((4, 4), int))["pq"] == 1.0


def test_bad_input():
    ones = np.ones((1, 2, 2), int)
    with pytest.raises(InputError, match="there are 4 classes"):
        pq(ones * 4, ones, ones, ones)
    with pytest.raises(InputError, match="one shape"):
        pq(ones, ones, ones, np.ones((1, 2, 3), int))
    with pytest.raises(InputError, match="non-negative"):
        pq(ones, -ones, ones, ones)


# --- Properties ----------------------------------------------------------------------------------------------------

def batches(n=None):
    shapes = st.tuples(st.integers(1, 3) if n is None else st.just(n), st.integers(1, 5), st.integers(1, 5))
    return shapes.flatmap(lambda shape: st.tuples(*(hnp.arrays(np.int64, shape, elements=st.integers(0, 3))
                                                    for _ in range(4))))


def permute_ids(instance, seed):
    """Applies one permutation of the id values 0..3 to the whole batch: the segments stay the same."""
    return np.random.default_rng(seed).permutation(4)[instance]


@settings(max_examples=150)
@given(batches(), st.integers(0, 1000), st.booleans())
def test_properties(maps, seed, copy_truth):
    pred_semantic, pred_instance, true_semantic, true_instance = maps
    if copy_truth:  # make "prediction == truth up to ids" common enough to test both directions of the iff
        pred_semantic, pred_instance = true_semantic, permute_ids(true_instance, seed)
    result = pq(pred_semantic, pred_instance, true_semantic, true_instance)
    for key in ("pq", "sq", "rq"):
        assert 0 <= result[key] <= 1
    for scores in result["per_class"].values():
        assert scores["pq"] == pytest.approx(scores["sq"] * scores["rq"])
    permuted = pq(pred_semantic, permute_ids(pred_instance, seed + 1), true_semantic, permute_ids(true_instance, seed))
    assert permuted["pq"] == pytest.approx(result["pq"])
    same = (pred_semantic == true_semantic).all() and (
        canonical_instances(pred_semantic, pred_instance, THINGS)
        == canonical_instances(true_semantic, true_instance, THINGS)).all()
    assert (result["pq"] == 1.0) == same
    assert same or not copy_truth


@settings(max_examples=100)
@given(batches(), st.integers(1, 3))
def test_accumulating_batches_equals_one_call(maps, cut):
    metric = panoptic.PanopticQuality(4, THINGS, NAMES)
    cut = min(cut, len(maps[0]))
    metric.update(*(m[:cut] for m in maps))
    metric.update(*(m[cut:] for m in maps))
    together, one_call = metric.result(), pq(*maps)
    assert together["per_class"].keys() == one_call["per_class"].keys()
    for name, scores in together["per_class"].items():
        assert scores == pytest.approx(one_call["per_class"][name])
    assert together["pq"] == pytest.approx(one_call["pq"])
