"""Feature shards on disk: fairseq's ``{split}_{rank}_{nshard}.npy`` + ``.len`` layout.

A shard holds the utterances ``shard_range(len(manifest), nshard, rank)`` of a split: the ``.npy``
is every frame of those utterances concatenated, shape ``(frame, feature)`` float32, and the
``.len`` has one frame count per utterance in manifest order. These are the files fairseq's
``simple_kmeans`` scripts read and write, so either tool can consume the other's output.

Writing is streamed: the shard's total frame count is known from the manifest before any audio is
read, so the ``.npy`` is preallocated with ``np.lib.format.open_memmap`` and filled utterance by
utterance; memory stays at one utterance whatever the corpus size. The file only gets its final
name once it is complete, so an interrupted run never leaves a shard that looks valid.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, Path]


class LabelPipelineError(ValueError):
    """Inconsistent label-pipeline input or output; the message names the file and what is wrong."""


def shard_range(num_utterances: int, nshard: int, rank: int) -> Tuple[int, int]:
    """Utterances ``[start, end)`` of shard ``rank``, with fairseq's rounding (``round(total / nshard * rank)``).

    Raises:
        LabelPipelineError: ``nshard < 1`` or ``rank`` outside ``[0, nshard)``.
    """
    if nshard < 1 or not 0 <= rank < nshard:
        raise LabelPipelineError(f"shard rank {rank} of {nshard} shards is not valid (need 0 <= rank < nshard)")
    return round(num_utterances / nshard * rank), round(num_utterances / nshard * (rank + 1))


def shard_stem(directory: PathLike, split: str, rank: int, nshard: int) -> Path:
    """Common path prefix of a shard's files: ``directory/{split}_{rank}_{nshard}``."""
    return Path(directory) / f"{split}_{rank}_{nshard}"


class FeatureShardWriter:
    """Streams one shard's features to ``.npy`` + ``.len`` without holding more than one utterance.

    Args:
        feat_dir: output directory (created).
        split, rank, nshard: shard identity, used for the file names.
        total_frames: frames of all utterances of the shard (the ``.npy`` row count).
    """

    def __init__(self, feat_dir: PathLike, split: str, rank: int, nshard: int, total_frames: int):
        Path(feat_dir).mkdir(parents=True, exist_ok=True)
        stem = shard_stem(feat_dir, split, rank, nshard)
        self.npy_path = stem.with_suffix(".npy")
        self.len_path = stem.with_suffix(".len")
        self._partial_path = stem.with_suffix(".npy.partial")
        self.total_frames = int(total_frames)
        self._array: Optional[np.memmap] = None
        self._dim: Optional[int] = None
        self._next_row = 0
        self._lengths: List[int] = []

    def append(self, features: np.ndarray, source: str) -> None:
        """Write one utterance's features, shape ``(frame, feature)``; ``source`` names it in errors."""
        if features.ndim != 2:
            raise LabelPipelineError(f"{source}: features have shape {features.shape}, expected (frame, feature)")
        if features.shape[0] == 0:  # shorter than one frame: an empty label line, no rows
            self._lengths.append(0)
            return
        if self._dim is None:
            self._dim = features.shape[1]
            self._array = np.lib.format.open_memmap(
                self._partial_path, mode="w+", dtype=np.float32, shape=(self.total_frames, self._dim))
        elif features.shape[1] != self._dim:
            raise LabelPipelineError(
                f"{source}: features have {features.shape[1]} dimensions, earlier utterances of "
                f"{self.npy_path} have {self._dim} (mixed dimensions)")
        end = self._next_row + features.shape[0]
        if end > self.total_frames:
            raise LabelPipelineError(
                f"{source}: {self.npy_path} would exceed the {self.total_frames} frames its manifest predicts")
        self._array[self._next_row:end] = features
        self._next_row = end
        self._lengths.append(int(features.shape[0]))

    def close(self) -> None:
        """Flush the ``.npy``, give it its final name and write the ``.len``."""
        if self._array is None:
            raise LabelPipelineError(f"{self.npy_path}: no frames were written (empty shard)")
        if self._next_row != self.total_frames:
            raise LabelPipelineError(
                f"{self.npy_path}: wrote {self._next_row} frames, the manifest predicts {self.total_frames}")
        self._array.flush()
        self._array = None
        os.replace(self._partial_path, self.npy_path)
        self.len_path.write_text("".join(f"{n}\n" for n in self._lengths))


@dataclass
class FeatureShard:
    """A validated shard, memory-mapped.

    Attributes:
        npy_path, len_path: the shard's files.
        features: ``(frame, feature)`` float32 memmap.
        lengths: frames per utterance, ``(utterance,)`` int64.
    """

    npy_path: Path
    len_path: Path
    features: np.ndarray
    lengths: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def offsets(self) -> np.ndarray:
        """First frame of each utterance in ``features``, ``(utterance,)``."""
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)


def read_lengths(len_path: Path) -> np.ndarray:
    """Parse a ``.len`` file, reporting a bad line by number."""
    if not len_path.is_file():
        raise LabelPipelineError(f"{len_path}: frame-count file does not exist")
    counts = []
    with open(len_path, encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, start=1):
            try:
                count = int(line)
            except ValueError:
                raise LabelPipelineError(f"{len_path}:{line_no}: {line.strip()!r} is not a frame count") from None
            if count < 0:
                raise LabelPipelineError(f"{len_path}:{line_no}: negative frame count {count}")
            counts.append(count)
    return np.asarray(counts, dtype=np.int64)


def open_feature_shard(feat_dir: PathLike, split: str, rank: int, nshard: int) -> FeatureShard:
    """Memory-map one shard and check that its ``.npy`` and ``.len`` agree.

    Raises:
        LabelPipelineError: a missing file, a ``.npy`` that is not 2-D float, no frames (empty
            shard), or a row count different from the sum of the ``.len`` file.
    """
    stem = shard_stem(feat_dir, split, rank, nshard)
    npy_path, len_path = stem.with_suffix(".npy"), stem.with_suffix(".len")
    if not npy_path.is_file():
        raise LabelPipelineError(f"{npy_path}: feature file does not exist")
    features = np.load(npy_path, mmap_mode="r")
    if features.ndim != 2 or features.dtype.kind != "f":
        raise LabelPipelineError(f"{npy_path}: expected a 2-D float array, found {features.dtype} {features.shape}")
    lengths = read_lengths(len_path)
    if features.shape[0] == 0 or len(lengths) == 0:
        raise LabelPipelineError(f"{npy_path}: empty shard ({features.shape[0]} frames, {len(lengths)} utterances)")
    if int(lengths.sum()) != features.shape[0]:
        raise LabelPipelineError(
            f"{npy_path}: has {features.shape[0]} frames but {len_path} sums to {int(lengths.sum())}")
    return FeatureShard(npy_path, len_path, features, lengths)


def open_feature_shards(feat_dir: PathLike, split: str, nshard: int) -> List[FeatureShard]:
    """All shards of a split, checked to share one feature dimension."""
    shards = [open_feature_shard(feat_dir, split, rank, nshard) for rank in range(nshard)]
    for shard in shards[1:]:
        if shard.dim != shards[0].dim:
            raise LabelPipelineError(
                f"{shard.npy_path}: {shard.dim}-dimensional features, but {shards[0].npy_path} has "
                f"{shards[0].dim} (mixed dimensions)")
    return shards
