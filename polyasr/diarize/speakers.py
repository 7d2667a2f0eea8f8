"""Voice embeddings grouped into speakers, and speakers named.

Agglomerative clustering (SciPy's average linkage on cosine distance) builds
one tree; the number of speakers is where scikit-learn's silhouette score
says the clusters are best separated, within the caller's bounds, unless the
whole tree is too tight for more than one voice. It is deterministic: the
same embeddings give the same clusters, so the same audio gives the same
labels. Its work and memory grow with the square of the points, so at most
``MAX_FIT_POINTS`` windows (an even spread over the audio) form the clusters;
every window is then given the nearest cluster's centre, which keeps an
hour-long upload's clustering to a few megabytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Average-linkage cosine distance (1 - similarity) at which all windows join
# one cluster: below it the audio holds one voice. On the synthesized
# conversations of 2-4 espeak-ng voices the last join lay at 0.36-0.60, and on
# single voices at 0.16-0.29.
ONE_VOICE_DISTANCE = 0.32
# The most speakers looked for without a max_speakers hint.
MAX_FOUND = 10
# At most this many windows are clustered; the rest take the nearest centre.
MAX_FIT_POINTS = 1000
# A cluster is a known speaker when its centre is at least this similar to
# the reference (and no other pairing of clusters and references is better).
KNOWN_SIMILARITY = 0.7


@dataclass(frozen=True)
class Bounds:
    """The caller's hint on how many speakers there are (``None``: no bound)."""

    min_speakers: int | None = None
    max_speakers: int | None = None

    def clamp(self, count: int, points: int) -> int:
        """``count`` brought inside the bounds, and never above ``points``."""
        if self.min_speakers is not None:
            count = max(count, self.min_speakers)
        if self.max_speakers is not None:
            count = min(count, self.max_speakers)
        return max(1, min(count, points))


def _normalized(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def _spread(count: int, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` points spread evenly over ``count``."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(int))


def _fit(points: np.ndarray, bounds: Bounds) -> np.ndarray:
    """A cluster label per point: the average-linkage tree cut into the
    number of speakers whose clusters are best separated (the highest mean
    silhouette), or one speaker when the whole tree joins closer than
    ``ONE_VOICE_DISTANCE``."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist, squareform
    from sklearn.metrics import silhouette_score

    if len(points) < 2 or bounds.clamp(MAX_FOUND, len(points)) == 1:
        return np.zeros(len(points), dtype=int)
    distances = pdist(points.astype(np.float64), "cosine")
    tree = linkage(distances, method="average")

    def cut(count: int) -> np.ndarray:
        return np.asarray(fcluster(tree, count, criterion="maxclust")) - 1

    if bounds.clamp(1, len(points)) == 1 and tree[-1, 2] < ONE_VOICE_DISTANCE:
        return cut(1)
    low, high = max(2, bounds.clamp(2, len(points))), bounds.clamp(MAX_FOUND, len(points))
    if high >= len(points):  # a silhouette needs a cluster with two points
        high = max(low, len(points) - 1)
    square = squareform(distances)

    def separation(count: int) -> float:
        labels = cut(count)
        if not 2 <= len(set(labels)) < len(points):
            return -1.0
        return float(silhouette_score(square, labels, metric="precomputed"))

    best = max(range(low, high + 1), key=lambda count: (separation(count), -count))
    return cut(best)


def cluster_centres(embeddings: np.ndarray, fit_mask: np.ndarray, bounds: Bounds) -> np.ndarray:
    """Each speaker's centre (L2-normalized rows), found from the windows
    ``fit_mask`` marks (the ones long enough to trust; all when none is)."""
    candidates = np.flatnonzero(fit_mask) if fit_mask.any() else np.arange(len(embeddings))
    chosen = candidates[_spread(len(candidates), MAX_FIT_POINTS)]
    points = embeddings[chosen]
    labels = _fit(points, bounds)
    centres = np.stack([points[labels == k].mean(axis=0) for k in range(int(labels.max()) + 1)])
    return _normalized(centres)


def nearest(embeddings: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The index of the most similar centre for every embedding."""
    return np.asarray(np.argmax(_normalized(embeddings) @ centres.T, axis=1))


def match_known(centres: np.ndarray, references: np.ndarray) -> dict[int, int]:
    """``{cluster: reference}`` for the clusters that are a known speaker:
    the pairing with the highest total similarity (each cluster and each
    reference used at most once), keeping pairs at least ``KNOWN_SIMILARITY``
    alike."""
    from scipy.optimize import linear_sum_assignment

    if not len(references) or not len(centres):
        return {}
    similarity = centres @ _normalized(references).T
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    return {int(r): int(c) for r, c in zip(rows, cols, strict=True) if similarity[r, c] >= KNOWN_SIMILARITY}


def letters(index: int) -> str:
    """``A``, ``B``, … ``Z``, ``AA``, ``AB``, …: the ``index``-th unnamed speaker."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


def speaker_names(order: Sequence[int], known: dict[int, str]) -> dict[int, str]:
    """A label per cluster in ``order`` (first appearance): its known name,
    else the next letter among the speakers nobody named."""
    names: dict[int, str] = {}
    unnamed = 0
    for cluster in order:
        if cluster in names:
            continue
        if cluster in known:
            names[cluster] = known[cluster]
        else:
            names[cluster] = letters(unnamed)
            unnamed += 1
    return names
