"""User data on disk: an .npz file of images, or a folder of PNG/JPEG images; both opened by `datasets.load`.

Splits. A folder with exactly the subfolders `train/` and `test/` is split by them (beneath each, one subfolder per
class, or none). Any other folder, and an .npz file, has no split of its own: "all" is every image, and a seeded 10% of
the images is held out as "test", the other 90% being "train" (the same files for the same seed, every time).

Labels. In a folder, images in one subfolder per class are labelled by that subfolder (classes in sorted order);
images at the top level are unlabelled. An .npz file may hold `labels`.
"""

from __future__ import annotations

import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from fsq_ref.common.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
HELD_OUT_FRACTION = 10  # without train/ and test/ subfolders, 1/10 of the images is the "test" split


class ImageFolder:
    """A folder of PNG/JPEG files, decoded lazily in `get` so that a folder larger than memory still works.

    A batch's files are decoded and resized by `threads` threads (default: one per CPU core); Pillow releases the
    interpreter lock while it decodes and resamples, so they run in parallel. (The training loop also fetches the
    next batches in the background while a step runs: `datasets.step_batches`.)
    """

    def __init__(self, paths: list[Path], labels: np.ndarray | None, class_names: tuple[str, ...] | None,
                 image_size: int, channels: int, threads: int | None = None):
        self.paths, self.labels, self.class_names = paths, labels, class_names
        self.num_classes = None if class_names is None else len(class_names)
        self.image_shape = (image_size, image_size, channels)
        self.threads = threads or os.cpu_count() or 1

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return fit(image, *self.image_shape[1:])
        except OSError as e:  # also PIL's UnidentifiedImageError
            raise InputError(f"cannot read image {path} ({e}): delete or replace the file") from None

    def get(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        paths = [self.paths[j] for j in idx]
        if self.threads == 1 or len(paths) < 2:
            images = [self._read(path) for path in paths]
        else:
            with ThreadPoolExecutor(min(self.threads, len(paths))) as pool:
                images = list(pool.map(self._read, paths))
        out = np.stack(images) if images else np.empty((0, *self.image_shape), np.uint8)
        return out, None if self.labels is None else self.labels[idx]


def fit(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """Scales the shorter side to `size`, crops the centre square, and converts to `channels`: uint8 [H, W, C]."""
    image = image.convert("L" if channels == 1 else "RGB")
    w, h = image.size
    if min(w, h) != size or w != h:
        scale = size / min(w, h)
        w, h = max(size, round(w * scale)), max(size, round(h * scale))  # max(): rounding must not undershoot
        image = image.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, np.uint8).reshape(size, size, channels)


def _held_out(n: int, split: str, seed: int, source: str) -> np.ndarray:
    """Sorted indices of `split`: a seeded 1/HELD_OUT_FRACTION of the examples is "test", the rest "train"."""
    if split == "all":
        return np.arange(n)
    order = np.random.default_rng(seed).permutation(n)
    chosen = np.sort(order[:n // HELD_OUT_FRACTION] if split == "test" else order[n // HELD_OUT_FRACTION:])
    if len(chosen) == 0:
        raise InputError(f"{source} has only {n} examples, too few to hold out 10% as 'test': use split 'all'")
    return chosen


def npz(path: str, split: str, seed: int) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """(uint8 images [N, H, W, C], int32 labels or None, number of classes or None) of `split` of an .npz file (see
    the module docstring)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise InputError(f"cannot read {path} ({e}): give an .npz file written by numpy.savez") from None
    images, labels = arrays.get("images"), arrays.get("labels")
    if images is None:
        raise InputError(f"{path} has no array 'images' (it has {sorted(arrays)}): save the images under that name")
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise InputError(f"{path}: 'images' must be uint8 [N, H, W] or [N, H, W, C] with N >= 1 and C 1 or 3; got "
                         f"{images.dtype} {list(images.shape)}: convert with images.astype(np.uint8)")
    num_classes = None
    if labels is not None:
        if labels.shape != images.shape[:1] or labels.dtype.kind not in "iu" or labels.min() < 0:
            raise InputError(f"{path}: 'labels' must be non-negative integers of shape [{len(images)}]; got "
                             f"{labels.dtype} {list(labels.shape)}")
        labels, num_classes = labels.astype(np.int32), int(labels.max()) + 1
    keep = _held_out(len(images), split, seed, path)
    return images[keep], None if labels is None else labels[keep], num_classes


def folder(root: str, split: str, seed: int, image_size: int, channels: int) -> ImageFolder:
    """`split` of a folder of images (see the module docstring), decoded lazily."""
    subfolders = {p.name for p in Path(root).iterdir() if p.is_dir()}
    if subfolders == {"train", "test"}:
        parts = [_listing(Path(root, s)) for s in (("train", "test") if split == "all" else (split,))]
        names = tuple(sorted({n for _, _, names in parts if names for n in names})) or None
        paths = [p for part_paths, _, _ in parts for p in part_paths]
        if names is None:
            labels = None
        elif any(part_names is None for _, _, part_names in parts):
            raise InputError(f"{root}: train/ and test/ must both have class subfolders, or neither")
        else:
            labels = np.array([names.index(path.parent.name) for path in paths], np.int32)
        return ImageFolder(paths, labels, names, image_size, channels)
    paths, labels, names = _listing(Path(root))
    keep = _held_out(len(paths), split, seed, root)
    return ImageFolder([paths[i] for i in keep], None if labels is None else labels[keep], names, image_size,
                       channels)


def _listing(root: Path) -> tuple[list[Path], np.ndarray | None, tuple[str, ...] | None]:
    """(image paths, labels or None, class names or None) of a folder: labelled by class subfolder, or unlabelled."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise InputError(f"no .png/.jpg/.jpeg images under {root}: point at a folder of images")
    tops = [p.relative_to(root).parts for p in paths]
    if not any(len(parts) > 1 for parts in tops):
        return paths, None, None
    loose = next((p for p, parts in zip(paths, tops) if len(parts) == 1), None)
    if loose is not None:
        raise InputError(f"{loose} is outside the class subfolders of {root}: move it into one, or keep all images "
                         "at the top level for unlabelled data")
    class_names = tuple(sorted({parts[0] for parts in tops}))
    return paths, np.array([class_names.index(parts[0]) for parts in tops], np.int32), class_names
