"""Label assignment and the label files fairseq's HuBERT tasks read.

Each frame gets the id of its nearest centroid (exact L2 search with a faiss flat index, in batches
of frames so memory is bounded). Ids are written as fairseq ``.km`` lines, one line per utterance
in manifest order, space-separated, plus ``dict.km.txt`` (``"<id> 1"`` for ids ``0..k-1``: fairseq's
Dictionary puts its 4 specials first, so id ``k`` becomes class index ``k + 4``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np

from ..data.frames import label_frames
from ..data.manifest import read_manifest
from .shards import FeatureShard, LabelPipelineError, shard_range, shard_stem

PathLike = Union[str, Path]


class NearestCentroid:
    """Batched exact nearest-centroid search.

    Args:
        centroids: ``(cluster, feature)`` float32.
    """

    def __init__(self, centroids: np.ndarray):
        import faiss

        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.index = faiss.IndexFlatL2(self.centroids.shape[1])
        self.index.add(self.centroids)

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Ids ``(frame,)`` int64 of the nearest centroid of each row of ``features`` ``(frame, feature)``."""
        if features.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        _, ids = self.index.search(np.ascontiguousarray(features, dtype=np.float32), 1)
        return ids[:, 0].astype(np.int64)

    def squared_distances(self, features: np.ndarray) -> np.ndarray:
        """Squared L2 distance ``(frame,)`` of each row to its nearest centroid."""
        distances, _ = self.index.search(np.ascontiguousarray(features, dtype=np.float32), 1)
        return distances[:, 0].astype(np.float64)


def _utterance_batches(lengths: np.ndarray, batch_frames: int) -> Iterator[slice]:
    """Consecutive utterance ranges of about ``batch_frames`` frames (at least one utterance each)."""
    start = 0
    while start < len(lengths):
        end = start + 1
        frames = int(lengths[start])
        while end < len(lengths) and frames + int(lengths[end]) <= batch_frames:
            frames += int(lengths[end])
            end += 1
        yield slice(start, end)
        start = end


def write_shard_labels(shard: FeatureShard, nearest: NearestCentroid, km_path: PathLike,
                       batch_frames: int = 100_000) -> Path:
    """Assign every frame of a shard and write one ``.km`` line per utterance.

    Raises:
        LabelPipelineError: feature and centroid dimensions differ.
    """
    if shard.dim != nearest.dim:
        raise LabelPipelineError(
            f"{shard.npy_path}: {shard.dim}-dimensional features, but the centroids are {nearest.dim}-dimensional")
    km_path = Path(km_path)
    km_path.parent.mkdir(parents=True, exist_ok=True)
    offsets = shard.offsets
    with open(km_path, "w", encoding="utf-8") as out:
        for utterances in _utterance_batches(shard.lengths, batch_frames):
            first = int(offsets[utterances.start])
            last = int(offsets[utterances.stop - 1] + shard.lengths[utterances.stop - 1])
            ids = nearest(shard.features[first:last])
            for utterance_ids in np.split(ids, np.cumsum(shard.lengths[utterances])[:-1]):
                out.write(" ".join(map(str, utterance_ids.tolist())) + "\n")
    return km_path


def label_shard_path(lab_dir: PathLike, split: str, rank: int, nshard: int) -> Path:
    """``lab_dir/{split}_{rank}_{nshard}.km``, fairseq's per-shard label file name."""
    return shard_stem(lab_dir, split, rank, nshard).with_suffix(".km")


def merge_label_shards(lab_dir: PathLike, split: str, nshard: int) -> Path:
    """Concatenate a split's per-shard ``.km`` files into ``lab_dir/{split}.km``."""
    merged = Path(lab_dir) / f"{split}.km"
    with open(merged, "w", encoding="utf-8") as out:
        for rank in range(nshard):
            part = label_shard_path(lab_dir, split, rank, nshard)
            if not part.is_file():
                raise LabelPipelineError(f"{part}: label shard does not exist")
            out.write(part.read_text(encoding="utf-8"))
    return merged


def write_km_dictionary(lab_dir: PathLike, num_clusters: int) -> Path:
    """Write ``dict.km.txt`` for ids ``0..num_clusters-1`` (fairseq's ``"<symbol> <count>"`` lines)."""
    path = Path(lab_dir) / "dict.km.txt"
    path.write_text("".join(f"{k} 1\n" for k in range(num_clusters)), encoding="utf-8")
    return path


def check_lengths_match_manifest(lengths: Sequence[int], lengths_path: PathLike, tsv_path: PathLike,
                                 label_rate: float, nshard: int = 1, rank: int = 0,
                                 sample_rate: int = 16000) -> None:
    """Check per-utterance frame counts against what a manifest's sample counts predict.

    At 50 Hz the prediction is ``1 + (n - 400) // 320`` (one label per CNN frame), at 100 Hz the
    Kaldi count ``1 + (n - 400) // 160`` (see ``data.frames.label_frames``).

    Args:
        lengths: frames per utterance of shard ``rank`` (from a ``.len`` or ``.km`` file).
        lengths_path: the file they came from, for the message.
        tsv_path: the split's manifest.
        label_rate: frames per second of the features or labels.

    Raises:
        LabelPipelineError: a different utterance count, or the first utterance whose count
            differs (naming the file line, the manifest line and both counts).
    """
    manifest = read_manifest(tsv_path)
    start, end = shard_range(len(manifest), nshard, rank)
    if len(lengths) != end - start:
        raise LabelPipelineError(
            f"{lengths_path}: {len(lengths)} utterances, but shard {rank} of {nshard} of {manifest.path} has "
            f"{end - start}")
    expected = label_frames(manifest.num_samples[start:end], label_rate, sample_rate)
    wrong = np.flatnonzero(np.asarray(lengths, dtype=np.int64) != expected)
    if len(wrong):
        i = int(wrong[0])
        raise LabelPipelineError(
            f"{lengths_path}:{i + 1}: {lengths[i]} frames, but {manifest.path}:{start + i + 2} has "
            f"{manifest.num_samples[start + i]} samples, i.e. {expected[i]} frames at {label_rate:g} Hz "
            f"({len(wrong)} utterances disagree)")


def km_line_lengths(km_path: PathLike, num_clusters: int) -> np.ndarray:
    """Labels per line of a ``.km`` file, checking every id is in ``[0, num_clusters)``."""
    km_path = Path(km_path)
    counts = []
    with open(km_path, encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, start=1):
            ids = line.split()
            bad = [token for token in ids if not token.isdigit() or int(token) >= num_clusters]
            if bad:
                raise LabelPipelineError(f"{km_path}:{line_no}: label {bad[0]!r} is not an id in [0, {num_clusters})")
            counts.append(len(ids))
    return np.asarray(counts, dtype=np.int64)
