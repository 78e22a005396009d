"""2-D t-SNE embeddings of learned features (e.g. SONIC's 12-unit fusion layer) and their plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from sklearn.manifold import TSNE

from medlite.reports.style import new_figure

DEFAULT_PERPLEXITY = 30.0


def tsne_embedding(features: np.ndarray, seed: int = 0,
                   perplexity: float | None = None) -> np.ndarray:
    """t-SNE of ``features`` ``(N, D)`` to ``(N, 2)`` float64 (scikit-learn ``TSNE`` with PCA
    initialisation and automatic learning rate, ``random_state=seed``: same inputs, same map).

    ``perplexity`` (default 30, roughly the number of neighbours each point attends to) is
    clipped to ``(N - 1) / 3`` for small N, since scikit-learn requires it below N and the
    neighbour search uses ``3 * perplexity + 1`` points. Needs N >= 4.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {features.shape}")
    n_samples = features.shape[0]
    if n_samples < 4:
        raise ValueError(f"t-SNE needs at least 4 samples, got {n_samples}")
    if not np.isfinite(features).all():
        raise ValueError("features hold NaN or infinite values")
    wanted = DEFAULT_PERPLEXITY if perplexity is None else float(perplexity)
    if wanted <= 0:
        raise ValueError(f"perplexity must be > 0, got {perplexity}")
    tsne = TSNE(n_components=2, perplexity=min(wanted, (n_samples - 1) / 3.0), init="pca",
                learning_rate="auto", random_state=seed)
    return tsne.fit_transform(features)


def plot_tsne(embedding: np.ndarray, labels: Sequence[int], class_names: Sequence[str],
              path: str | Path, title: str = "t-SNE of learned features") -> Path:
    """Scatter plot of a 2-D ``embedding`` ``(N, 2)``, one colour per class: ``labels`` ``(N,)``
    are indices into ``class_names``. Written as PNG (150 dpi) to ``path``; returns it."""
    embedding = np.asarray(embedding)
    labels = np.asarray(labels)
    if embedding.ndim != 2 or embedding.shape[1] != 2:
        raise ValueError(f"embedding must be (N, 2), got shape {embedding.shape}")
    if labels.shape != (embedding.shape[0],):
        raise ValueError(f"{embedding.shape[0]} points but labels of shape {labels.shape}")
    unknown = sorted(set(labels.tolist()) - set(range(len(class_names))))
    if unknown:
        raise ValueError(f"labels {unknown} have no entry in class_names ({len(class_names)})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = new_figure((5.5, 5))
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab10"]
    for index, name in enumerate(class_names):
        chosen = labels == index
        if chosen.any():
            ax.scatter(embedding[chosen, 0], embedding[chosen, 1], s=8, alpha=0.7,
                       color=colours(index % 10), label=f"{name} (n={int(chosen.sum())})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(title)
    ax.legend(fontsize=8, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    return path
