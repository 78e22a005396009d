"""t-SNE embedding of features and its plot."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.neighbors import KNeighborsClassifier

from medlite.reports.embedding import plot_tsne, tsne_embedding


def _clusters(per_class: int = 15, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.zeros((2, 12))
    centres[1, :] = 6.0
    labels = np.repeat([0, 1], per_class)
    return centres[labels] + rng.standard_normal((labels.size, 12)), labels


def test_tsne_keeps_separated_classes_apart_and_is_reproducible():
    features, labels = _clusters()
    embedding = tsne_embedding(features, seed=0)
    assert embedding.shape == (30, 2)
    # Leave-one-out 1-nearest-neighbour in the map recovers every class.
    knn = KNeighborsClassifier(n_neighbors=2).fit(embedding, labels)
    neighbours = knn.kneighbors(embedding, n_neighbors=2, return_distance=False)[:, 1]
    assert (labels[neighbours] == labels).all()
    np.testing.assert_array_equal(embedding, tsne_embedding(features, seed=0))


def test_tsne_clips_perplexity_for_few_samples():
    features, _ = _clusters(per_class=3)
    assert tsne_embedding(features, seed=1, perplexity=50).shape == (6, 2)
    with pytest.raises(ValueError, match="at least 4 samples"):
        tsne_embedding(features[:3])


def test_plot_tsne_writes_a_png(tmp_path):
    features, labels = _clusters(per_class=5)
    path = plot_tsne(features[:, :2], labels, ["baseline", "stress"], tmp_path / "f" / "t.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300
    with pytest.raises(ValueError, match=r"labels \[2\]"):
        plot_tsne(features[:, :2], np.r_[labels[:-1], 2], ["baseline", "stress"],
                  tmp_path / "bad.png")
