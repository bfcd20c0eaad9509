"""Sample-quality metrics: the Frechet distance against its closed form, precision/recall against a brute-force
reference and their behaviour on collapsed or displaced samples, and the classifier's training, extraction and cache."""

import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp

from fsq_ref.common.errors import InputError
from fsq_ref.data import datasets
from fsq_ref.evaluation import features, metrics


@pytest.fixture(scope="module")
def procedural():
    return datasets.load("procedural:256", "train"), datasets.load("procedural:256", "test")


@pytest.fixture(scope="module")
def tiny(procedural):
    """A classifier trained for a few steps: enough to test the plumbing, not the accuracy."""
    return features.train_classifier(*procedural, steps=40, batch_size=32, seed=0)


def standardized(n: int, f: int, seed: int) -> np.ndarray:
    """n samples of f features whose sample mean is exactly 0 and sample covariance exactly the identity."""
    x = np.random.default_rng(seed).normal(size=(n, f))
    q, _ = np.linalg.qr(x - x.mean(axis=0))  # orthonormal columns, each orthogonal to the all-ones vector
    return q * np.sqrt(n - 1)


@pytest.mark.parametrize("dim", [1, 4])
def test_frechet_distance_matches_closed_form_for_diagonal_gaussians(dim):
    # With diagonal covariances the trace term is sum(s_a * s_b), so FD = |m_a - m_b|^2 + |s_a - s_b|^2.
    rng = np.random.default_rng(dim)
    mean_a, mean_b = rng.normal(size=dim), rng.normal(size=dim)
    std_a, std_b = rng.uniform(0.5, 3, dim), rng.uniform(0.5, 3, dim)
    a = mean_a + std_a * standardized(500, dim, seed=1)
    b = mean_b + std_b * standardized(700, dim, seed=2)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((std_a - std_b) ** 2)
    assert np.isclose(metrics.frechet_distance(a, b), expected, rtol=1e-9)


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_mean_shift():
    a = np.random.default_rng(0).normal(size=(300, 8)) @ np.random.default_rng(1).normal(size=(8, 8))
    assert metrics.frechet_distance(a, a) < 1e-9
    direction = np.random.default_rng(2).normal(size=8)
    direction /= np.linalg.norm(direction)
    distances = [metrics.frechet_distance(a, a + shift * direction) for shift in (0.5, 1.0, 2.0, 4.0)]
    # Same covariance, so only the mean term remains: exactly shift^2.
    np.testing.assert_allclose(distances, [0.25, 1.0, 4.0, 16.0], rtol=1e-6)


def feature_set(f: int):
    return hnp.arrays(np.float64, st.tuples(st.integers(2, 12), st.just(f)), elements=st.floats(-10, 10))


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 6).flatmap(lambda f: st.tuples(feature_set(f), feature_set(f))))
def test_frechet_distance_is_non_negative_and_symmetric(sets):
    a, b = sets
    ab, ba = metrics.frechet_distance(a, b), metrics.frechet_distance(b, a)
    assert ab >= 0 and ba >= 0
    # Rank-deficient covariances (fewer samples than features) make the square root ill-conditioned; the tolerance is
    # relative to the scale of the traces.
    scale = 1 + np.trace(np.atleast_2d(np.cov(a, rowvar=False))) + np.trace(np.atleast_2d(np.cov(b, rowvar=False)))
    assert abs(ab - ba) <= 1e-5 * scale


def brute_force_precision_recall(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    d = np.linalg.norm(real[:, None] - fake[None], axis=-1)  # [N real, M fake]
    precision = np.mean((d <= radii(real)[:, None]).any(axis=0))
    recall = np.mean((d <= radii(fake)[None, :]).any(axis=1))
    return precision, recall


@settings(deadline=None, max_examples=30)
@given(st.integers(0, 2**31), st.integers(5, 40), st.integers(5, 40), st.integers(1, 4))
def test_precision_recall_matches_brute_force_and_swaps_roles(seed, n, m, k):
    rng = np.random.default_rng(seed)
    real, fake = rng.normal(size=(n, 3)), rng.normal(0.5, 1.5, size=(m, 3))
    precision, recall = metrics.precision_recall(real, fake, k)
    assert np.allclose((precision, recall), brute_force_precision_recall(real, fake, k))
    # Recall is precision with the roles of the two sets exchanged.
    assert np.allclose(metrics.precision_recall(fake, real, k), (recall, precision))


def test_precision_recall_in_chunks_matches_brute_force(monkeypatch):
    monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", 1000)  # chunks of 3 to 5 rows, the last one shorter
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(300, 4)), rng.normal(0.3, 1.2, size=(200, 4))
    assert np.allclose(metrics.precision_recall(real, fake), brute_force_precision_recall(real, fake, 3))


def test_precision_recall_detect_identical_collapsed_and_distant_samples():
    real = np.random.default_rng(0).normal(size=(1000, 16))
    assert metrics.precision_recall(real, real) == (1.0, 1.0)
    # Mode collapse: every fake sample is one of 10 real points (plus a little noise). Each lies on the real
    # manifold (precision stays high) but the fakes cover only a sliver of it (recall falls).
    collapsed = real[np.arange(1000) % 10] + np.random.default_rng(1).normal(0, 0.01, (1000, 16))
    precision, recall = metrics.precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.05
    # Distant samples: nothing generated looks real.
    precision, recall = metrics.precision_recall(real, real + 10.0)
    assert precision == 0.0 and recall == 0.0


def test_metrics_reject_mismatched_features():
    with pytest.raises(InputError, match="same F"):
        metrics.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(InputError, match="at least 4 rows"):
        metrics.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)


def test_extract_is_independent_of_the_batch_size(tiny, procedural):
    model, _ = tiny
    images, _ = procedural[1].get(np.arange(100))
    feats, predicted = features.extract(model, images, batch_size=100)
    assert feats.shape == (100, features.FEATURES) and feats.dtype == np.float64 and predicted.shape == (100,)
    padded_feats, padded_predicted = features.extract(model, images, batch_size=32)  # last batch padded: 4 of 32
    np.testing.assert_allclose(padded_feats, feats, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(padded_predicted, predicted)
    with pytest.raises(InputError, match="uint8 images of shape"):
        features.extract(model, np.zeros((4, 32, 32, 1), np.uint8))


def test_sample_quality_of_the_real_images_themselves(tiny, procedural):
    model, accuracy = tiny
    assert 0.0 <= accuracy <= 1.0
    images, labels = procedural[1].get(np.arange(len(procedural[1])))
    result = features.sample_quality(model, images, images, labels)
    assert result["frechet_distance"] < 1e-6 and result["precision"] == result["recall"] == 1.0
    assert result["label_accuracy"] == accuracy  # the test split is what train_classifier scored
    assert "label_accuracy" not in features.sample_quality(model, images, images[:50])


def test_classifier_needs_labels(procedural):
    unlabelled = datasets.ArrayDataset(np.zeros((8, 28, 28, 1), np.uint8), None, None)
    with pytest.raises(InputError, match="labels"):
        features.train_classifier(unlabelled, procedural[1], steps=1, batch_size=4, seed=0)


def test_cache_round_trip_and_corrupt_cache_is_retrained(tiny, tmp_path, monkeypatch):
    model, accuracy = tiny
    spec = "procedural:256"
    monkeypatch.setenv("FSQ_CACHE_DIR", str(tmp_path))
    path = features.cache_path(spec)
    assert path == tmp_path / f"classifier-procedural-256-v{features.VERSION}.fsq"
    features.save(path, model, {"accuracy": accuracy, "steps": 40, "data": spec})

    said = []
    loaded, info = features.load_or_train(spec, echo=said.append)
    assert said == []  # found in the cache: no training
    assert info == {"accuracy": accuracy, "steps": 40, "data": spec}
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(loaded), jax.tree.leaves(model)))

    path.write_bytes(path.read_bytes()[:-100])  # truncated
    monkeypatch.setattr(features, "TRAIN_STEPS", 5)
    _, info = features.load_or_train(spec, echo=said.append)
    assert info["steps"] == 5 and "corrupt" in said[0] and str(path) in said[1]
    said.clear()
    features.load_or_train(spec, echo=said.append)  # the retrained model was cached
    assert said == []


@pytest.mark.slow
def test_fashion_mnist_classifier_is_accurate(tmp_path):
    try:
        train_ds, test_ds = datasets.load("fashion-mnist", "train"), datasets.load("fashion-mnist", "test")
    except InputError as e:
        pytest.skip(str(e))
    _, accuracy = features.train_classifier(train_ds, test_ds)
    assert accuracy >= 0.88
