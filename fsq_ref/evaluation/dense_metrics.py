"""The metrics of the UViM tasks (`dense_tasks`), each as big_vision's UViM evaluators compute them.

- depth (`DepthMetric`): follows big_vision's `evaluators/proj/uvim/nyu_depth.py::Evaluator.run`: per image, over the
  pixels whose true depth is valid, RMSE, absolute relative error and delta1 (the fraction of pixels with
  max(pred / true, true / pred) < 1.25); each is then averaged over the images.
- colorization (`ColourMetric`): PSNR per image, averaged over images (big_vision's `evaluators/proj/uvim/psnr.py`),
  and the Frechet distance between the distributions of per-image chroma histograms. Not FID: its Inception weights
  cannot be downloaded here, and what FID catches in colorization is mostly washed-out colour, which a chroma histogram
  (luma removed: the model is given it) measures directly.
- panoptic (`PanopticMetric`): panoptic quality (`panoptic.PanopticQuality`, as panopticapi's `pq_compute`), x100.

Every metric accumulates over batches (`update(prediction, batch)`) and gives a dict of floats (`result()`).
"""

import math
from typing import Protocol

import numpy as np

from fsq_ref.data.dense import valid_depth
from fsq_ref.dense_tasks import DenseTask
from fsq_ref.evaluation import metrics
from fsq_ref.evaluation.panoptic import PanopticQuality

CHROMA_BINS = 8  # per axis of the (Cb, Cr) histogram used for the colour Frechet distance


class Metric(Protocol):
    def update(self, prediction: dict, batch: dict) -> None: ...

    def result(self) -> dict[str, float]: ...


def for_task(task: DenseTask) -> Metric:
    """The metric the paper reports for `task`, empty, ready to accumulate batches."""
    if task.name == "depth":
        return DepthMetric(task.max_depth)
    if task.name == "colorization":
        return ColourMetric()
    return PanopticMetric(PanopticQuality(task.num_classes, task.thing_classes))


class DepthMetric:
    """Per-image RMSE, AbsRel and delta1 over valid pixels, averaged over images; images without a valid pixel are
    left out (all NaN when none has one)."""

    def __init__(self, max_depth: float):
        self.max_depth = max_depth
        self.per_image = []  # (rmse, abs_rel, delta1) of every image

    def update(self, prediction, batch):
        preds, trues = np.asarray(prediction["depth"], np.float64), np.asarray(batch["depth"], np.float64)
        for pred, true in zip(preds, trues):
            valid = valid_depth(true, self.max_depth)
            if valid.any():
                p, t = pred[valid], true[valid]
                with np.errstate(divide="ignore"):  # a zero prediction is off by an infinite ratio
                    ratio = np.maximum(p / t, t / p)
                self.per_image.append((math.sqrt(np.mean((p - t) ** 2)), np.mean(np.abs(p - t) / t),
                                       np.mean(ratio < 1.25)))

    def result(self):
        if not self.per_image:
            return {"rmse": math.nan, "abs_rel": math.nan, "delta1": math.nan}
        rmse, abs_rel, delta1 = np.mean(self.per_image, axis=0)
        return {"rmse": float(rmse), "abs_rel": float(abs_rel), "delta1": float(delta1)}


def cbcr(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chroma (Cb, Cr of BT.601, each in [-0.5, 0.5]) of uint8 RGB `images` [..., 3]: two float64 [...] arrays,
    rounded to 1e-9. Unrounded, a grey pixel's chroma is a rounding error of 0 with either sign, and 10 of the 256
    grey levels fell one histogram bin below the others."""
    rgb = images.astype(np.float64) / 255.0
    cb = -0.168736 * rgb[..., 0] - 0.331264 * rgb[..., 1] + 0.5 * rgb[..., 2]
    cr = 0.5 * rgb[..., 0] - 0.418688 * rgb[..., 1] - 0.081312 * rgb[..., 2]
    return np.round(cb, 9) + 0.0, np.round(cr, 9) + 0.0  # + 0.0 turns -0.0 into 0.0


def chroma_bins(images: np.ndarray, bins: int = CHROMA_BINS) -> np.ndarray:
    """Each pixel's bin of a (Cb, Cr) grid with `bins` per axis: int64 [...] in [0, bins**2), Cb major."""
    cb, cr = cbcr(images)
    to_bin = lambda c: np.clip(((c + 0.5) * bins).astype(np.int64), 0, bins - 1)
    return to_bin(cb) * bins + to_bin(cr)


def bin_histograms(pixel_bins: np.ndarray, bins: int = CHROMA_BINS) -> np.ndarray:
    """Per-image normalised histograms [N, bins**2] of `chroma_bins`' output [N, ...]."""
    flat = pixel_bins.reshape(len(pixel_bins), -1)
    offsets = np.arange(len(flat))[:, None] * bins**2
    counts = np.bincount((flat + offsets).ravel(), minlength=len(flat) * bins**2)
    return counts.reshape(len(flat), -1) / flat.shape[1]


def chroma_histograms(images: np.ndarray, bins: int = CHROMA_BINS) -> np.ndarray:
    """Per-image normalised 2-D histograms of chroma (Cb, Cr of BT.601) with `bins` per axis, [N, bins**2]."""
    return bin_histograms(chroma_bins(images, bins), bins)


class ColourMetric:
    """PSNR per image (uint8 images; an exact copy scores `metrics.psnr`'s cap, 120 dB) averaged over images, and the
    chroma-histogram Frechet distance x100 (the histograms are fractions; x100 puts it on a readable scale)."""

    def __init__(self):
        self.fake, self.real, self.psnrs = [], [], []

    def update(self, prediction, batch):
        fake, real = np.asarray(prediction["image"]), np.asarray(batch["image"])
        mse = np.mean(((fake.astype(np.float64) - real) / 255.0) ** 2, axis=tuple(range(1, real.ndim)))
        self.psnrs += [metrics.psnr(m) for m in mse]
        self.fake.append(chroma_histograms(fake))
        self.real.append(chroma_histograms(real))

    def result(self):
        fd = metrics.frechet_distance(np.concatenate(self.real), np.concatenate(self.fake))
        return {"psnr": float(np.mean(self.psnrs)), "colour_fd": 100.0 * fd}


class PanopticMetric:
    def __init__(self, pq: PanopticQuality):
        self.pq = pq

    def update(self, prediction, batch):
        self.pq.update(np.asarray(prediction["semantic"]), np.asarray(prediction["instance"]), batch["semantic"],
                       batch["instance"])

    def result(self):
        r = self.pq.result()
        return {"pq": 100.0 * r["pq"], "sq": 100.0 * r["sq"], "rq": 100.0 * r["rq"]}
