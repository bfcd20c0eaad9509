"""The three dense-prediction tasks of the paper's UViM experiments: what each one adds to the shared two-stage model.

A task says how its input is shown to the networks (`context`: RGB for depth and panoptic segmentation, grey for
colorization, as in UViM), how its target is shown to the stage-I encoder (`target`), how many channels the stage-I
decoder outputs (`out_channels`), the training loss on those outputs, how outputs become a prediction, the trivial
baseline the model must beat, and the metric the paper reports:

- depth: RGB -> depth in metres. As in UViM the decoder classifies each pixel into `DEPTH_BINS` uniform bins over
  [0, max_depth] (cross-entropy); the prediction is the expected depth under those probabilities (which lowers RMSE
  compared with the arg-max bin). Metrics: RMSE and absolute relative error. Baseline: the training set's mean depth.
- colorization: grey -> RGB, mean squared error on [-1, 1]. Metrics: PSNR and a Frechet distance between the
  distributions of per-image chroma histograms. The paper uses FID, which needs an ImageNet Inception network that
  cannot be downloaded here; what FID catches in colorization is mostly washed-out, greyish colour, and a chroma
  histogram (luma removed: the model is given it) measures exactly that. Baseline: the grey image as colour.
- panoptic: RGB -> per-pixel (semantic class, instance id). Cross-entropy on both maps. Metric: panoptic quality
  (`panoptic.PanopticQuality`, x100 as papers print it). Baseline: every pixel the most frequent class, no instances.

Batches are dicts of numpy/JAX arrays as `dense.DenseData.batch` makes them. Legend: B batch, H W image size, O the
decoder's output channels.
"""

import dataclasses
import math
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from fsq_ref import dense, metrics
from fsq_ref.errors import InputError
from fsq_ref.panoptic import PanopticQuality

DEPTH_BINS = 256  # UViM's depth quantisation
CHROMA_BINS = 8  # per axis of the (Cb, Cr) histogram used for the colour Frechet distance

TASKS = ("depth", "colorization", "panoptic")


def _unit(images) -> Float[Array, "B H W C"]:
    return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def grey(images) -> Float[Array, "B H W 1"]:
    """uint8 RGB -> uint8 luma (ITU-R BT.601), the input of colorization; works on numpy and traced arrays."""
    rgb = jnp.asarray(images).astype(jnp.float32)
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    return jnp.round(luma)[..., None].astype(jnp.uint8)


def _cross_entropy(logits: Float[Array, "B H W O"], labels) -> Float[Array, ""]:
    log_p = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, jnp.asarray(labels)[..., None], axis=-1))


class Metric(Protocol):
    def update(self, prediction: dict, batch: dict) -> None: ...

    def result(self) -> dict[str, float]: ...


class DenseTask(Protocol):
    name: str
    primary: str  # the metric the paper reports for this task
    higher_is_better: bool
    context_channels: int
    target_channels: int
    out_channels: int

    def context(self, batch: dict) -> Float[Array, "B H W Cc"]: ...

    def target(self, batch: dict) -> Float[Array, "B H W Ct"]: ...

    def loss(self, outputs: Float[Array, "B H W O"], batch: dict) -> Float[Array, ""]: ...

    def predict(self, outputs: Float[Array, "B H W O"]) -> dict: ...

    def baseline(self, batch: dict) -> dict: ...

    def metric(self) -> Metric: ...

    def show(self, values: dict) -> np.ndarray:
        """A prediction (or target) as uint8 RGB pictures [B, H, W, 3]."""
        ...

    def show_input(self, batch: dict) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Depth:
    max_depth: float
    name: str = "depth"
    primary: str = "rmse"
    higher_is_better: bool = False
    context_channels: int = 3
    target_channels: int = 1
    out_channels: int = DEPTH_BINS
    mean_depth: float = 0.0  # the baseline's constant prediction (training-set mean)

    def context(self, batch):
        return _unit(batch["image"])

    def target(self, batch):
        return (jnp.asarray(batch["depth"])[..., None] / self.max_depth) * 2.0 - 1.0

    def loss(self, outputs, batch):
        bins = jnp.clip(jnp.floor(jnp.asarray(batch["depth"]) / self.max_depth * DEPTH_BINS), 0, DEPTH_BINS - 1)
        return _cross_entropy(outputs, bins.astype(jnp.int32))

    def predict(self, outputs):
        centres = (jnp.arange(DEPTH_BINS, dtype=jnp.float32) + 0.5) * (self.max_depth / DEPTH_BINS)
        return {"depth": jax.nn.softmax(outputs) @ centres}

    def baseline(self, batch):
        return {"depth": np.full(batch["depth"].shape, self.mean_depth, np.float32)}

    def metric(self):
        return _DepthMetric()

    def show(self, values):
        near = 1.0 - np.clip(np.asarray(values["depth"]) / self.max_depth, 0.0, 1.0)  # near is bright
        return np.repeat(np.round(255 * near).astype(np.uint8)[..., None], 3, axis=-1)

    def show_input(self, batch):
        return np.asarray(batch["image"])


class _DepthMetric:
    """RMSE and AbsRel over the pixels whose true depth is valid (finite and > 0), as UViM evaluates NYU depth.

    Depth maps have holes where the sensor saw nothing (0 in NYU's and most 16-bit PNGs): there AbsRel would divide
    by zero and RMSE would score a prediction against a depth nobody measured. With no valid pixel, both are NaN.
    """

    def __init__(self):
        self.sq = self.rel = 0.0
        self.pixels = 0

    def update(self, prediction, batch):
        pred, true = np.asarray(prediction["depth"], np.float64), np.asarray(batch["depth"], np.float64)
        valid = np.isfinite(true) & (true > 0)
        pred, true = pred[valid], true[valid]
        self.sq += float(np.sum((pred - true) ** 2))
        self.rel += float(np.sum(np.abs(pred - true) / true))
        self.pixels += true.size

    def result(self):
        if not self.pixels:
            return {"rmse": math.nan, "abs_rel": math.nan}
        return {"rmse": math.sqrt(self.sq / self.pixels), "abs_rel": self.rel / self.pixels}


@dataclasses.dataclass(frozen=True)
class Colorization:
    name: str = "colorization"
    primary: str = "colour_fd"
    higher_is_better: bool = False
    context_channels: int = 1
    target_channels: int = 3
    out_channels: int = 3

    def context(self, batch):
        return _unit(grey(batch["image"]))

    def target(self, batch):
        return _unit(batch["image"])

    def loss(self, outputs, batch):
        return jnp.mean((outputs - self.target(batch)) ** 2)

    def predict(self, outputs):
        return {"image": jnp.round(jnp.clip((outputs + 1.0) * 127.5, 0.0, 255.0)).astype(jnp.uint8)}

    def baseline(self, batch):
        return {"image": np.repeat(np.asarray(grey(batch["image"])), 3, axis=-1)}

    def metric(self):
        return _ColourMetric()

    def show(self, values):
        return np.asarray(values["image"])

    def show_input(self, batch):
        return self.baseline(batch)["image"]


def chroma_histograms(images: np.ndarray) -> np.ndarray:
    """Per-image normalised 2-D histograms of chroma (Cb, Cr of BT.601), [N, CHROMA_BINS**2]."""
    rgb = images.astype(np.float64) / 255.0
    cb = -0.168736 * rgb[..., 0] - 0.331264 * rgb[..., 1] + 0.5 * rgb[..., 2]  # in [-0.5, 0.5]
    cr = 0.5 * rgb[..., 0] - 0.418688 * rgb[..., 1] - 0.081312 * rgb[..., 2]
    to_bin = lambda c: np.clip(((c + 0.5) * CHROMA_BINS).astype(np.int64), 0, CHROMA_BINS - 1)
    flat = (to_bin(cb) * CHROMA_BINS + to_bin(cr)).reshape(len(images), -1)
    offsets = np.arange(len(images))[:, None] * CHROMA_BINS**2
    counts = np.bincount((flat + offsets).ravel(), minlength=len(images) * CHROMA_BINS**2)
    return counts.reshape(len(images), -1) / flat.shape[1]


class _ColourMetric:
    def __init__(self):
        self.fake, self.real = [], []
        self.sq = 0.0
        self.values = 0

    def update(self, prediction, batch):
        fake, real = np.asarray(prediction["image"]), np.asarray(batch["image"])
        self.sq += float(np.sum(((fake.astype(np.float64) - real) / 255.0) ** 2))
        self.values += real.size
        self.fake.append(chroma_histograms(fake))
        self.real.append(chroma_histograms(real))

    def result(self):
        fd = metrics.frechet_distance(np.concatenate(self.real), np.concatenate(self.fake))
        # The histograms are fractions; x100 puts the distance on a readable scale.
        return {"psnr": metrics.psnr(self.sq / self.values), "colour_fd": 100.0 * fd}


@dataclasses.dataclass(frozen=True)
class Panoptic:
    num_classes: int
    max_instances: int
    thing_classes: tuple[int, ...]
    name: str = "panoptic"
    primary: str = "pq"
    higher_is_better: bool = True
    context_channels: int = 3
    background: int = 0  # the baseline's class: the most frequent one in the training set

    @property
    def target_channels(self) -> int:
        return self.num_classes + self.max_instances + 1

    out_channels = target_channels

    def context(self, batch):
        return _unit(batch["image"])

    def target(self, batch):
        semantic = jax.nn.one_hot(jnp.asarray(batch["semantic"]), self.num_classes)
        instance = jax.nn.one_hot(jnp.asarray(batch["instance"]), self.max_instances + 1)
        return jnp.concatenate([semantic, instance], axis=-1) * 2.0 - 1.0

    def loss(self, outputs, batch):
        return (_cross_entropy(outputs[..., :self.num_classes], batch["semantic"])
                + _cross_entropy(outputs[..., self.num_classes:], batch["instance"]))

    def predict(self, outputs):
        semantic = jnp.argmax(outputs[..., :self.num_classes], axis=-1).astype(jnp.int32)
        instance = jnp.argmax(outputs[..., self.num_classes:], axis=-1).astype(jnp.int32)
        is_thing = jnp.isin(semantic, jnp.asarray(self.thing_classes, jnp.int32))
        return {"semantic": semantic, "instance": jnp.where(is_thing, instance, 0)}

    def baseline(self, batch):
        shape = batch["semantic"].shape
        return {"semantic": np.full(shape, self.background, np.int32), "instance": np.zeros(shape, np.int32)}

    def metric(self):
        return _PanopticMetric(PanopticQuality(self.num_classes, self.thing_classes))

    def show(self, values):
        """A colour per class, made darker for each further instance of a class."""
        palette = np.random.default_rng(0).integers(64, 256, size=(self.num_classes, 3))
        shade = 1.0 - 0.5 * np.asarray(values["instance"]) / max(1, self.max_instances)
        return np.round(palette[np.asarray(values["semantic"])] * shade[..., None]).astype(np.uint8)

    def show_input(self, batch):
        return np.asarray(batch["image"])


class _PanopticMetric:
    def __init__(self, pq: PanopticQuality):
        self.pq = pq

    def update(self, prediction, batch):
        self.pq.update(np.asarray(prediction["semantic"]), np.asarray(prediction["instance"]), batch["semantic"],
                       batch["instance"])

    def result(self):
        r = self.pq.result()
        return {"pq": 100.0 * r["pq"], "sq": 100.0 * r["sq"], "rq": 100.0 * r["rq"]}


def make(name: str, train: "dense.DenseData") -> DenseTask:
    """The task `name` for data like `train` (whose statistics set the baselines)."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
    if not train.has(name):
        raise InputError(f"this data has no {name} targets: depth needs `scenes` or a folder with depth/, panoptic "
                         "needs `scenes`, `fashion-mnist-panoptic` or a folder with semantic/ and instance/")
    if name == "depth":
        return Depth(max_depth=float(train.max_depth), mean_depth=float(np.mean(train.depth)))
    if name == "colorization":
        return Colorization()
    counts = np.bincount(train.semantic.ravel(), minlength=train.num_classes)
    return Panoptic(train.num_classes, train.max_instances, tuple(train.thing_classes),
                    background=int(np.argmax(counts)))


def to_dict(task: DenseTask) -> dict:
    return dataclasses.asdict(task)


def from_dict(d: dict) -> DenseTask:
    cls = {"depth": Depth, "colorization": Colorization, "panoptic": Panoptic}[d["name"]]
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
