"""Tests for fsq_ref.data: every source's contract, the error messages, and the determinism that resume relies on."""

import gzip
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fsq_ref.common.errors import InputError
from fsq_ref.data import datasets


def _check_batch(ds, images, labels, b):
    assert images.shape == (b, *ds.image_shape) and images.dtype == np.uint8
    if ds.num_classes is None:
        assert labels is None
    else:
        assert labels.shape == (b,) and labels.dtype == np.int32
        assert labels.min() >= 0 and labels.max() < ds.num_classes


# --- Fashion-MNIST ------------------------------------------------------------------------------------------------

def _fashion_mnist_or_skip(split, **kwargs):
    try:
        return datasets.load("fashion-mnist", split, **kwargs)
    except InputError as e:
        pytest.skip(f"Fashion-MNIST is not installed ({e})")


@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_shapes(split, n):
    ds = _fashion_mnist_or_skip(split)
    assert len(ds) == n and ds.image_shape == (28, 28, 1)
    assert ds.num_classes == len(datasets.FASHION_MNIST_CLASSES) == 10
    idx = np.random.default_rng(0).choice(n, 500, replace=False)
    images, labels = ds.get(idx)
    _check_batch(ds, images, labels, 500)
    assert len(np.unique(labels)) == 10 and images.max() > 200  # real content, not zeros


def test_fashion_mnist_converts_size_and_channels():
    ds = _fashion_mnist_or_skip("test", image_size=32, channels=3)
    images, labels = ds.get(np.arange(4))
    _check_batch(ds, images, labels, 4)
    assert ds.image_shape == (32, 32, 3)
    assert (images[..., 0] == images[..., 1]).all()  # gray copied into every channel


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("FSQ_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(InputError, match="apt-get install -y dataset-fashion-mnist") as e:
        datasets.load("fashion-mnist", data_dir=str(tmp_path))
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def _write_idx(folder, prefix, images, labels, gz=True):
    opener, suffix = (gzip.open, ".gz") if gz else (open, "")
    with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + np.array(images.shape, ">u4").tobytes() + images.tobytes())
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + np.array(labels.shape, ">u4").tobytes() + labels.tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_idx_parsing_from_data_dir(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    _write_idx(tmp_path, "t10k", images, labels, gz)
    ds = datasets.load("fashion-mnist", "test", data_dir=str(tmp_path))
    got_images, got_labels = ds.get(np.arange(7))
    np.testing.assert_array_equal(got_images[..., 0], images)
    np.testing.assert_array_equal(got_labels, labels)


def test_idx_corrupt_files_are_reported(tmp_path):
    images = np.zeros((3, 28, 28), np.uint8)
    _write_idx(tmp_path, "t10k", images, np.zeros(3, np.uint8), gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(InputError, match="truncated"):
        datasets.load("fashion-mnist", "test", data_dir=str(tmp_path))
    path.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(InputError, match="magic number"):
        datasets.load("fashion-mnist", "test", data_dir=str(tmp_path))


# --- procedural ---------------------------------------------------------------------------------------------------

def test_procedural_is_deterministic_and_splits_differ():
    a, b = datasets.load("procedural:300", seed=3), datasets.load("procedural:300", seed=3)
    idx = np.arange(300)
    np.testing.assert_array_equal(a.get(idx)[0], b.get(idx)[0])
    np.testing.assert_array_equal(a.get(idx)[1], b.get(idx)[1])
    test = datasets.load("procedural:300", "test", seed=3)
    other_seed = datasets.load("procedural:300", seed=4)
    assert not np.array_equal(a.get(idx)[0], test.get(idx)[0])
    assert not np.array_equal(a.get(idx)[0], other_seed.get(idx)[0])


def test_procedural_defaults_and_class_balance():
    train, test = datasets.load("procedural"), datasets.load("procedural", "test")
    assert (len(train), len(test)) == (2048, 512) and train.image_shape == (28, 28, 1) and train.num_classes == 10
    images, labels = train.get(np.arange(len(train)))
    _check_batch(train, images, labels, len(train))
    counts = np.bincount(labels, minlength=10)
    assert counts.max() - counts.min() <= 1
    # Classes must differ visually: the mean image of each class is far from every other class's.
    means = np.stack([images[labels == c].mean(0) for c in range(10)]).reshape(10, -1)
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(10, dtype=bool)].min() > 100


def test_procedural_honours_size_and_channels():
    ds = datasets.load("procedural:20", image_size=40, channels=3)
    images, labels = ds.get(np.arange(20))
    assert ds.image_shape == (40, 40, 3)
    _check_batch(ds, images, labels, 20)


@pytest.mark.parametrize("spec", ["procedural:0", "procedural:x", "procedural:-3"])
def test_procedural_bad_count(spec):
    with pytest.raises(InputError, match="procedural:N"):
        datasets.load(spec)


# --- .npz ---------------------------------------------------------------------------------------------------------

def test_npz_round_trip_and_disjoint_splits(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (50, 12, 10), dtype=np.uint8)
    labels = np.arange(50) % 5
    path = str(tmp_path / "d.npz")
    np.savez(path, images=images, labels=labels)
    full = datasets.load(path, "all")
    got_images, got_labels = full.get(np.arange(50))
    np.testing.assert_array_equal(got_images[..., 0], images)
    np.testing.assert_array_equal(got_labels, labels)
    assert full.num_classes == 5 and full.image_shape == (12, 10, 1)
    # Images are identified by content to check that the two splits partition the data.
    train, test = datasets.load(path, "train", seed=2), datasets.load(path, "test", seed=2)
    assert (len(train), len(test)) == (45, 5)
    seen = [bytes(x) for ds in (train, test) for x in ds.get(np.arange(len(ds)))[0]]
    assert sorted(seen) == sorted(bytes(x[..., None]) for x in images)
    assert not np.array_equal(test.get(np.arange(5))[0], datasets.load(path, "test", seed=3).get(np.arange(5))[0])


def test_npz_without_labels_and_resized(tmp_path):
    path = str(tmp_path / "d.npz")
    np.savez(path, images=np.full((20, 8, 8, 3), 200, np.uint8))
    ds = datasets.load(path, image_size=16, channels=1)
    images, labels = ds.get(np.arange(3))
    assert ds.num_classes is None and labels is None and images.shape == (3, 16, 16, 1)
    assert abs(int(images.mean()) - 200) <= 1


@pytest.mark.parametrize("arrays, message", [
    ({"pixels": np.zeros((4, 8, 8), np.uint8)}, "no array 'images'"),
    ({"images": np.zeros((4, 8, 8), np.float32)}, "must be uint8"),
    ({"images": np.zeros((4, 8, 8, 2), np.uint8)}, "C 1 or 3"),
    ({"images": np.zeros((4, 8, 8), np.uint8), "labels": np.zeros(3, int)}, "'labels' must be"),
    ({"images": np.zeros((4, 8, 8), np.uint8), "labels": -np.ones(4, int)}, "'labels' must be"),
])
def test_npz_validation(tmp_path, arrays, message):
    path = str(tmp_path / "d.npz")
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message):
        datasets.load(path, "all")


# --- image folders ------------------------------------------------------------------------------------------------

def _write_png(path, size, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_image_folder_classes_resize_crop_and_channels(tmp_path):
    for i in range(10):
        _write_png(tmp_path / "cats" / f"{i}.png", (40, 20), (255, 0, 0))
        _write_png(tmp_path / "dogs" / "nested" / f"{i}.png", (20, 30), (0, 0, 255))
    ds = datasets.load(str(tmp_path), "all", image_size=16)
    assert len(ds) == 20 and ds.num_classes == 2 and ds.class_names == ("cats", "dogs")
    images, labels = ds.get(np.arange(20))
    _check_batch(ds, images, labels, 20)
    assert images.shape == (20, 16, 16, 3)
    np.testing.assert_array_equal(labels, [0] * 10 + [1] * 10)
    assert (images[labels == 0, ..., 0] > 250).all() and (images[labels == 1, ..., 2] > 250).all()
    gray = datasets.load(str(tmp_path), "test", channels=1)
    images, labels = gray.get(np.arange(len(gray)))
    assert len(gray) == 2 and images.shape == (2, 64, 64, 1)


def test_image_folder_unlabelled(tmp_path):
    for i in range(3):
        _write_png(tmp_path / f"{i}.jpg", (8, 8), (10, 20, 30))
    ds = datasets.load(str(tmp_path), "all")
    assert ds.num_classes is None and ds.get(np.arange(3))[1] is None


def test_image_folder_is_lazy_and_names_unreadable_files(tmp_path, monkeypatch):
    for i in range(10):
        _write_png(tmp_path / f"{i}.png", (8, 8), (0, 0, 0))
    (tmp_path / "5.png").write_bytes(b"not a png")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    ds = datasets.load(str(tmp_path), "all")
    assert opened == []  # construction only lists the files
    ds.get(np.array([0, 1]))
    assert len(opened) == 2
    with pytest.raises(InputError, match="5.png"):
        ds.get(np.array([5]))
    with pytest.raises(InputError, match="5.png"):  # also from the thread pool, among readable files
        ds.get(np.array([4, 5, 6]))


def test_image_folder_threads_read_the_same_batch(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (30 + i, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    ds = datasets.load(str(tmp_path), "all", image_size=12)
    idx = np.array([5, 0, 3, 3, 1])
    ds.threads = 1
    one = ds.get(idx)[0]
    ds.threads = 4
    np.testing.assert_array_equal(ds.get(idx)[0], one)
    assert one.shape == (5, 12, 12, 3) and not np.array_equal(one[0], one[1])


def test_image_folder_rejects_loose_files_and_empty_folders(tmp_path):
    with pytest.raises(InputError, match="no .png"):
        datasets.load(str(tmp_path))
    _write_png(tmp_path / "a" / "0.png", (8, 8), (0, 0, 0))
    _write_png(tmp_path / "loose.png", (8, 8), (0, 0, 0))
    with pytest.raises(InputError, match="loose.png"):
        datasets.load(str(tmp_path), "all")


# --- load's argument checks ---------------------------------------------------------------------------------------

def test_unknown_spec_and_split():
    with pytest.raises(InputError, match="fashion-mnist.*procedural.*npz"):
        datasets.load("imagenet")
    with pytest.raises(InputError, match="train, test"):
        datasets.load("procedural", "validation")
    with pytest.raises(InputError, match="channels"):
        datasets.load("procedural", channels=2)


# --- batching -----------------------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=50)
@given(st.integers(1, 300), st.data(), st.integers(0, 2**32 - 1), st.integers(0, 20))
def test_batches_of_an_epoch_are_disjoint_and_deterministic(n, draw, seed, epoch):
    batch_size = draw.draw(st.integers(1, n))
    per_epoch = n // batch_size
    batches = [datasets.batch_indices(n, batch_size, seed, epoch * per_epoch + i) for i in range(per_epoch)]
    flat = np.concatenate(batches)
    assert all(b.shape == (batch_size,) and b.dtype == np.int64 for b in batches)
    assert len(np.unique(flat)) == len(flat) == per_epoch * batch_size
    assert flat.min() >= 0 and flat.max() < n
    np.testing.assert_array_equal(batches[-1], datasets.batch_indices(n, batch_size, seed, (epoch + 1) * per_epoch - 1))


def test_batch_size_larger_than_data():
    with pytest.raises(InputError, match="batch_size"):
        datasets.batch_indices(5, 6, 0, 0)


def test_iterate_resumes_exactly():
    ds = datasets.load("procedural:50")
    it = datasets.iterate(ds, 8, seed=1)
    run = [next(it) for _ in range(12)]
    resumed = datasets.iterate(ds, 8, seed=1, start_step=7)
    for images, labels in run[7:]:
        again_images, again_labels = next(resumed)
        np.testing.assert_array_equal(images, again_images)
        np.testing.assert_array_equal(labels, again_labels)


def test_step_batches_fetch_ahead_without_changing_the_batches():
    fetched = []

    def fetch(rows):
        fetched.append(rows)
        if len(fetched) == 9:
            raise InputError("the ninth batch is unreadable")
        return rows * 10

    batches = datasets.step_batches(40, 8, 3, 2, fetch)
    for step in range(2, 7):
        np.testing.assert_array_equal(next(batches), datasets.batch_indices(40, 8, 3, step) * 10)
    deadline = time.monotonic() + 30  # the background thread fetches the next PREFETCH batches, no more
    while len(fetched) < 5 + datasets.PREFETCH and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert len(fetched) == 5 + datasets.PREFETCH
    with pytest.raises(InputError, match="ninth"):
        for _ in range(10):
            next(batches)  # the error is raised where its batch is consumed


@given(st.integers(1, 100), st.integers(1, 40))
def test_eval_batches_cover_every_index_once(n, batch_size):
    ds = datasets.ArrayDataset(np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1), np.arange(n, dtype=np.int32), n)
    batches = list(datasets.eval_batches(ds, batch_size))
    # One shape for the whole pass (one compilation): every batch has min(batch_size, n) rows.
    assert all(len(labels) == min(batch_size, n) for _, labels, _ in batches)
    assert all(count == min(batch_size, n) for _, _, count in batches[:-1]) and 1 <= batches[-1][2] <= batch_size
    np.testing.assert_array_equal(np.concatenate([labels[:count] for _, labels, count in batches]), np.arange(n))
    # The padding repeats the last real example, so every row is a valid input.
    last, labels, count = batches[-1]
    assert np.all(labels[count:] == n - 1) and np.all(last[count:] == last[count - 1])


@given(st.lists(st.integers(-5, 5), min_size=1, max_size=20), st.integers(0, 10))
def test_pad_to_repeats_the_last_row(rows, extra):
    batch = np.array(rows)
    padded = datasets.pad_to(batch, len(rows) + extra)
    np.testing.assert_array_equal(padded, np.concatenate([batch, np.full(extra, rows[-1])]))


def test_split_all_is_train_then_test():
    train, test, every = (datasets.load("procedural:30", split) for split in ("train", "test", "all"))
    assert len(every) == len(train) + len(test)
    np.testing.assert_array_equal(every.get(np.arange(len(every)))[0],
                                  np.concatenate([train.get(np.arange(30))[0], test.get(np.arange(30))[0]]))


def test_folder_with_train_and_test_subfolders_is_split_by_them(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(folder / f"{i}.png")
    train, test, every = (datasets.load(str(tmp_path), split, image_size=8, channels=1)
                          for split in ("train", "test", "all"))
    assert (len(train), len(test), len(every)) == (6, 4, 10)
    assert train.class_names == ("cat", "dog") and sorted(test.labels) == [0, 0, 1, 1]


def test_a_data_dir_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        datasets.load("fashion-mnist", "test", data_dir=str(tmp_path / "nowhere"))
