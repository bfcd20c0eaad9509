"""Image datasets for training and evaluating tokenizers, in numpy (JAX only tells which process is loading).

The paper trains its tokenizers on ImageNet-scale data; a reference implementation has to run on a laptop, so this
module offers four sources behind one small interface (`load`): Fashion-MNIST from its IDX files, a procedural set
generated in code (no files, ten visually distinct classes), an `.npz` file, and a folder of PNG/JPEG images.
Every source hands out the same thing: uint8 images, channels last, and int32 labels or None.

Batches are drawn by `batch_indices`, a pure function of (n, batch_size, seed, step): resuming training at step t
sees exactly the batches an uninterrupted run would have seen, without saving any iterator state.

Legend: N examples in a split, B batch, H W image height and width, C channels (1 grayscale, 3 RGB).
"""

from __future__ import annotations

import collections
import gzip
import itertools
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Protocol, TypeVar

import jax
import numpy as np
from PIL import Image

from fsq_ref.common.errors import InputError
from fsq_ref.data import image_files, procedural

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's `dataset-fashion-mnist` puts the files
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_IDX_FILES = {"train": "train", "test": "t10k"}  # split -> file prefix
SPLITS = ("train", "test", "all")  # "all": both splits (built-in data), or every image (a user's file or folder)
T = TypeVar("T")


class Dataset(Protocol):
    """What training and evaluation need from a dataset: a length, a shape, and random access by index."""

    image_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int | None  # None when the data has no labels

    def __len__(self) -> int: ...

    def get(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Returns uint8 images [B, H, W, C] and int32 labels [B] (or None) for the int indices `idx` [B]."""
        ...


class ArrayDataset:
    """Images held in memory (Fashion-MNIST, procedural, .npz), converted to `image_shape` batch by batch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, num_classes: int | None,
                 image_size: int | None = None, channels: int | None = None):
        _, h, w, c = images.shape
        self.images, self.labels, self.num_classes = images, labels, num_classes
        self.native_shape = (h, w, c)  # as stored, before `get` converts to `image_shape`
        self.image_shape = (image_size or h, image_size or w, channels or c)

    def __len__(self) -> int:
        return len(self.images)

    def get(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        images = self.images[idx]
        labels = None if self.labels is None else self.labels[idx]
        if images.shape[1:] == self.image_shape:
            return images, labels
        # Converting only the batch keeps `load` instant even when every Fashion-MNIST image must be resized.
        out = np.empty((len(images), *self.image_shape), np.uint8)
        for i, image in enumerate(images):
            picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            out[i] = image_files.fit(picture, *self.image_shape[1:])
        return out, labels


def load(spec: str, split: str = "train", *, data_dir: str | None = None, image_size: int | None = None,
         channels: int | None = None, seed: int = 0) -> Dataset:
    """Opens a dataset by name or path.

    Args:
      spec: "fashion-mnist", "procedural" or "procedural:N" (N examples in each split), a path to an .npz file
        holding `images` (uint8 [N, H, W] or [N, H, W, C]) and optionally `labels` (int [N]), or a folder of images
        (one subfolder per class, or no subfolders for unlabelled data).
      split: "train", "test" or "all". Fashion-MNIST and procedural data have their own train and test splits, "all"
        being both; for .npz files and folders see `image_files`.
      data_dir: the folder of the Fashion-MNIST IDX files; when None, $FSQ_DATA_DIR, then FASHION_MNIST_DIR.
      image_size: side of the square images to produce; native size when None (64 for image folders).
      channels: 1 (grayscale) or 3 (RGB); native when None (3 for image folders).
      seed: seeds the procedural images and the held-out split.

    Returns:
      A `Dataset` whose `get` returns uint8 [B, H, W, C] images and int32 [B] labels or None.
    """
    if image_size is not None and image_size < 1:
        raise InputError(f"image_size must be a positive number of pixels; got {image_size}")
    if channels not in (None, 1, 3):
        raise InputError(f"channels must be 1 (grayscale) or 3 (RGB); got {channels}")
    if seed < 0:
        raise InputError(f"seed must be >= 0; got {seed}")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise InputError(f"--data-dir {data_dir} is not a folder: give the folder that holds the Fashion-MNIST IDX "
                         "files, or leave it out")
    check_split(split, SPLITS)
    if spec == "fashion-mnist":
        images, labels = _joined([_fashion_mnist(s, data_dir) for s in _parts(split)])
        return ArrayDataset(images, labels, len(FASHION_MNIST_CLASSES), image_size, channels)
    if spec == "procedural" or spec.startswith("procedural:"):
        size, channels = image_size or 28, channels or 1
        images, labels = _joined([procedural.generate(spec, s, seed, size, channels) for s in _parts(split)])
        return ArrayDataset(images, labels, 10)
    if spec.endswith(".npz"):
        return ArrayDataset(*image_files.npz(spec, split, seed), image_size, channels)
    if os.path.isdir(spec):
        return image_files.folder(spec, split, seed, image_size or 64, channels or 3)
    raise InputError(f"unknown dataset {spec!r}: use 'fashion-mnist', 'procedural', 'procedural:N', "
                     "a path to an .npz file, or an existing folder of PNG/JPEG images")


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The example indices of training batch `step`: int64 [batch_size].

    Each epoch is a fresh permutation of range(n) seeded by (seed, epoch), cut into n // batch_size batches; the
    remainder is dropped so that every batch has the same shape (one jit compilation). Because this is a pure
    function of its arguments, resuming at any step needs nothing but the step number.
    """
    if not 1 <= batch_size <= n:
        raise InputError(f"batch_size must be between 1 and the dataset size {n}; got {batch_size}")
    if seed < 0 or step < 0:
        raise InputError(f"seed and step must be >= 0; got seed={seed}, step={step}")
    epoch, position = divmod(step, n // batch_size)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[position * batch_size:(position + 1) * batch_size].astype(np.int64)


def local_rows(idx: np.ndarray) -> np.ndarray:
    """This process's share of a global batch: the i-th of `jax.process_count()` equal, contiguous parts, i the
    process index (all of `idx` on one host). With several hosts each one loads only the examples its own devices
    train on; the training loop assembles the global batch from the parts (`train.run`)."""
    rows = len(idx) // jax.process_count()
    return idx[jax.process_index() * rows:(jax.process_index() + 1) * rows]


PREFETCH = 2  # training batches fetched ahead, in a background thread, while the step runs


def step_batches(n: int, batch_size: int, seed: int, start_step: int,
                 fetch: Callable[[np.ndarray], T]) -> Iterator[T]:
    """`fetch(rows)` for the training batches of step = start_step, start_step + 1, ... forever, `rows` being this
    process's rows (`local_rows`) of the example indices of that step (`batch_indices`). Every trainer draws its
    batches this way, whatever its data: images, token grids, dense-prediction pairs.

    The next PREFETCH batches are fetched in a background thread while the caller works on this one (reading and
    resizing image files overlaps the training step); the batches and their order do not change, and an error in
    `fetch` is raised where its batch is consumed.
    """
    rows = (local_rows(batch_indices(n, batch_size, seed, step)) for step in itertools.count(start_step))
    with ThreadPoolExecutor(1) as pool:
        pending = collections.deque(pool.submit(fetch, next(rows)) for _ in range(PREFETCH))
        try:
            while True:
                pending.append(pool.submit(fetch, next(rows)))
                yield pending.popleft().result()
        finally:  # the consumer stopped: drop what was fetched ahead
            for future in pending:
                future.cancel()


def iterate(ds: Dataset, batch_size: int, *, seed: int,
            start_step: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """The training batches of `ds` from `start_step` on (see `step_batches`)."""
    return step_batches(len(ds), batch_size, seed, start_step, ds.get)


def pad_to(batch: np.ndarray, size: int) -> np.ndarray:
    """`batch` with its last row repeated up to `size` rows.

    The one padding convention of every batched pass (evaluation, encoding, decoding, generation): the last batch of a
    pass is padded to the common size, so the pass compiles once, and callers drop the padded rows of the result.
    Repeating a real row, rather than adding zeros, keeps every input valid for the model (a label, a token, an
    image it could be given).
    """
    return np.concatenate([batch, np.repeat(batch[-1:], size - len(batch), axis=0)])


def pass_indices(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """(indices [B], count) covering range(n) once, in order: B = min(batch_size, n), the last batch padded (`pad_to`);
    `count` says how many of its rows are real."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1; got {batch_size}")
    batch_size = min(batch_size, n)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        yield pad_to(idx, batch_size), len(idx)


def eval_batches(ds: Dataset, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray | None, int]]:
    """(images, labels or None, count) over every example once, in order, in padded batches (`pass_indices`)."""
    for idx, count in pass_indices(len(ds), batch_size):
        yield *ds.get(idx), count


def check_split(split: str, valid: tuple[str, ...] = SPLITS) -> str:
    if split not in valid:
        raise InputError(f"unknown split {split!r}: use one of {', '.join(valid)}")
    return split


def _parts(split: str) -> tuple[str, ...]:
    """The stored splits that make up `split` ("all" is "train" then "test")."""
    return ("train", "test") if split == "all" else (split,)


def _joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the stored splits one after another; one split is returned as is, not copied."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _fashion_mnist(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28, 1] and int32 labels of a stored split: from `data_dir` alone when it is given."""
    candidates = [data_dir] if data_dir else [d for d in (os.environ.get("FSQ_DATA_DIR"), FASHION_MNIST_DIR) if d]
    prefix = _IDX_FILES[split]
    for directory in candidates:
        found = [_find_idx(directory, f"{prefix}-{kind}") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
        if None not in found:
            images, labels = (_read_idx(path) for path in found)
            if labels.shape != images.shape[:1] or labels.max() >= len(FASHION_MNIST_CLASSES):
                raise InputError(f"Fashion-MNIST files in {directory} do not match ({len(images)} images, "
                                 f"{len(labels)} labels): download the {split} files again")
            return images[..., None], labels.astype(np.int32)
    raise InputError(f"Fashion-MNIST not found in {', '.join(candidates)}: install it with "
                     "`apt-get install -y dataset-fashion-mnist`, or pass --data-dir DIR / set FSQ_DATA_DIR to a "
                     f"folder holding {prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz")


def _find_idx(directory: str, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (path := Path(directory, name)).is_file():
            return path
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Parses an IDX file of unsigned bytes: magic 0x0000 08 D, then D big-endian uint32 sizes, then the data."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # EOFError: a truncated gzip stream
        raise InputError(f"cannot read {path} ({e}): the file is damaged; download or install it again") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise InputError(f"{path} is not an IDX file of unsigned bytes (bad magic number): download it again")
    header = 4 + 4 * raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4")) if len(raw) >= header else None
    if shape is None or len(raw) != header + int(np.prod(shape)):
        raise InputError(f"{path} is truncated or has trailing bytes (header says shape {shape}, file has "
                         f"{len(raw)} bytes): download it again")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)
