"""Tests for fsq_ref.dense: the instance convention, each source's contract and its errors (the scenes' geometry is
checked in test_scenes.py)."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from fsq_ref import dense_tasks
from fsq_ref.common.errors import InputError
from fsq_ref.data import datasets, dense, scenes

# --- canonical_instances ------------------------------------------------------------------------------------------

THINGS = (2, 3)
labellings = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)).flatmap(
    lambda shape: st.tuples(hnp.arrays(np.int32, shape, elements=st.integers(0, 3)),
                            hnp.arrays(np.int32, shape, elements=st.integers(0, 5))))


def _segments(semantic, instance):
    """The segments as a set of frozensets of (image, flat pixel): the partition, whatever the ids (stuff: one per
    class)."""
    parts, flat = {}, lambda a: a.reshape(len(semantic), -1)
    ids = np.where(np.isin(semantic, THINGS), instance, -1)
    for n, p in zip(*np.nonzero(np.ones(flat(semantic).shape, bool))):
        parts.setdefault((n, flat(semantic)[n, p], flat(ids)[n, p]), set()).add((n, p))
    return {frozenset(s) for s in parts.values()}


@settings(max_examples=200)
@given(labellings, st.permutations(range(6)))
def test_canonical_instances_convention(labelling, relabel):
    semantic, instance = labelling
    out = dense.canonical_instances(semantic, instance, THINGS)
    assert out.dtype == np.int32 and out.shape == semantic.shape
    np.testing.assert_array_equal(dense.canonical_instances(semantic, out, THINGS), out)  # idempotent
    # A function of the segments alone: other ids for the same segments give the same result.
    np.testing.assert_array_equal(dense.canonical_instances(semantic, np.array(relabel)[instance], THINGS), out)
    assert _segments(semantic, out) == _segments(semantic, instance)  # same partition into segments
    for n in range(len(out)):
        ids = np.unique(out[n])
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))  # contiguous from 1, stuff included
        rows, cols = np.indices(out[n].shape)
        centres = [out[n].shape[0] * rows[out[n] == i].mean() + cols[out[n] == i].mean() for i in ids]
        assert centres == sorted(centres)  # numbered by H * centroid row + centroid column, as big_vision


def test_canonical_instances_numbers_stuff_as_big_vision_orders_it():
    # Stuff 0 (top row and the right column), thing 2 twice: the thing at the bottom left comes after the stuff,
    # whose centroid is higher, though its column is further left.
    semantic = np.array([[0, 0, 0], [2, 2, 0], [2, 2, 0]])
    instance = np.array([[9, 9, 9], [5, 7, 9], [5, 7, 9]])
    np.testing.assert_array_equal(dense.canonical_instances(semantic, instance, THINGS),
                                  [[1, 1, 1], [2, 3, 1], [2, 3, 1]])


def test_canonical_instances_rejects_mismatched_shapes():
    with pytest.raises(InputError, match="one shape"):
        dense.canonical_instances(np.zeros((4, 4), int), np.zeros((4, 5), int), THINGS)


def test_grey_uses_bt601_luma():
    rgb = np.array([[255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0]], np.uint8)
    out = dense_tasks.grey(rgb[None])
    assert out.shape == (1, 5, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [255, 76, 150, 29, 0])  # 0.299, 0.587, 0.114 times 255, rounded


# --- Procedural scenes -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ds():
    return dense.load("scenes:300", "train")  # more than one chunk of 256


def test_scenes_contract(ds):
    n, s = 300, 32
    assert len(ds) == n and ds.class_names == scenes.CLASSES and ds.thing_classes == (2, 3, 4)
    assert ds.images.shape == (n, s, s, 3) and ds.images.dtype == np.uint8
    assert ds.depth.shape == ds.semantic.shape == ds.instance.shape == (n, s, s)
    assert ds.depth.dtype == np.float32 and ds.semantic.dtype == ds.instance.dtype == np.int32
    assert np.isfinite(ds.depth).all() and ds.depth.min() > 0 and ds.depth.max() <= ds.max_depth
    assert ds.semantic.min() >= 0 and ds.semantic.max() < ds.num_classes
    assert 1 <= ds.instance.max() <= ds.max_instances
    np.testing.assert_array_equal(dense.canonical_instances(ds.semantic, ds.instance, (2, 3, 4)),
                                  ds.instance)
    assert set(np.unique(ds.semantic)) == set(range(5))
    assert all(ds.has(task) for task in ("depth", "colorization", "panoptic"))
    batch = ds.batch(np.array([3, 1]))
    assert sorted(batch) == ["depth", "image", "instance", "semantic"]
    np.testing.assert_array_equal(batch["image"], ds.images[[3, 1]])


def test_with_mirrors_appends_each_example_mirrored_with_its_labels():
    small = dense.load("scenes:5", "train")
    both = dense.with_mirrors(small)
    assert len(both) == 10 and both.class_names == small.class_names and both.max_depth == small.max_depth
    for name in ("images", "depth", "semantic", "instance"):
        array, doubled = getattr(small, name), getattr(both, name)
        np.testing.assert_array_equal(doubled[:5], array)
        np.testing.assert_array_equal(doubled[5:, :, ::-1], array)  # mirrored back, each is its original
    # a label stays with its pixel: the class at (row, 0) of a mirror image is the original's at (row, W - 1)
    np.testing.assert_array_equal(both.semantic[7, 3, 0], small.semantic[2, 3, -1])
    np.testing.assert_array_equal(dense.canonical_instances(both.semantic, both.instance, (2, 3, 4)), both.instance)


def test_scenes_are_deterministic_and_splits_differ(ds):
    again = dense.load("scenes:40", "train")
    np.testing.assert_array_equal(again.images, ds.images[:40])  # and a shorter set is a prefix of a longer one
    np.testing.assert_array_equal(again.depth, ds.depth[:40])
    test = dense.load("scenes:40", "test")
    assert len(test) == 4096
    small_test = dense.load("scenes:40:7", "test")  # ":N:M" sizes the test split: a prefix of the default one
    np.testing.assert_array_equal(small_test.images, test.images[:7])
    assert len(dense.load("scenes:40:7", "train")) == 40
    other_seed = dense.load("scenes:40", "train", seed=1)
    for images in (test.images[:40], other_seed.images):
        assert not any((images == image).all() for image in again.images)


@pytest.mark.parametrize("spec, message", [("scenes:0", "positive integers"), ("scenes:x", "positive integers"),
                                           ("scenes:4:0", "positive integers"), ("scenes:1:2:3", "scenes:N:M"),
                                           ("nyu", "unknown dense dataset")])
def test_bad_specs(spec, message):
    with pytest.raises(InputError, match=message):
        dense.load(spec, "train")


def test_bad_split_and_task(ds):
    with pytest.raises(InputError, match="unknown split"):
        dense.load("scenes:2", "val")
    with pytest.raises(InputError, match="unknown task"):
        ds.has("segmentation")


# --- Fashion-MNIST canvases ----------------------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.isdir(datasets.FASHION_MNIST_DIR), reason="Fashion-MNIST is not installed")
def test_fashion_mnist_panoptic():
    ds = dense.load("fashion-mnist-panoptic:64", "train")
    assert len(ds) == 64 and ds.images.shape == (64, 32, 32, 3) and ds.depth is None
    assert ds.num_classes == 11 and ds.class_names[0] == "background" and ds.thing_classes == tuple(range(1, 11))
    assert ds.has("panoptic") and not ds.has("depth")
    assert (ds.images[..., :1] == ds.images).all()  # grey in every channel
    garment = ds.semantic > 0
    assert (ds.images[..., 0][garment] > dense.GARMENT_THRESHOLD).all() and (ds.images[..., 0][~garment] == 0).all()
    counts = ds.instance.max((1, 2))
    assert counts.min() >= 2 and counts.max() <= ds.max_instances == 4  # 2-3 garments and the background
    np.testing.assert_array_equal(dense.canonical_instances(ds.semantic, ds.instance, ds.thing_classes), ds.instance)


def test_fashion_mnist_panoptic_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("FSQ_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(InputError, match="apt-get install -y dataset-fashion-mnist"):
        dense.load("fashion-mnist-panoptic", "test", data_dir=str(tmp_path))


# --- A folder of the user's own data -------------------------------------------------------------------------------

def _write_folder(root, classes=True):
    """Two 40x30 (wide) train images and one test image; labels: class 1 on the left, class 2 on the right."""
    semantic = np.zeros((30, 40), np.uint8)
    semantic[:, 20:] = 2
    semantic[:, 5:20] = 1
    instance = np.where(semantic > 0, 9 - semantic, 0).astype(np.uint8)  # raw ids 8 (left) and 7 (right)
    for split, names in (("train", ("a", "b")), ("test", ("c",))):
        for kind in ("images", "depth", "semantic", "instance"):
            (root / split / kind).mkdir(parents=True)
        for name in names:
            Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(root / split / "images" / f"{name}.png")
            Image.fromarray(semantic).save(root / split / "semantic" / f"{name}.png")
            Image.fromarray(instance).save(root / split / "instance" / f"{name}.png")
            if name == "b":  # 16-bit millimetres
                Image.fromarray(np.full((30, 40), 1234, np.uint16)).save(root / split / "depth" / "b.png")
            else:
                np.save(root / split / "depth" / f"{name}.npy", np.full((30, 40), 2.5))
    if classes:
        (root / "classes.json").write_text(json.dumps({"names": ["floor", "chair", "table"], "things": [1, 2]}))


@pytest.mark.parametrize("classes", [True, False])
def test_folder(tmp_path, classes):
    _write_folder(tmp_path, classes)
    ds = dense.load(str(tmp_path), "train", size=15)
    assert ds.images.shape == (2, 15, 15, 3) and ds.depth.shape == ds.semantic.shape == (2, 15, 15)
    np.testing.assert_allclose(ds.depth[0], 2.5)
    np.testing.assert_allclose(ds.depth[1], 1.234, rtol=1e-6)
    assert ds.max_depth == 3.0 and ds.max_instances == 2
    assert ds.class_names == (("floor", "chair", "table") if classes else ("class0", "class1", "class2"))
    assert ds.thing_classes == (1, 2)
    # The centre 30x30 crop covers columns 5..34: class 1 on its left half, class 2 on its right half.
    np.testing.assert_array_equal(ds.semantic[0], np.repeat([[1] * 7 + [2] * 8], 15, 0))
    np.testing.assert_array_equal(ds.instance[0], np.repeat([[1] * 7 + [2] * 8], 15, 0))  # renumbered left to right


def test_folder_with_depth_only(tmp_path):
    (tmp_path / "test" / "images").mkdir(parents=True)
    (tmp_path / "test" / "depth").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "test" / "images" / "x.jpg")
    np.save(tmp_path / "test" / "depth" / "x.npy", np.full((8, 8), 0.7))
    ds = dense.load(str(tmp_path), "test", size=4)
    assert ds.has("depth") and not ds.has("panoptic") and ds.semantic is None and ds.max_depth == 1.0
    assert sorted(ds.batch(np.arange(1))) == ["depth", "image"]


def test_folder_errors(tmp_path):
    with pytest.raises(InputError, match="train/images is missing"):
        dense.load(str(tmp_path), "train")
    _write_folder(tmp_path)
    (tmp_path / "train" / "depth" / "a.npy").unlink()
    with pytest.raises(InputError, match="image a has no depth map"):
        dense.load(str(tmp_path), "train")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "train" / "semantic" / "a.png")
    np.save(tmp_path / "train" / "depth" / "a.npy", np.full((30, 40), 2.5))
    with pytest.raises(InputError, match="a.png has shape \\[30, 30\\] but its image is 30x40"):
        dense.load(str(tmp_path), "train")
    (tmp_path / "test" / "instance" / "c.png").unlink()
    with pytest.raises(InputError, match="image c has no c.png in .*instance"):
        dense.load(str(tmp_path), "test")
    (tmp_path / "test" / "images" / "c.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read .*c.png"):
        dense.load(str(tmp_path), "test")
    (tmp_path / "test" / "images" / "c.png").unlink()
    with pytest.raises(InputError, match="no .png/.jpg/.jpeg images"):
        dense.load(str(tmp_path), "test")
