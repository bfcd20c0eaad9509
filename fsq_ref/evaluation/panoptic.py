"""Panoptic quality (PQ), the metric of UViM's panoptic segmentation task (FSQ paper Section 4, Table 2).

PQ is defined by Kirillov et al., "Panoptic Segmentation" (CVPR 2019), Sec. 4. A panoptic labelling splits an image
into segments: one per (class, instance id) for "thing" classes, and one per class present for "stuff" classes,
whose instance ids are ignored. Within an image and a class, a predicted segment p and a true segment g match when
IoU(p, g) > 0.5; no two predicted segments can match one true segment, since each would need more than half of the
union, so the matching is unique without any assignment step. Per class, with TP the matched pairs, FP the unmatched
predicted segments and FN the unmatched true ones:

    PQ = sum_{(p, g) in TP} IoU(p, g) / (|TP| + |FP|/2 + |FN|/2) = SQ * RQ,
    SQ = sum IoU / |TP| (segmentation quality),  RQ = |TP| / (|TP| + |FP|/2 + |FN|/2) (recognition quality).

The counts are summed over all images before dividing, as in the COCO panopticapi evaluator, and the reported PQ is
the mean over the classes that occur (TP + FP + FN > 0). All values are fractions in [0, 1], not percentages. Every
pixel is labelled (no void label), as in the data of `fsq_ref.data.dense`.

Legend: N images, H W image height and width, S segments, K classes.
"""

from __future__ import annotations

import math

import numpy as np

from fsq_ref.common.errors import InputError


def segments(semantic: np.ndarray, instance: np.ndarray, thing_classes) -> tuple[np.ndarray, np.ndarray]:
    """Splits panoptic labellings into segments.

    Args:
      semantic, instance: non-negative integer classes and instance ids [..., H, W]; leading axes index images.
      thing_classes: the classes that have instances; for the others all pixels of a class form one segment.

    Returns:
      The segment of each pixel, int64 [..., H, W] in [0, S), numbered over all images together so that no two images
      share a segment, and the class of each segment, int64 [S].
    """
    semantic, instance = np.asarray(semantic, np.int64), np.asarray(instance, np.int64)
    images = np.arange(math.prod(semantic.shape[:-2])).reshape(semantic.shape[:-2] + (1, 1))
    ids = np.where(np.isin(semantic, thing_classes), instance, 0)
    classes, radix = int(semantic.max(initial=0)) + 1, int(ids.max(initial=0)) + 1
    if (images.size or 1) * classes * radix >= 2**62:
        raise InputError(f"instance ids up to {radix - 1} are too large to combine: renumber them from 1 per image")
    key = (images * classes + semantic) * radix + ids  # unique per (image, class, id)
    keys, segment = np.unique(key, return_inverse=True)
    return segment.reshape(semantic.shape), keys // radix % classes


class PanopticQuality:
    """Accumulates PQ's per-class counts over batches of images; `result` turns them into the metric.

    References: Kirillov et al. 2019, Sec. 4; the counting follows the COCO panopticapi `pq_compute`.
    """

    def __init__(self, num_classes: int, thing_classes: tuple[int, ...], class_names: tuple[str, ...] | None = None):
        if any(not 0 <= c < num_classes for c in thing_classes):
            raise InputError(f"thing_classes must be classes in 0..{num_classes - 1}; got {list(thing_classes)}")
        if class_names is not None and len(class_names) != num_classes:
            raise InputError(f"give one name per class: {num_classes} classes but {len(class_names)} names")
        self.num_classes, self.thing_classes, self.class_names = num_classes, tuple(thing_classes), class_names
        self.iou_sum = np.zeros(num_classes)  # sum of IoU over matched pairs, per class [K]
        self.tp, self.fp, self.fn = (np.zeros(num_classes, np.int64) for _ in range(3))

    def update(self, pred_semantic: np.ndarray, pred_instance: np.ndarray, true_semantic: np.ndarray,
               true_instance: np.ndarray) -> None:
        """Adds a batch of predictions and ground truths, each int [N, H, W]."""
        maps = [np.asarray(m) for m in (pred_semantic, pred_instance, true_semantic, true_instance)]
        if len({m.shape for m in maps}) != 1 or maps[0].ndim != 3:
            raise InputError(f"predicted and true maps must all be [N, H, W] of one shape; got "
                             f"{[list(m.shape) for m in maps]}")
        for name, m in zip(("pred_semantic", "pred_instance", "true_semantic", "true_instance"), maps):
            if m.dtype.kind not in "iu" or (m.size and m.min() < 0):
                raise InputError(f"{name} must hold non-negative integers; got {m.dtype} with minimum {m.min()}")
            if "semantic" in name and m.size and m.max() >= self.num_classes:
                raise InputError(f"{name} holds class {m.max()} but there are {self.num_classes} classes: pass the "
                                 "right num_classes")
        pred, pred_class = segments(*maps[:2], self.thing_classes)
        true, true_class = segments(*maps[2:], self.thing_classes)
        pred_area, true_area = np.bincount(pred.ravel()), np.bincount(true.ravel())
        # Intersections of every overlapping (predicted, true) pair: one count over combined pair ids.
        pairs, intersection = np.unique(pred.ravel() * len(true_class) + true.ravel(), return_counts=True)
        p, g = np.divmod(pairs, len(true_class))
        iou = intersection / (pred_area[p] + true_area[g] - intersection)
        match = (pred_class[p] == true_class[g]) & (iou > 0.5)
        p, g, iou = p[match], g[match], iou[match]
        k = self.num_classes
        self.tp += np.bincount(true_class[g], minlength=k)
        self.iou_sum += np.bincount(true_class[g], iou, minlength=k)
        self.fp += np.bincount(np.delete(pred_class, p), minlength=k)
        self.fn += np.bincount(np.delete(true_class, g), minlength=k)

    def result(self) -> dict:
        """PQ, SQ and RQ averaged over all classes that occur, PQ over things and over stuff alone (NaN when no such
        class occurs), and per class (keyed by name, or by index without names) PQ, SQ, RQ and the counts TP, FP, FN.
        All in [0, 1]."""
        denominator = self.tp + self.fp / 2 + self.fn / 2
        present = denominator > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            pq = np.where(present, self.iou_sum / denominator, 0.0)
            sq = np.where(self.tp > 0, self.iou_sum / self.tp, 0.0)
            rq = np.where(present, self.tp / denominator, 0.0)
        thing = np.isin(np.arange(self.num_classes), self.thing_classes)

        def mean(values, where):
            return float(values[where].mean()) if where.any() else float("nan")

        names = self.class_names or range(self.num_classes)
        return {
            "pq": mean(pq, present), "sq": mean(sq, present), "rq": mean(rq, present),
            "pq_things": mean(pq, present & thing), "pq_stuff": mean(pq, present & ~thing),
            "per_class": {name: {"pq": float(pq[c]), "sq": float(sq[c]), "rq": float(rq[c]), "tp": int(self.tp[c]),
                                 "fp": int(self.fp[c]), "fn": int(self.fn[c])}
                          for c, name in enumerate(names) if present[c]},
        }


def panoptic_quality(pred_semantic: np.ndarray, pred_instance: np.ndarray, true_semantic: np.ndarray,
                     true_instance: np.ndarray, *, num_classes: int, thing_classes: tuple[int, ...],
                     class_names: tuple[str, ...] | None = None) -> dict:
    """PQ of one batch of predictions, int [N, H, W] each: `PanopticQuality.result` after a single update."""
    metric = PanopticQuality(num_classes, thing_classes, class_names)
    metric.update(pred_semantic, pred_instance, true_semantic, true_instance)
    return metric.result()
