"""Voice embeddings grouped into speakers, and speakers named.

Agglomerative clustering (scikit-learn, average linkage on cosine distance)
finds how many voices there are by a distance threshold, unless the caller
bounds the count. It is deterministic: the same embeddings give the same
clusters, so the same audio gives the same labels. Its work and memory grow
with the square of the points, so at most ``MAX_FIT_POINTS`` windows (an
even spread over the audio) form the clusters; every window is then given
the nearest cluster's centre, which keeps an hour-long upload's clustering
to a few megabytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Cosine distance (1 - similarity) under which two groups of windows are one
# voice (average linkage). Chosen on the synthesized conversations of
# tests/data/diarize (2-4 espeak-ng voices): 0.4-0.45 found every file's
# speaker count, 0.35 split voices and 0.5 merged them. Real voices of one
# sex lie closer together than espeak's, so a real pair may merge: the
# ``min_speakers`` hint is the way out.
DISTANCE_THRESHOLD = 0.4
# At most this many windows are clustered; the rest take the nearest centre.
MAX_FIT_POINTS = 2000
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
    """A cluster label per point."""
    from sklearn.cluster import AgglomerativeClustering

    if len(points) < 2:
        return np.zeros(len(points), dtype=int)

    def cluster(count: int | None) -> np.ndarray:
        model = AgglomerativeClustering(
            n_clusters=count,
            distance_threshold=None if count else DISTANCE_THRESHOLD,
            metric="cosine",
            linkage="average",
        )
        return np.asarray(model.fit_predict(points))

    labels = cluster(None)
    found = int(labels.max()) + 1
    wanted = bounds.clamp(found, len(points))
    return labels if wanted == found else cluster(wanted)


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
