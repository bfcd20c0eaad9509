"""Data for UViM's dense prediction tasks (FSQ paper Section 4, Table 2): depth estimation, colorization, panoptic
segmentation.

The paper trains UViM on NYU Depth v2, ImageNet and COCO panoptic. A reference implementation has to run on a laptop,
so `load` offers three small sources with the same interface, `DenseData`:
- "scenes[:N]": procedural 3-D scenes ray-cast in numpy (`scenes`). Image, depth, semantic and instance maps come
  from the same rays, so every label is exact. The default 8192 + 4096 scenes are made once per machine, then read
  from the disk cache (`cache`).
- "fashion-mnist-panoptic[:N]": black canvases with two or three overlapping Fashion-MNIST garments on them (panoptic
  segmentation only).
- a folder of the user's own images with depth and/or panoptic labels (the layout is described in `load`).

Instance ids follow one convention in every source, UViM's (big_vision's `pp/proj/uvim/pp_ops.py::
get_make_canonical`, whose COCO input gives every stuff region a segment id too): in each image, the n segments (one
per thing instance, one per stuff class present) are numbered 1..n in increasing order of H * (centroid row) +
(centroid column), i.e. roughly top to bottom, then left to right (ties: first pixel in raster order). Any labelling
whose segments are the same gets the same ids, so the ids are a function of what the image shows: with arbitrary ids
the target would hold a choice that UViM's stage II, which predicts the target's code from the image, could only
guess. `canonical_instances` applies the convention.

Legend: N examples, H W image height and width (square, `size`), P = H*W pixels.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
from PIL import Image

from fsq_ref.common.errors import InputError
from fsq_ref.data import cache, datasets, dense_folder, scenes

TASKS = {"depth": ("depth",), "colorization": (), "panoptic": ("semantic", "instance")}  # task -> label maps it needs
SPLITS = ("train", "test")
_DEFAULT_SIZES = {"train": 8192, "test": 4096}  # ":N" and ":N:M" set them

GARMENT_THRESHOLD = 26  # about 0.1 * 255; see `_garment_canvases`


def valid_depth(depth, max_depth: float):
    """The pixels whose true depth was measured: finite, > 0 (the holes of NYU and 16-bit PNGs are 0) and within the
    bins' range. Works on numpy and traced arrays."""
    return (depth > 0) & (depth <= max_depth)  # NaN compares false; +inf is above the range


ARRAYS = ("images", "depth", "semantic", "instance")  # DenseData's per-example arrays


@dataclasses.dataclass(frozen=True)
class DenseData:
    """Images with dense labels, all in memory. Label maps that a source lacks are None.

    images: uint8 [N, H, W, 3] RGB: the input for depth and panoptic, the target for colorization.
    depth: float32 [N, H, W], metres, finite and > 0. semantic: int32 [N, H, W] in [0, num_classes).
    instance: int32 [N, H, W], 1..n on the n segments of each image, stuff included (see the module docstring).
    max_instances: no instance id exceeds it (0 without panoptic labels).
    max_depth: no depth exceeds it (0.0 without depth).
    """

    images: np.ndarray
    depth: np.ndarray | None
    semantic: np.ndarray | None
    instance: np.ndarray | None
    class_names: tuple[str, ...]
    thing_classes: tuple[int, ...]  # the semantic classes that have instances ("things"); the others are "stuff"
    max_instances: int
    max_depth: float

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The examples `idx` [B]: {"image": uint8 [B, H, W, 3]} plus "depth", "semantic", "instance" when present."""
        maps = {"image": self.images, "depth": self.depth, "semantic": self.semantic, "instance": self.instance}
        return {name: array[idx] for name, array in maps.items() if array is not None}

    def map(self, fn) -> "DenseData":
        """The same data with `fn` applied to the images and to each label map present (e.g. a slice of examples)."""
        return dataclasses.replace(self, **{name: fn(getattr(self, name)) for name in ARRAYS
                                            if getattr(self, name) is not None})

    def has(self, task: str) -> bool:
        """Whether this data has the labels that `task` ("depth", "colorization" or "panoptic") needs."""
        if task not in TASKS:
            raise InputError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
        return all(getattr(self, name) is not None for name in TASKS[task])


def with_mirrors(ds: DenseData) -> DenseData:
    """`ds` followed by its left-right mirror images (2N examples), each label map mirrored with its image: the
    horizontal flip that UViM's stage II draws at random per example, made once so that each mirror image keeps one
    guiding code (the oracle's code is not mirror-symmetric, so a mirrored example needs its own)."""
    return ds.map(lambda array: np.concatenate([array, array[:, :, ::-1]]))


def canonical_instances(semantic: np.ndarray, instance: np.ndarray, thing_classes) -> np.ndarray:
    """Renumbers instance ids to the convention of the module docstring: int32 [..., H, W], every pixel >= 1.

    A thing segment is a (class, instance id) pair of one image, connected or not; a stuff segment is all pixels of a
    stuff class in one image (their ids are ignored).

    Args:
      semantic, instance: non-negative integers [..., H, W]; leading axes index images.
      thing_classes: the semantic classes that have instances.
    """
    semantic, instance = np.asarray(semantic), np.asarray(instance)
    if semantic.shape != instance.shape or semantic.ndim < 2:
        raise InputError(f"semantic and instance maps must have one shape [..., H, W]; got {list(semantic.shape)} "
                         f"and {list(instance.shape)}")
    if semantic.size and min(semantic.min(), instance.min()) < 0:
        raise InputError("semantic classes and instance ids must be >= 0: relabel negative values")
    shape, (height, width) = semantic.shape, semantic.shape[-2:]
    if not semantic.size:
        return np.zeros(shape, np.int32)
    images, pixels = math.prod(shape[:-2]), height * width
    semantic, instance = semantic.reshape(-1), np.where(np.isin(semantic, thing_classes), instance, -1).reshape(-1)
    image, pixel = np.divmod(np.arange(images * pixels), pixels)
    # Compacting classes and ids first keeps the mixed-radix key below 2^63 whatever the raw values are.
    _, cls = np.unique(semantic, return_inverse=True)
    _, ids = np.unique(instance, return_inverse=True)
    key = (image.astype(np.int64) * (cls.max() + 1) + cls) * (ids.max() + 1) + ids
    _, first, segment = np.unique(key, return_index=True, return_inverse=True)
    area = np.bincount(segment)
    row, col = np.divmod(pixel, width)
    # The mean of integers is correctly rounded, so equal centroids compare equal and the first pixel breaks ties.
    centre = height * (np.bincount(segment, row) / area) + np.bincount(segment, col) / area
    order = np.lexsort((pixel[first], centre, image[first]))
    sorted_image = image[first][order]
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - np.searchsorted(sorted_image, sorted_image) + 1
    return rank[segment].astype(np.int32).reshape(shape)


def load(spec: str, split: str, *, data_dir: str | None = None, size: int = 32, seed: int = 0) -> DenseData:
    """Opens a dense-prediction dataset.

    Args:
      spec: "scenes", "scenes:N" or "scenes:N:M" (N training scenes, default 8192; M test scenes from a separate
        random stream, default 4096), "fashion-mnist-panoptic[:N[:M]]" (likewise), or a folder DIR holding
        DIR/{train,test}/images/NAME.{png,jpg} and, by stem, depth/NAME.npy (float metres) or depth/NAME.png (16-bit
        millimetres), and/or semantic/NAME.png with instance/NAME.png (integer PNGs); DIR/classes.json may give
        {"names": [...], "things": [class indices]} (by default classes are "class0", "class1"..., all but 0 things).
      split: "train" or "test".
      data_dir: where to look for the Fashion-MNIST files first (see `datasets.load`).
      size: side of the square images; folder images are centre-cropped and resized (labels by nearest neighbour).
      seed: seeds the generated scenes and canvases.

    Returns:
      A `DenseData`. Its instance ids follow the convention of the module docstring.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise InputError(f"--data-dir {data_dir} is not a folder: give the folder that holds the Fashion-MNIST IDX "
                         "files, or leave it out")
    if size < 1 or seed < 0:
        raise InputError(f"size must be >= 1 and seed >= 0; got size={size}, seed={seed}")
    name, *counts = spec.split(":")
    if name in ("scenes", "fashion-mnist-panoptic"):
        if len(counts) > 2 or not all(c.isdigit() and int(c) >= 1 for c in counts):
            raise InputError(f"bad dataset {spec!r}: write '{name}', '{name}:N' or '{name}:N:M' (N training and M "
                             "test examples, positive integers)")
        n = dict(_DEFAULT_SIZES, **dict(zip(SPLITS, map(int, counts))))[split]
        if name == "scenes":
            return _scenes(n, split, seed, size)
        return _garment_canvases(n, split, seed, size, data_dir)
    if Path(spec).is_dir():
        return _folder(Path(spec), split, size)
    raise InputError(f"unknown dense dataset {spec!r}: use 'scenes', 'scenes:N', 'fashion-mnist-panoptic', "
                     "'fashion-mnist-panoptic:N', or an existing folder with train/ and test/ subfolders")


# --- Procedural scenes ---------------------------------------------------------------------------------------------

def _scenes(n: int, split: str, seed: int, size: int) -> DenseData:
    def make():
        images, depth, semantic, objects = scenes.generate(n, seed=seed, stream=SPLITS.index(split), size=size)
        return {"images": images, "depth": depth, "semantic": semantic,
                "instance": canonical_instances(semantic, objects, scenes.THINGS)}

    made = cache.arrays(f"scenes-{n}-{split}-seed{seed}-{size}px", make)  # made once per machine (`cache`)
    segments = scenes.MAX_OBJECTS + len(scenes.CLASSES) - len(scenes.THINGS)  # objects and the stuff classes
    return DenseData(made["images"], made["depth"], made["semantic"], made["instance"], scenes.CLASSES,
                     scenes.THINGS, segments, scenes.MAX_DEPTH)


# --- Fashion-MNIST garments on a canvas ----------------------------------------------------------------------------

def _garment_canvases(n: int, split: str, seed: int, size: int, data_dir: str | None) -> DenseData:
    """n black canvases [size, size], each with 2 or 3 Fashion-MNIST garments of side size/2 pasted at random places,
    later ones on top. A garment covers the pixels of its resized picture brighter than GARMENT_THRESHOLD: the
    pictures' backgrounds are 0, but bilinear resizing smears each outline into a faint halo, and below about 10% of
    full scale a pixel cannot be told from the black canvas, so labelling it a garment would make the labels
    unpredictable from the image. Fewer than 10% of the original garment pixels are that dark."""
    source = datasets.load("fashion-mnist", split, data_dir=data_dir)  # raises InputError, with the install hint
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    count = rng.integers(2, 4, n)
    pictures, labels = source.get(rng.integers(0, len(source), 3 * n))
    side = max(1, round(size / 2))
    corner = rng.integers(0, size - side + 1, (n, 3, 2))
    small = np.stack([np.asarray(Image.fromarray(p[..., 0]).resize((side, side), Image.Resampling.BILINEAR))
                      for p in pictures]).reshape(n, 3, side, side)
    grey, semantic, instance = (np.zeros((n, size, size), dtype) for dtype in (np.uint8, np.int32, np.int32))
    labels = labels.reshape(n, 3)
    for i in range(n):
        for j in range(count[i]):
            (top, left), cover = corner[i, j], small[i, j] > GARMENT_THRESHOLD
            window = np.s_[i, top:top + side, left:left + side]
            grey[window][cover] = small[i, j][cover]
            semantic[window][cover], instance[window][cover] = 1 + labels[i, j], j + 1
    things = tuple(range(1, 1 + len(datasets.FASHION_MNIST_CLASSES)))
    return DenseData(np.repeat(grey[..., None], 3, -1), None, semantic, canonical_instances(semantic, instance, things),
                     ("background", *datasets.FASHION_MNIST_CLASSES), things, 4, 0.0)  # 3 garments + background


# --- The user's own folder (read by `dense_folder`) ----------------------------------------------------------------

def _folder(root: Path, split: str, size: int) -> DenseData:
    maps = dense_folder.read(root, split, size)
    semantic, depth, things = maps["semantic"], maps["depth"], maps["things"]
    with_panoptic = semantic is not None
    instance = canonical_instances(semantic, maps["instance"], things) if with_panoptic else None
    # The limits come from this split alone: give the model the training split's; larger test values get clipped.
    return DenseData(maps["images"], depth, semantic, instance, maps["names"], things,
                     int(instance.max()) if with_panoptic else 0,
                     float(math.ceil(depth.max())) if depth is not None else 0.0)
