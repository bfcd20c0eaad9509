"""Sample quality of generated images, measured in the feature space of a small classifier trained here.

The paper scores its MaskGIT samples with FID and precision/recall in the feature space of an ImageNet Inception
network (Section 4.1). Those weights cannot be downloaded here and would not suit 28x28 images anyway, so this module
trains a small convolutional classifier on the dataset itself (once; it is cached, and its test accuracy is reported
so a reader can judge the features) and measures, in its penultimate layer:

- the Frechet distance between Gaussians fitted to real and generated features (the formula of FID, Heusel et al.
  2017): ||mu_r - mu_g||^2 + tr(S_r) + tr(S_g) - 2 tr((S_r S_g)^(1/2));
- improved precision and recall (Kynkaanniemi et al. 2019): the fraction of generated samples that fall inside the
  manifold of the real ones (fidelity), and of real samples inside the manifold of the generated ones (coverage),
  each manifold being the union of balls reaching every point's k-th nearest neighbour;
- the classifier's accuracy on the labels that conditioned the generation (does a "Trouser" sample look like one?).

Numbers from this classifier are comparable with each other, not with published FIDs.

Legend: N images, B batch, H W image height and width, C image channels, F feature size, K classes.
"""

import os
import re
from pathlib import Path
from typing import Callable

import click
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, UInt8

from fsq_ref import checkpoint, data
from fsq_ref.errors import InputError
from fsq_ref.tokenizer import to_unit

VERSION = 1  # part of the cache file name: bump it whenever the network or its training changes
TRAIN_STEPS = 3000  # about 3 epochs of Fashion-MNIST at batch 64: ~91% test accuracy in about a minute on 2 cores
BATCH_SIZE = 64  # small batches: more accuracy per second of CPU than large ones
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
SEED = 0
FEATURES = 128  # F, the size of the penultimate layer in which the metrics are measured
# Pairwise distances are computed a few million at a time: all 10^8 of two 10^4-image sets would take 800 MB.
CHUNK_ELEMENTS = 2**22


class Classifier(eqx.Module):
    """Two stride-2 4x4 convolutions (32 and 64 channels), a 128-unit hidden layer (the features), then logits.

    Strided convolutions rather than convolution + max pooling: a training step is four times faster on a CPU, which
    decides whether training fits in about a minute, and the network still reaches ~91% on Fashion-MNIST. Works on ONE image, channels last; callers vmap.
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
        """The penultimate layer for one image with pixels in [-1, 1] (see `tokenizer.to_unit`)."""
        y = jax.nn.relu(self.conv1(jnp.transpose(x, (2, 0, 1))))  # channel-first inside, as eqx.nn.Conv2d expects
        y = jax.nn.relu(self.conv2(y))
        return jax.nn.relu(self.hidden(y.reshape(-1)))

    def __call__(self, x: Float[Array, "H W C"]) -> Float[Array, " K"]:
        return self.logits(self.features(x))


def optimizer(steps: int) -> optax.GradientTransformation:
    """AdamW with a short warm-up and a cosine decay to zero over `steps`."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, LEARNING_RATE, min(100, steps // 10), steps)
    return optax.adamw(schedule, weight_decay=WEIGHT_DECAY)


def make_step(steps: int):
    """The jitted training step: (model, opt_state, uint8 images [B, H, W, C], int labels [B]) -> (model, opt_state,
    cross-entropy loss)."""
    opt = optimizer(steps)

    @eqx.filter_jit
    def step(model: Classifier, opt_state, images: UInt8[Array, "B H W C"], labels: Int[Array, " B"]):
        def loss_fn(model):
            logits = jax.vmap(model)(to_unit(images))
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        # optax mixes its int32 step count with floats; allow that even where a caller makes promotion strict.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    return step


def train_classifier(train_ds: data.Dataset, test_ds: data.Dataset, *, steps: int = TRAIN_STEPS,
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
    step = make_step(steps)
    opt_state = optimizer(steps).init(eqx.filter(model, eqx.is_array))
    for i in range(steps):
        images, labels = train_ds.get(data.batch_indices(len(train_ds), batch_size, seed, i))
        model, opt_state, _ = step(model, opt_state, images, labels)
    images, labels = test_ds.get(np.arange(len(test_ds)))
    return model, float(np.mean(extract(model, images)[1] == labels))


def cache_path(data_spec: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the classifier of `data_spec` is cached: `cache_dir`, else $FSQ_CACHE_DIR, else ~/.cache/fsq-ref."""
    folder = cache_dir or os.environ.get("FSQ_CACHE_DIR") or Path.home() / ".cache" / "fsq-ref"
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
                  echo: Callable[[str], None] = click.echo) -> tuple[Classifier, dict]:
    """The feature classifier of a dataset: loaded from the cache, or trained once and cached.

    Args:
      data_spec: the dataset, as `data.load` takes it ("fashion-mnist", "procedural:N", a path); its native size.
      data_dir: where to look for Fashion-MNIST first (see `data.load`).
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
    try:  # fail now rather than after training if the cache cannot be written
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the cache folder {path.parent} ({e}): set FSQ_CACHE_DIR to a writable "
                         "folder") from None
    echo(f"training the feature classifier for {data_spec} once ({TRAIN_STEPS} steps, about a minute on a CPU); "
         f"caching it in {path}")
    model, accuracy = train_classifier(data.load(data_spec, "train", data_dir=data_dir),
                                       data.load(data_spec, "test", data_dir=data_dir), steps=TRAIN_STEPS)
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
    batch_size = min(batch_size, len(images))
    features, predictions = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        n = len(batch)
        f, p = _features_and_predictions(model, data.pad_to(batch, batch_size))
        features.append(np.asarray(f[:n], np.float64))
        predictions.append(np.asarray(p[:n]))
    return np.concatenate(features), np.concatenate(predictions)


def frechet_distance(feats_a: Float[np.ndarray, "N F"], feats_b: Float[np.ndarray, "M F"]) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)) between Gaussians fitted to two feature sets.

    S_a S_b is not symmetric, and a general matrix square root of it (scipy's sqrtm) can turn complex from rounding.
    Its eigenvalues equal those of sqrt(S_a) S_b sqrt(S_a), which is symmetric positive semi-definite, so the trace of
    the square root is the sum of the square roots of that matrix's eigenvalues, all real (clipped at 0 against
    rounding).

    References: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
    Equilibrium", Eq. 6.
    """
    a, b = _check_features(feats_a, feats_b, minimum=2)
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    eigvals, eigvecs = np.linalg.eigh(cov_a)
    sqrt_a = (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    return max(float(distance), 0.0)  # a squared distance; rounding can leave it a hair below zero


def precision_recall(real_feats: Float[np.ndarray, "N F"], fake_feats: Float[np.ndarray, "M F"],
                     k: int = 3) -> tuple[float, float]:
    """Improved precision and recall: (fraction of fake samples inside the real manifold, fraction of real samples
    inside the fake manifold), a manifold being the union of balls around its points, each reaching that point's
    k-th nearest neighbour in its own set.

    References: Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative Models",
    Eqs. 1-3.
    """
    real, fake = _check_features(real_feats, fake_feats, minimum=k + 1)
    if k < 1:
        raise InputError(f"k must be >= 1; got {k}")
    real_radii, fake_radii = _knn_radii(real, k), _knn_radii(fake, k)
    fake_inside = np.zeros(len(fake), bool)  # inside some real ball
    real_inside = np.zeros(len(real), bool)  # inside some fake ball
    for start, d2 in _squared_distances(real, fake):  # d2: rows of real against all of fake
        rows = slice(start, start + len(d2))
        fake_inside |= (d2 <= real_radii[rows, None]).any(axis=0)
        real_inside[rows] = (d2 <= fake_radii[None, :]).any(axis=1)
    return float(fake_inside.mean()), float(real_inside.mean())


def sample_quality(model: Classifier, real_images: UInt8[np.ndarray, "N H W C"],
                   fake_images: UInt8[np.ndarray, "M H W C"], fake_labels: Int[np.ndarray, " M"] | None = None, *,
                   k: int = 3) -> dict[str, float]:
    """Frechet distance, precision and recall between real and generated images in the classifier's feature space,
    and, given the labels that conditioned the generation, the classifier's accuracy on them (`label_accuracy`)."""
    real, _ = extract(model, real_images)
    fake, predicted = extract(model, fake_images)
    precision, recall = precision_recall(real, fake, k)
    result = {"frechet_distance": frechet_distance(real, fake), "precision": precision, "recall": recall}
    if fake_labels is not None:
        fake_labels = np.asarray(fake_labels)
        if fake_labels.shape != predicted.shape:
            raise InputError(f"fake_labels must hold one label per generated image, shape [{len(predicted)}]; got "
                             f"{list(fake_labels.shape)}")
        result["label_accuracy"] = float(np.mean(predicted == fake_labels))
    return result


def _check_features(a, b, *, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < minimum:
        raise InputError(f"need two feature sets [N, F] with the same F and at least {minimum} rows each; got "
                         f"{list(a.shape)} and {list(b.shape)}")
    return a, b


def _squared_distances(a: np.ndarray, b: np.ndarray):
    """Yields (row offset, squared distances [rows, M]) for chunks of the rows of `a` [N, F] against all of `b`."""
    rows = max(1, CHUNK_ELEMENTS // len(b))
    b_sq = np.sum(b**2, axis=1)
    for start in range(0, len(a), rows):
        chunk = a[start:start + rows]
        d2 = np.sum(chunk**2, axis=1)[:, None] + b_sq[None, :] - 2 * chunk @ b.T
        yield start, np.maximum(d2, 0)  # the expansion can round a tiny distance below zero


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """The squared distance from each point of `x` to its k-th nearest other point: [N]."""
    radii = np.empty(len(x))
    for start, d2 in _squared_distances(x, x):
        # Column k after partitioning: column 0 is the point itself, at distance 0.
        radii[start:start + len(d2)] = np.partition(d2, k, axis=1)[:, k]
    return radii
