"""Sample quality of generated images, measured in the feature space of a small classifier trained here.

The paper scores its MaskGIT samples with FID and precision/recall in the feature space of an ImageNet Inception
network (Section 4). Those weights cannot be downloaded here and would not suit 28x28 images anyway, so this module
trains a small convolutional classifier on the dataset itself (once; it is cached, and its test accuracy is reported
so a reader can judge the features) and measures, in its penultimate layer:

- the Frechet distance between Gaussians fitted to real and generated features (`metrics.frechet_distance`, the
  formula of FID);
- improved precision and recall (`metrics.precision_recall`): how many generated samples fall inside the manifold of
  the real ones (fidelity), and how many real samples inside the manifold of the generated ones (coverage);
- the classifier's accuracy on the labels that conditioned the generation (does a "Trouser" sample look like one?).

Numbers from this classifier are comparable with each other, not with published FIDs.

Legend: N images, B batch, H W image height and width, C image channels, F feature size, K classes.
"""

import os
import re
from pathlib import Path
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, UInt8

from fsq_ref.common import progress
from fsq_ref.common.errors import InputError
from fsq_ref.data import cache, datasets
from fsq_ref.data.images import to_unit
from fsq_ref.evaluation import metrics
from fsq_ref.training import checkpoint, tokenizer_train, train

VERSION = 1  # part of the cache file name: bump it whenever the network or its training changes
TRAIN_STEPS = 3000  # about 3 epochs of Fashion-MNIST at batch 64 (its accuracy: docs/choices.md)
BATCH_SIZE = 64  # small batches: more accuracy per second of CPU than large ones
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
SEED = 0
FEATURES = 128  # F, the size of the penultimate layer in which the metrics are measured


class Classifier(eqx.Module):
    """Two stride-2 4x4 convolutions (32 and 64 channels), a 128-unit hidden layer (the features), then logits.

    Strided convolutions rather than convolution + max pooling: a training step is several times faster on a CPU,
    which decides whether training fits in a minute or so, at little cost in accuracy (docs/choices.md). Works on ONE
    image, channels last; callers vmap.
    """

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    hidden: eqx.nn.Linear
    logits: eqx.nn.Linear
    image_shape: tuple[int, int, int] = eqx.field(static=True)  # (H, W, C)
    num_classes: int = eqx.field(static=True)

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, *, key: PRNGKeyArray):
        h, w, c = image_shape
        if min(h, w) < 4 or num_classes < 2:
            raise InputError(f"the feature classifier needs images of at least 4x4 pixels and at least 2 classes; "
                             f"got images {h}x{w} and {num_classes} classes")
        conv1_key, conv2_key, hidden_key, logits_key = jr.split(key, 4)
        self.image_shape, self.num_classes = (h, w, c), num_classes
        self.conv1 = eqx.nn.Conv2d(c, 32, 4, stride=2, padding=1, key=conv1_key)
        self.conv2 = eqx.nn.Conv2d(32, 64, 4, stride=2, padding=1, key=conv2_key)

        def halve(n):  # the output size of a 4x4, stride-2, padding-1 convolution
            return (n - 2) // 2 + 1

        self.hidden = eqx.nn.Linear(64 * halve(halve(h)) * halve(halve(w)), FEATURES, key=hidden_key)
        self.logits = eqx.nn.Linear(FEATURES, num_classes, key=logits_key)

    def features(self, x: Float[Array, "H W C"]) -> Float[Array, " F"]:
        """The penultimate layer for one image with pixels in [-1, 1] (see `images.to_unit`)."""
        y = jax.nn.relu(self.conv1(jnp.transpose(x, (2, 0, 1))))  # channel-first inside, as eqx.nn.Conv2d expects
        y = jax.nn.relu(self.conv2(y))
        return jax.nn.relu(self.hidden(y.reshape(-1)))

    def __call__(self, x: Float[Array, "H W C"]) -> Float[Array, " K"]:
        return self.logits(self.features(x))


OPTIMIZER = train.optimizer(WEIGHT_DECAY, b2=0.999)  # AdamW with optax's default betas


def schedule(steps: int) -> optax.Schedule:
    """A short linear warm-up, then a cosine decay to zero over `steps`."""
    return optax.warmup_cosine_decay_schedule(0.0, LEARNING_RATE, min(100, steps // 10), steps)


@eqx.filter_jit
def _step(model: Classifier, opt_state, images: UInt8[Array, "B H W C"], labels: Int[Array, " B"],
          lr_schedule: optax.Schedule, step: Int[Array, ""]):
    """One training step: (model, opt_state, cross-entropy loss)."""
    with jax.numpy_dtype_promotion("standard"):  # optax's schedules mix the int32 step with floats
        lr = lr_schedule(step)  # inside the jit, as optax computes it, so the arithmetic is optax.adamw's exactly

    def loss_fn(model):
        logits = jax.vmap(model)(to_unit(images))
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
    return *train.apply_updates(OPTIMIZER, grads, opt_state, model, lr), loss


def train_classifier(train_ds: datasets.Dataset, test_ds: datasets.Dataset, *, steps: int = TRAIN_STEPS,
                     batch_size: int = BATCH_SIZE, seed: int = SEED) -> tuple[Classifier, float]:
    """Trains the feature classifier on `train_ds`: returns (model, accuracy on the whole of `test_ds`)."""
    if train_ds.num_classes is None or test_ds.num_classes is None:
        raise InputError("the feature classifier learns from labels, but this dataset has none: use a dataset with "
                         "labels (Fashion-MNIST, an .npz with 'labels', or a folder with one subfolder per class)")
    if train_ds.image_shape != test_ds.image_shape:
        raise InputError(f"train images are {train_ds.image_shape} but test images are {test_ds.image_shape}: "
                         "load both splits with the same image_size and channels")
    if steps < 1:
        raise InputError(f"steps must be >= 1; got {steps}")
    model = Classifier(train_ds.image_shape, train_ds.num_classes, key=jr.key(seed))
    opt_state, lr_schedule = OPTIMIZER.init(eqx.filter(model, eqx.is_array)), schedule(steps)
    for i in range(steps):
        images, labels = train_ds.get(datasets.batch_indices(len(train_ds), batch_size, seed, i))
        model, opt_state, _ = _step(model, opt_state, images, labels, lr_schedule, jnp.int32(i))
    images, labels = test_ds.get(np.arange(len(test_ds)))
    return model, float(np.mean(extract(model, images)[1] == labels))


def cache_path(data_spec: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the classifier of `data_spec` is cached: `cache_dir`, else $FSQ_CACHE_DIR, else ~/.cache/fsq-ref."""
    folder = cache_dir or cache.folder()
    name = re.sub(r"[^a-z0-9]+", "-", data_spec.lower()).strip("-")
    return Path(folder) / f"classifier-{name}-v{VERSION}.fsq"


def save(path: str | os.PathLike, model: Classifier, info: dict) -> None:
    """Writes the classifier with `info` (accuracy, steps, data) and the shapes needed to rebuild it."""
    header = {"kind": "feature-classifier", "version": VERSION, "image_shape": list(model.image_shape),
              "num_classes": model.num_classes, **info}
    checkpoint.save(path, header, model)


def load(path: str | os.PathLike) -> tuple[Classifier, dict]:
    """Reads a classifier written by `save`: (model, header). Raises InputError for a missing or damaged file."""
    header = checkpoint.read_header(path)
    if header.get("kind") != "feature-classifier" or header.get("version") != VERSION:
        raise InputError(f"{path} is not a version-{VERSION} feature classifier: delete it to train a new one")
    # The structure (shapes and dtypes) of the saved model, without computing an initialisation.
    like = eqx.filter_eval_shape(Classifier, tuple(header["image_shape"]), header["num_classes"], key=jr.key(0))
    return checkpoint.load(path, like)[1], header


def load_or_train(data_spec: str, *, data_dir: str | None = None, cache_dir: str | os.PathLike | None = None,
                  echo: Callable[[str], None] = progress.say) -> tuple[Classifier, dict]:
    """The feature classifier of a dataset: loaded from the cache, or trained once and cached.

    Args:
      data_spec: the dataset, as `datasets.load` takes it ("fashion-mnist", "procedural:N", a path); its native size.
      data_dir: where to look for Fashion-MNIST first (see `datasets.load`).
      cache_dir: the cache folder; $FSQ_CACHE_DIR or ~/.cache/fsq-ref when None.
      echo: receives one line when the classifier has to be trained.

    Returns:
      (model, info) where info holds the classifier's test `accuracy`, its training `steps`, and the `data` spec.
    """
    path = cache_path(data_spec, cache_dir)
    if path.exists():
        try:
            model, header = load(path)
            if header.get("data") == data_spec:
                return model, {k: header[k] for k in ("accuracy", "steps", "data")}
            echo(f"{path} was trained on {header.get('data')!r}, not {data_spec!r}; training again")
        except InputError as e:  # a damaged cache is only a lost minute: train again rather than fail
            echo(f"cannot use the cached feature classifier ({e}); training again")
    cache.make_folder(path)  # fail now rather than after training if the cache cannot be written
    echo(f"training the feature classifier for {data_spec} once ({TRAIN_STEPS} steps, about a minute on a CPU); "
         f"caching it in {path}")
    model, accuracy = train_classifier(datasets.load(data_spec, "train", data_dir=data_dir),
                                       datasets.load(data_spec, "test", data_dir=data_dir), steps=TRAIN_STEPS)
    info = {"accuracy": accuracy, "steps": TRAIN_STEPS, "data": data_spec}
    save(path, model, info)
    return model, info


@eqx.filter_jit
def _features_and_predictions(model: Classifier, images: UInt8[Array, "B H W C"]):
    x = to_unit(images)
    features = jax.vmap(model.features)(x)
    return features, jnp.argmax(jax.vmap(model.logits)(features), axis=-1)


def extract(model: Classifier, images: UInt8[np.ndarray, "N H W C"],
            batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Features (float64 [N, F]) and predicted classes (int [N]) of uint8 images, computed batch by batch."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != model.image_shape or len(images) == 0:
        expected = ", ".join(map(str, model.image_shape))
        raise InputError(f"the feature classifier takes uint8 images of shape [N, {expected}] with N >= 1; got "
                         f"{images.dtype} {list(images.shape)}: generate images at the size of its training data")
    features, predictions = [], []
    for idx, n in datasets.pass_indices(len(images), batch_size):
        f, p = _features_and_predictions(model, images[idx])
        features.append(np.asarray(f[:n], np.float64))
        predictions.append(np.asarray(p[:n]))
    return np.concatenate(features), np.concatenate(predictions)


def sample_quality(model: Classifier, real_images: UInt8[np.ndarray, "N H W C"],
                   fake_images: UInt8[np.ndarray, "M H W C"], fake_labels: Int[np.ndarray, " M"] | None = None, *,
                   k: int = 3) -> dict[str, float]:
    """Frechet distance, precision and recall between real and generated images in the classifier's feature space,
    and, given the labels that conditioned the generation, the classifier's accuracy on them (`label_accuracy`)."""
    real, _ = extract(model, real_images)
    fake, predicted = extract(model, fake_images)
    precision, recall = metrics.precision_recall(real, fake, k)
    result = {"frechet_distance": metrics.frechet_distance(real, fake), "precision": precision, "recall": recall}
    if fake_labels is not None:
        fake_labels = np.asarray(fake_labels)
        if fake_labels.shape != predicted.shape:
            raise InputError(f"fake_labels must hold one label per generated image, shape [{len(predicted)}]; got "
                             f"{list(fake_labels.shape)}")
        result["label_accuracy"] = float(np.mean(predicted == fake_labels))
    return result


def read_samples(path) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images [N, H, W, C] and the conditioning labels (None where unconditional) of a samples file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"] if "labels" in f.files else None
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"cannot read samples {path} ({e}): give an .npz written by `fsq generate`") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise InputError(f"{path}: images must be uint8 [N, H, W(, C)]; got {images.dtype} {list(images.shape)}")
    images = images[..., None] if images.ndim == 3 else images
    if labels is not None and np.all(labels < 0):
        labels = None  # unconditional samples: no class to check
    return images, labels


def evaluate_samples(samples, data_spec: str, *, data_dir: str | None = None, autoencoder=None,
                     echo: Callable[[str], None] = progress.say) -> dict:
    """Sample quality of the samples file `samples` (`fsq generate`) against the test split of `data_spec`, and of the
    tokenizer in `autoencoder` (when given) reconstructing as many test images: the best any generator on its tokens
    can do. Returns {"classifier_accuracy", "reference_images", "samples": {...}, "reconstructions": {...}}, each
    entry with `sample_quality`'s figures and its number of `images`."""
    fake, labels = read_samples(samples)
    classifier, info = load_or_train(data_spec, data_dir=data_dir, echo=echo)
    test = datasets.load(data_spec, "test", data_dir=data_dir, image_size=fake.shape[1], channels=fake.shape[3])
    real, real_labels = test.get(np.arange(len(test)))
    result = {"classifier_accuracy": info["accuracy"], "reference_images": len(real),
              "samples": {**sample_quality(classifier, real, fake, labels), "images": len(fake)}}
    if autoencoder is not None:
        # Reconstructions of as many test images as there are samples: Frechet distance depends on the set size.
        count = min(len(fake), len(real))
        result["reconstructions"] = {**reconstruction_quality(classifier, real, real_labels, autoencoder, count),
                                     "images": count}
    return result


def reconstruction_quality(model: Classifier, real_images: UInt8[np.ndarray, "N H W C"], labels: Int[np.ndarray, " N"],
                           autoencoder, count: int) -> dict[str, float]:
    """`sample_quality` of the tokenizer in `autoencoder` reconstructing `count` images drawn (seeded) from
    `real_images`, against all of them: the best any generator on its tokens can do, at a set size of `count`."""
    ae_model, qstate, _ = tokenizer_train.load(autoencoder)
    pick = np.random.default_rng(0).choice(len(real_images), size=min(count, len(real_images)), replace=False)
    recon = tokenizer_train.reconstruct_all(ae_model, qstate, real_images[pick])
    return sample_quality(model, real_images, recon, labels[pick])
