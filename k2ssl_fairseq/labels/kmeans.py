"""Seeded faiss k-means on a frame sample read through memory maps.

fairseq's ``learn_kmeans.py`` loads (a percentage of) every feature into RAM and runs an unseeded
sklearn ``MiniBatchKMeans``. Here at most ``max_points`` frames are drawn uniformly from all shards
(a seeded draw of global frame indices, read in sorted order from the memmaps), so memory is
``max_points x dim`` floats whatever the corpus size, and the draw, hence the centroids, does not
depend on how the features were sharded.

Centroids are saved as a ``(cluster, feature)`` float32 ``.npy``. For fairseq's own
``dump_km_label.py`` (which reads ``cluster_centers_`` from a joblib file) a fitted sklearn
``KMeans`` holding exactly these centroids can be exported as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .shards import FeatureShard, LabelPipelineError

#: Frames gathered from a memmap per read while sampling.
READ_BLOCK_FRAMES = 65536


@dataclass
class KmeansResult:
    """Learned centroids and how they fit the training sample.

    Attributes:
        centroids: ``(cluster, feature)`` float32.
        inertia: sum of squared distances of the sample to its nearest centroid.
        num_points: size of the training sample.
    """

    centroids: np.ndarray
    inertia: float
    num_points: int


def sample_frames(shards: Sequence[FeatureShard], max_points: Optional[int], seed: int) -> np.ndarray:
    """Draw up to ``max_points`` frames uniformly without replacement from all shards.

    Args:
        shards: a split's shards in rank order (their concatenation is the split).
        max_points: sample size; ``None`` or more than the frame count takes every frame.
        seed: the draw is a function of (seed, total frame count) only.

    Returns:
        ``(point, feature)`` float32, in global frame order.
    """
    sizes = np.array([shard.features.shape[0] for shard in shards], dtype=np.int64)
    total = int(sizes.sum())
    if max_points is None or max_points >= total:
        chosen = np.arange(total, dtype=np.int64)
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(total, size=max_points, replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    points = np.empty((len(chosen), shards[0].dim), dtype=np.float32)
    for shard, first, last in zip(shards, starts[:-1], starts[1:]):
        shard_begin, shard_end = np.searchsorted(chosen, [first, last])
        for begin in range(shard_begin, shard_end, READ_BLOCK_FRAMES):  # blocks: no second full-size copy
            end = min(begin + READ_BLOCK_FRAMES, shard_end)
            points[begin:end] = shard.features[chosen[begin:end] - first]
    return points


def learn_kmeans(points: np.ndarray, num_clusters: int, seed: int = 0, num_iterations: int = 100,
                 num_redo: int = 1, verbose: bool = False) -> KmeansResult:
    """Lloyd k-means with faiss (initial centroids drawn from the points with ``seed``; empty clusters split).

    Args:
        points: ``(point, feature)`` float32.
        num_clusters: k.
        seed: faiss's random seed; the same points and seed give the same centroids.
        num_iterations: Lloyd iterations per run.
        num_redo: runs from different initialisations; the lowest-inertia run is kept.
        verbose: faiss's per-iteration log.

    Raises:
        LabelPipelineError: fewer points than clusters.
    """
    import faiss

    if points.shape[0] < num_clusters:
        raise LabelPipelineError(f"k-means needs at least {num_clusters} frames, the sample has {points.shape[0]}")
    points = np.ascontiguousarray(points, dtype=np.float32)
    kmeans = faiss.Kmeans(
        points.shape[1], num_clusters, niter=num_iterations, nredo=num_redo, seed=seed, verbose=verbose,
        max_points_per_centroid=-(-points.shape[0] // num_clusters),  # the sample is already drawn
    )
    kmeans.train(points)
    return KmeansResult(centroids=kmeans.centroids.copy(), inertia=float(kmeans.obj[-1]),
                        num_points=int(points.shape[0]))


def save_centroids(centroids: np.ndarray, path: Union[str, Path]) -> None:
    """Write centroids, ``(cluster, feature)`` float32, as ``.npy``."""
    np.save(Path(path), np.asarray(centroids, dtype=np.float32))


def load_centroids(path: Union[str, Path]) -> np.ndarray:
    """Read centroids saved by :func:`save_centroids` (or any ``(cluster, feature)`` float array).

    Raises:
        LabelPipelineError: a missing file or an array that is not 2-D float.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelPipelineError(f"{path}: centroid file does not exist")
    centroids = np.load(path)
    if centroids.ndim != 2 or centroids.dtype.kind != "f" or centroids.shape[0] == 0:
        raise LabelPipelineError(f"{path}: expected a (cluster, feature) float array, found "
                                 f"{centroids.dtype} {centroids.shape}")
    return centroids.astype(np.float32, copy=False)


def export_sklearn_model(centroids: np.ndarray, path: Union[str, Path]) -> None:
    """Save a fitted sklearn ``KMeans`` whose ``cluster_centers_`` are ``centroids`` (joblib).

    The model is fitted on the centroids themselves, initialised at the centroids, so each centroid
    is its own cluster; the centres are then set to the exact float32 centroids (the fit's mean of
    one point can differ in the last bit). fairseq's ``dump_km_label.py`` and ``model.predict`` then
    use exactly these centres. Like fairseq's, the file is specific to the installed sklearn version.

    Raises:
        LabelPipelineError: centroids that are not distinct (two would share one sklearn cluster).
    """
    import joblib
    from sklearn.cluster import KMeans

    centers = np.asarray(centroids, dtype=np.float32)
    model = KMeans(n_clusters=centers.shape[0], init=centers, n_init=1, max_iter=1).fit(centers)
    if not np.array_equal(model.labels_, np.arange(centers.shape[0])):
        raise LabelPipelineError(f"{path}: centroids are not distinct, cannot export them as an sklearn model")
    model.cluster_centers_ = centers.copy()
    joblib.dump(model, Path(path))
