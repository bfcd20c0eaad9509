"""The three dense-prediction tasks of the paper's UViM experiments: what each one adds to the shared two-stage model.

A task says how its input is shown to the networks (`context`: RGB for depth and panoptic segmentation, grey for
colorization, as in UViM), how its target is shown to the stage-I encoder (`target`), how many channels the stage-I
decoder outputs (`out_channels`), the training loss on those outputs, how outputs become a prediction, the trivial
baseline the model must beat, and which metric the paper reports (`primary`; the metrics themselves are in
`evaluation.dense_metrics`, as big_vision's evaluators compute them):

- depth: RGB -> depth in metres. Follows big_vision's `trainers/proj/uvim/depth_task.py`: the decoder classifies
  each pixel into `DEPTH_BINS` uniform bins over the fixed range [0, max_depth] (`loss_fn`: cross-entropy, with the
  pixels whose depth is invalid left out), and the prediction is the centre of the arg-max bin (`predict_outputs`).
  `head="expectation"` predicts the expected bin centre under the softmax instead (lower RMSE; not UViM's). UViM's
  NYU range is [1e-3, 10] m; ours is [0, 12] m for the scenes, or the training split's largest depth, rounded up.
  Metrics: RMSE, AbsRel and delta1 per image, averaged. Baseline: the training set's mean depth.
- colorization: grey -> RGB, mean squared error on [-1, 1] (`colorization_task.py`). Metrics: PSNR and a Frechet
  distance between per-image chroma histograms (why not FID: see `dense_metrics`). Baseline: the grey image as colour.
- panoptic: RGB -> per-pixel (semantic class, instance id), the instance ids numbering every segment, stuff too
  (`dense.canonical_instances`). Cross-entropy on both maps (`panoptic_task.py::loss_fn`). Prediction: follows
  `panoptic_task.py::panoptic_predictions_from_logits`: each pixel takes the arg-max instance, and each predicted
  instance one class, the arg-max of the semantic logits (logits, not probabilities, as the reference) summed over
  its pixels. Metric: panoptic quality (x100). Baseline: every pixel the most frequent class, no instances.

Batches are dicts of numpy/JAX arrays as `dense.DenseData.batch` makes them. Legend: B batch, H W image size, O the
decoder's output channels.
"""

import dataclasses
from typing import Literal, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from fsq_ref.common.errors import InputError, from_record
from fsq_ref.data import dense
from fsq_ref.data.dense import valid_depth

DEPTH_BINS = 256  # UViM's depth quantisation
DEPTH_HEADS = ("argmax", "expectation")

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
    head: Literal["argmax", "expectation"] = "argmax"

    def __post_init__(self):
        if self.head not in DEPTH_HEADS:
            raise InputError(f"unknown depth head {self.head!r}: use one of {', '.join(DEPTH_HEADS)}")

    def context(self, batch):
        return _unit(batch["image"])

    def _depth(self, batch):  # invalid depth (holes) as 0, so that it cannot poison the encoder or the loss
        depth = jnp.asarray(batch["depth"])
        return jnp.where(valid_depth(depth, self.max_depth), depth, 0.0), valid_depth(depth, self.max_depth)

    def target(self, batch):
        return (self._depth(batch)[0][..., None] / self.max_depth) * 2.0 - 1.0

    def loss(self, outputs, batch):
        depth, valid = self._depth(batch)
        bins = jnp.clip(jnp.floor(depth / self.max_depth * DEPTH_BINS), 0, DEPTH_BINS - 1).astype(jnp.int32)
        log_p = jnp.take_along_axis(jax.nn.log_softmax(outputs), bins[..., None], axis=-1)[..., 0]
        return -jnp.sum(jnp.where(valid, log_p, 0.0)) / jnp.maximum(jnp.sum(valid, dtype=log_p.dtype), 1.0)

    def predict(self, outputs):
        centres = (jnp.arange(DEPTH_BINS, dtype=jnp.float32) + 0.5) * (self.max_depth / DEPTH_BINS)
        if self.head == "expectation":
            return {"depth": jax.nn.softmax(outputs) @ centres}
        return {"depth": centres[jnp.argmax(outputs, axis=-1)]}

    def baseline(self, batch):
        return {"depth": np.full(batch["depth"].shape, self.mean_depth, np.float32)}

    def show(self, values):
        near = 1.0 - np.clip(np.asarray(values["depth"]) / self.max_depth, 0.0, 1.0)  # near is bright
        return np.repeat(np.round(255 * near).astype(np.uint8)[..., None], 3, axis=-1)

    def show_input(self, batch):
        return np.asarray(batch["image"])


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

    def show(self, values):
        return np.asarray(values["image"])

    def show_input(self, batch):
        return self.baseline(batch)["image"]


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
        instance = jnp.argmax(outputs[..., self.num_classes:], axis=-1)
        masks = jax.nn.one_hot(instance, self.max_instances + 1, dtype=outputs.dtype)  # [B, H, W, N]
        votes = jnp.einsum("bhwk,bhwn->bnk", outputs[..., :self.num_classes], masks)  # summed logits per instance
        label = jnp.argmax(votes, axis=-1)  # [B, N]: one class per instance
        semantic = jnp.take_along_axis(label, instance.reshape(len(instance), -1), axis=1).reshape(instance.shape)
        return {"semantic": semantic.astype(jnp.int32), "instance": instance.astype(jnp.int32)}

    def baseline(self, batch):
        shape = batch["semantic"].shape
        return {"semantic": np.full(shape, self.background, np.int32), "instance": np.zeros(shape, np.int32)}

    def show(self, values):
        """A colour per class, made darker for each further instance of a class."""
        palette = np.random.default_rng(0).integers(64, 256, size=(self.num_classes, 3))
        shade = 1.0 - 0.5 * np.asarray(values["instance"]) / max(1, self.max_instances)
        return np.round(palette[np.asarray(values["semantic"])] * shade[..., None]).astype(np.uint8)

    def show_input(self, batch):
        return np.asarray(batch["image"])


def make(name: str, train: "dense.DenseData", *, depth_head: str = "argmax") -> DenseTask:
    """The task `name` for data like `train` (whose statistics set the baselines); `depth_head`: see `Depth`."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
    if not train.has(name):
        raise InputError(f"this data has no {name} targets: depth needs `scenes` or a folder with depth/, panoptic "
                         "needs `scenes`, `fashion-mnist-panoptic` or a folder with semantic/ and instance/")
    if name == "depth":
        valid = valid_depth(train.depth, train.max_depth)
        return Depth(max_depth=float(train.max_depth), mean_depth=float(np.mean(train.depth[valid])), head=depth_head)
    if name == "colorization":
        return Colorization()
    counts = np.bincount(train.semantic.ravel(), minlength=train.num_classes)
    return Panoptic(train.num_classes, train.max_instances, tuple(train.thing_classes),
                    background=int(np.argmax(counts)))


def to_dict(task: DenseTask) -> dict:
    return dataclasses.asdict(task)


def from_dict(d: dict) -> DenseTask:
    cls = {"depth": Depth, "colorization": Colorization, "panoptic": Panoptic}[d["name"]]
    return from_record(cls, {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
