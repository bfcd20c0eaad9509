"""The disk cache (`fsq_ref.data.cache`): entries are made once, read back equal, named by everything they depend on,
and a damaged or unwritable cache is handled rather than trusted."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsq_ref.common.errors import InputError
from fsq_ref.data import cache, dense


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FSQ_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def counted(arrays: dict):
    calls = []

    def make():
        calls.append(1)
        return arrays

    return make, calls


def test_an_entry_is_made_once_and_read_back_equal(folder):
    arrays = {"a": np.arange(12, dtype=np.int32).reshape(3, 4), "b": np.linspace(0, 1, 5, dtype=np.float32)}
    make, calls = counted(arrays)
    first, second = cache.arrays("entry", make), cache.arrays("entry", make)
    assert len(calls) == 1 and len(list(folder.glob("entry-*.npz"))) == 1
    for key, value in arrays.items():
        assert second[key].dtype == value.dtype
        np.testing.assert_array_equal(first[key], value)
        np.testing.assert_array_equal(second[key], value)
    cache.arrays("another", make)
    assert len(calls) == 2


def test_a_damaged_entry_is_made_again(folder):
    make, calls = counted({"a": np.arange(1000)})
    cache.arrays("entry", make)
    (path,) = folder.glob("entry-*.npz")
    path.write_bytes(path.read_bytes()[:100])  # cut short, as by a full disk
    np.testing.assert_array_equal(cache.arrays("entry", make)["a"], np.arange(1000))
    assert len(calls) == 2
    np.testing.assert_array_equal(cache.arrays("entry", make)["a"], np.arange(1000))
    assert len(calls) == 2


def test_an_unwritable_cache_folder_is_warned_about_and_the_arrays_still_made(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("FSQ_CACHE_DIR", str(tmp_path / "file" / "cache"))
    np.testing.assert_array_equal(cache.arrays("entry", lambda: {"a": np.arange(3)})["a"], np.arange(3))
    warning = capsys.readouterr().err
    assert warning.startswith("warning: cannot write the cache entry") and "FSQ_CACHE_DIR" in warning
    with pytest.raises(InputError, match="FSQ_CACHE_DIR"):  # the classifier's folder, checked before training
        cache.make_folder(tmp_path / "file" / "cache" / "classifier.fsq")


@given(st.binary(min_size=8, max_size=64).filter(lambda b: len(b) % 8 == 0))
def test_the_digest_tells_apart_dtype_shape_and_content(raw):
    as_bytes = np.frombuffer(raw, np.uint8)
    assert cache.digest(as_bytes) == cache.digest(as_bytes.copy())
    assert cache.digest(as_bytes) != cache.digest(as_bytes.view(np.int64))  # same bytes, another dtype
    assert cache.digest(as_bytes) != cache.digest(as_bytes.reshape(2, -1))  # same bytes, another shape
    changed = as_bytes.copy()
    changed[0] ^= 1
    assert cache.digest(as_bytes) != cache.digest(changed)
    assert cache.digest(as_bytes, None) != cache.digest(None, as_bytes)


def test_cached_scenes_are_the_generated_scenes(tmp_path, monkeypatch):
    def load(cache_dir, split="test", seed=0):
        monkeypatch.setenv("FSQ_CACHE_DIR", str(tmp_path / cache_dir))
        return dense.load("scenes:16:8", split, size=16, seed=seed)

    made, read = load("a"), load("a")
    assert len(list((tmp_path / "a").glob("scenes-*.npz"))) == 1
    for name in ("images", "depth", "semantic", "instance"):
        np.testing.assert_array_equal(getattr(made, name), getattr(read, name))
    assert (made.max_instances, made.max_depth, made.class_names) == (read.max_instances, read.max_depth,
                                                                      read.class_names)
    # Another split or seed is another entry, not the cached one.
    assert not np.array_equal(load("a", split="train").images[:8], made.images)
    assert not np.array_equal(load("a", seed=1).images, made.images)
    assert len(list((tmp_path / "a").glob("scenes-*.npz"))) == 3
