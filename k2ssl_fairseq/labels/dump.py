"""Feature dumping: one shard of a split's manifest → ``{split}_{rank}_{nshard}.npy`` + ``.len``."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Protocol, Union

import numpy as np

from ..data.audio import read_audio
from ..data.manifest import read_manifest
from .shards import FeatureShardWriter, LabelPipelineError, shard_range

#: ``progress(done, total)`` is called after each utterance.
ProgressCallback = Callable[[int, int], None]


class FeatureExtractor(Protocol):
    """What :func:`dump_features` needs from an extractor (Kaldi features or a checkpoint layer)."""

    frame_rate: float

    def num_frames(self, num_samples: int) -> int:
        ...

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        ...


def dump_features(tsv_path: Union[str, Path], extractor: FeatureExtractor, feat_dir: Union[str, Path],
                  nshard: int = 1, rank: int = 0, sample_rate: int = 16000,
                  progress: Optional[ProgressCallback] = None) -> Path:
    """Extract features for shard ``rank`` of a manifest and stream them to disk.

    The split name is the manifest's file stem (``train.tsv`` → ``train_{rank}_{nshard}.npy``).

    Args:
        tsv_path: fairseq manifest.
        extractor: a :class:`FeatureExtractor`.
        feat_dir: output directory.
        nshard, rank: which part of the manifest to process (fairseq's rounding).
        sample_rate: required audio sample rate.
        progress: optional ``progress(done, total)`` callback.

    Returns:
        The written ``.npy`` path.

    Raises:
        LabelPipelineError: an empty shard, or an utterance whose feature frame count disagrees
            with the count its manifest sample count predicts (message names the tsv line and file).
    """
    manifest = read_manifest(tsv_path)
    split = Path(tsv_path).stem
    start, end = shard_range(len(manifest), nshard, rank)
    if start == end:
        raise LabelPipelineError(
            f"{manifest.path}: shard {rank} of {nshard} is empty ({len(manifest)} utterances for {nshard} shards)")
    expected = [extractor.num_frames(int(n)) for n in manifest.num_samples[start:end]]
    if sum(expected) == 0:
        raise LabelPipelineError(
            f"{manifest.path}: shard {rank} of {nshard} has no frames (every utterance is shorter than one frame)")
    writer = FeatureShardWriter(feat_dir, split, rank, nshard, sum(expected))
    for done, index in enumerate(range(start, end), start=1):
        audio_path = manifest.audio_path(index)
        waveform = read_audio(audio_path, expected_sample_rate=sample_rate)
        where = f"{manifest.path}:{index + 2} ({audio_path})"
        if len(waveform) != manifest.num_samples[index]:
            raise LabelPipelineError(
                f"{where}: file has {len(waveform)} samples, the manifest says {manifest.num_samples[index]}")
        features = extractor(waveform)
        if features.shape[0] != expected[index - start]:
            raise LabelPipelineError(
                f"{where}: extractor produced {features.shape[0]} frames, {expected[index - start]} expected "
                f"for {manifest.num_samples[index]} samples at {extractor.frame_rate:g} Hz")
        writer.append(features, where)
        if progress is not None:
            progress(done, end - start)
    writer.close()
    return writer.npy_path
