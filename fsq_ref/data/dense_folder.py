"""A user's own dense-task data: a folder of images with depth maps and/or panoptic label PNGs (layout: `dense.load`).

Every map of an example is centre-cropped to a square and resized: images and depth bilinearly, labels by nearest
neighbour (labels must not be blended). Each file is checked as it is read, and a bad one is named with its fix.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from fsq_ref.common.errors import InputError

SPLITS = ("train", "test")


def read(root: Path, split: str, size: int) -> dict:
    """The maps of `root/split`, each centre-cropped to size x size: {"images", "depth", "semantic", "instance"}
    (None where the folder has no such maps; instance ids as the files give them), and the class "names" and
    "things"."""
    folder = root / split
    if not (folder / "images").is_dir():
        raise InputError(f"{folder / 'images'} is missing: put the {split} images there "
                         "(see `fsq_ref.data.dense.load`)")
    paths = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise InputError(f"no .png/.jpg/.jpeg images in {folder / 'images'}: add some")
    with_depth, with_panoptic = (folder / "depth").is_dir(), (folder / "semantic").is_dir()
    linear, nearest = Image.Resampling.BILINEAR, Image.Resampling.NEAREST  # labels must not be blended
    images, depth, semantic, instance = [], [], [], []
    for path in paths:
        image = _open(path).convert("RGB")
        images.append(_square(image, size, linear))
        if with_depth:
            depth.append(_square(_depth_image(folder, path.stem, image.size), size, linear))
        if with_panoptic:
            semantic.append(_square(_label_image(folder, "semantic", path.stem, image.size), size, nearest))
            instance.append(_square(_label_image(folder, "instance", path.stem, image.size), size, nearest))
    depth = np.stack(depth).astype(np.float32) if with_depth else None
    semantic = np.stack(semantic).astype(np.int32) if with_panoptic else None
    names, things = _classes(root) if with_panoptic else ((), ())
    if with_panoptic and semantic.max() >= len(names):
        raise InputError(f"semantic labels in {folder / 'semantic'} reach {semantic.max()} but "
                         f"{root / 'classes.json'} names {len(names)} classes: add the missing names")
    return {"images": np.stack(images), "depth": depth, "semantic": semantic,
            "instance": np.stack(instance).astype(np.int32) if with_panoptic else None, "names": names,
            "things": things}


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decodes now, so that a damaged file fails here, and closes the file
        return image
    except OSError as e:  # also PIL's UnidentifiedImageError
        raise InputError(f"cannot read {path} ({e}): delete or replace the file") from None


def _square(image: Image.Image, size: int, resample) -> np.ndarray:
    """Crops the centre square and resizes it to size x size; every map of an example goes through the same crop."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)).resize((size, size), resample))


def _depth_image(folder: Path, stem: str, image_size: tuple[int, int]) -> Image.Image:
    """Depth in metres as a float image ("F"), from NAME.npy (metres) or NAME.png (16-bit millimetres)."""
    npy, png = folder / "depth" / f"{stem}.npy", folder / "depth" / f"{stem}.png"
    if npy.is_file():
        try:
            metres = np.load(npy, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read {npy} ({e}): save a float array [H, W] with numpy.save") from None
    elif png.is_file():
        metres = np.asarray(_open(png), np.float32) / 1000
    else:
        raise InputError(f"image {stem} has no depth map {npy.name} or {png.name} in {npy.parent}: add one or remove "
                         "the image")
    _check_shape(metres, image_size, npy if npy.is_file() else png)
    if not (np.isfinite(metres).all() and metres.min() > 0):
        raise InputError(f"depth map for {stem} in {npy.parent} has values that are zero, negative or not finite: "
                         "fill the holes first")
    return Image.fromarray(metres, "F")


def _label_image(folder: Path, kind: str, stem: str, image_size: tuple[int, int]) -> Image.Image:
    path = folder / kind / f"{stem}.png"
    if not path.is_file():
        raise InputError(f"image {stem} has no {path.name} in {path.parent}: add it, or remove the image")
    image = _open(path)
    labels = np.asarray(image)
    if labels.dtype.kind not in "iu" or labels.ndim != 2:
        raise InputError(f"{path} must be a single-channel integer PNG (mode L, P, I or I;16); got mode {image.mode}")
    _check_shape(labels, image_size, path)
    return Image.fromarray(labels.astype(np.int32), "I")


def _check_shape(array: np.ndarray, image_size: tuple[int, int], path: Path) -> None:
    if array.shape != image_size[::-1]:
        raise InputError(f"{path} has shape {list(array.shape)} but its image is {image_size[1]}x{image_size[0]} "
                         "(height x width): give every map its image's size")


def _classes(root: Path) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Class names and thing classes from root/classes.json or, without it, from the largest label of both splits."""
    path = root / "classes.json"
    if path.is_file():
        try:
            spec = json.loads(path.read_text())
            names, things = tuple(str(n) for n in spec["names"]), tuple(int(t) for t in spec.get("things", ()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"cannot read {path} ({e!r}): write {{\"names\": [...], \"things\": [indices]}}") from None
        if any(not 0 <= t < len(names) for t in things):
            raise InputError(f"{path}: 'things' must be indices into 'names' (0..{len(names) - 1}); got {list(things)}")
        return names, things
    top = max(int(np.asarray(_open(p)).max()) for s in SPLITS for p in (root / s / "semantic").glob("*.png"))
    return tuple(f"class{c}" for c in range(top + 1)), tuple(range(1, top + 1))
