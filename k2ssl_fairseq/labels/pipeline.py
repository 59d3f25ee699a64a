"""The whole label recipe for a corpus: features → k-means → labels, checked against the manifests.

Iteration 1 uses MFCC (or fbank) at 100 Hz, or decimated to 50 Hz so labels align with the CNN;
iteration 2 uses layer L of a checkpoint at 50 Hz. The output directory then serves as fairseq's
``task.label_dir`` (``{split}.km`` + ``dict.km.txt``) next to the corpus's ``task.data``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from .assign import (
    NearestCentroid,
    check_lengths_match_manifest,
    km_line_lengths,
    label_shard_path,
    merge_label_shards,
    write_km_dictionary,
    write_shard_labels,
)
from .checkpoint_features import CheckpointLayerExtractor
from .dump import FeatureExtractor, dump_features
from .kaldi_features import KaldiFeatureExtractor
from .kmeans import export_sklearn_model, learn_kmeans, sample_frames, save_centroids
from .shards import open_feature_shard, open_feature_shards

Log = Callable[[str], None]


@dataclass
class FeatureSpec:
    """Which features to cluster.

    Attributes:
        kind: ``"mfcc"``, ``"fbank"`` or ``"checkpoint"``.
        label_rate: 100 or 50 for Kaldi features; always 50 for a checkpoint.
        checkpoint, layer: the model and its 1-based layer (``kind == "checkpoint"``).
        device: where the checkpoint's model runs.
        chunk_samples, context_samples: long-file windows for the checkpoint (see
            ``checkpoint_features``).
        arg_overrides: fairseq overrides applied when loading the checkpoint.
        trusted_checkpoint: fully unpickle the checkpoint (see ``k2ssl_fairseq.checkpoints``).
    """

    kind: str = "mfcc"
    label_rate: float = 100.0
    checkpoint: Optional[Path] = None
    layer: Optional[int] = None
    device: str = "cpu"
    chunk_samples: int = 1_600_000
    context_samples: int = 80_000
    arg_overrides: Dict[str, Any] = field(default_factory=dict)
    trusted_checkpoint: bool = False


def build_extractor(spec: FeatureSpec) -> FeatureExtractor:
    """The extractor a :class:`FeatureSpec` describes.

    Raises:
        ValueError: an unknown kind, a label rate other than 50/100, or a checkpoint without a layer.
    """
    if spec.kind in ("mfcc", "fbank"):
        if spec.label_rate not in (50.0, 100.0):
            raise ValueError(f"{spec.kind} features are 100 Hz or decimated to 50 Hz, got label rate {spec.label_rate}")
        return KaldiFeatureExtractor(spec.kind, downsample_to_cnn_rate=spec.label_rate == 50.0)
    if spec.kind == "checkpoint":
        if spec.checkpoint is None or spec.layer is None:
            raise ValueError("checkpoint features need both a checkpoint path and a layer")
        if spec.label_rate != 50.0:
            raise ValueError(f"checkpoint features are at the CNN rate, 50 Hz; got label rate {spec.label_rate}")
        return CheckpointLayerExtractor(spec.checkpoint, spec.layer, spec.device, spec.chunk_samples,
                                        spec.context_samples, spec.arg_overrides or None,
                                        spec.trusted_checkpoint)
    raise ValueError(f"feature kind must be mfcc, fbank or checkpoint, got {spec.kind!r}")


class ProgressPrinter:
    """``progress(done, total)`` callback that logs every tenth of the work, with rate and elapsed time."""

    def __init__(self, what: str, log: Log):
        self.what = what
        self.log = log
        self.started = time.perf_counter()
        self.last_tenth = -1

    def __call__(self, done: int, total: int) -> None:
        tenth = done * 10 // total
        if tenth != self.last_tenth:
            self.last_tenth = tenth
            elapsed = time.perf_counter() - self.started
            rate = done / max(elapsed, 1e-9)
            self.log(f"  {self.what}: {done}/{total} utterances, {elapsed:.1f} s ({rate:.1f} utt/s)")


def make_labels(data_dir: Path, out_dir: Path, spec: FeatureSpec, num_clusters: int,
                splits: Sequence[str] = ("train", "valid"), train_split: str = "train",
                max_points: Optional[int] = 1_000_000, seed: int = 0, nshard: int = 1,
                num_iterations: int = 100, export_sklearn: bool = False, log: Log = print) -> Path:
    """Run the recipe on ``data_dir/{split}.tsv`` and write labels to ``out_dir``.

    Features go to ``out_dir/features``, centroids to ``out_dir/kmeans.npy`` (and
    ``kmeans.joblib`` with ``export_sklearn``), labels to ``out_dir/{split}.km`` and
    ``out_dir/dict.km.txt``. k-means is learned on ``train_split`` and applied to every split
    (fairseq #5453: a separate valid k-means makes valid losses meaningless).

    Returns:
        ``out_dir``, ready as ``task.label_dir``.

    Raises:
        LabelPipelineError: any inconsistency (frame counts vs manifest, mixed dimensions, empty
            shards, unloadable checkpoint), naming the file.
    """
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    feat_dir = out_dir / "features"
    splits = list(dict.fromkeys([train_split, *splits]))
    extractor = build_extractor(spec)
    log(f"[1/3] {spec.kind} features at {extractor.frame_rate:g} Hz → {feat_dir}")
    for split in splits:
        for rank in range(nshard):
            dump_features(data_dir / f"{split}.tsv", extractor, feat_dir, nshard, rank,
                          progress=ProgressPrinter(f"{split} shard {rank}/{nshard}", log))

    log(f"[2/3] k-means: {num_clusters} clusters on {train_split}, seed {seed}")
    started = time.perf_counter()
    points = sample_frames(open_feature_shards(feat_dir, train_split, nshard), max_points, seed)
    result = learn_kmeans(points, num_clusters, seed=seed, num_iterations=num_iterations)
    del points
    save_centroids(result.centroids, out_dir / "kmeans.npy")
    if export_sklearn:
        export_sklearn_model(result.centroids, out_dir / "kmeans.joblib")
    log(f"  {result.num_points} frames, inertia {result.inertia:.6g}, {time.perf_counter() - started:.1f} s")

    log(f"[3/3] labels → {out_dir}")
    nearest = NearestCentroid(result.centroids)
    for split in splits:
        tsv = data_dir / f"{split}.tsv"
        for rank in range(nshard):
            shard = open_feature_shard(feat_dir, split, rank, nshard)
            check_lengths_match_manifest(shard.lengths, shard.len_path, tsv, extractor.frame_rate, nshard, rank)
            write_shard_labels(shard, nearest, label_shard_path(out_dir, split, rank, nshard))
        merged = merge_label_shards(out_dir, split, nshard)
        check_lengths_match_manifest(km_line_lengths(merged, num_clusters), merged, tsv, extractor.frame_rate)
        log(f"  {merged}: checked against {tsv}")
    write_km_dictionary(out_dir, num_clusters)
    log(f"done: task.data={data_dir} task.label_dir={out_dir} task.labels=[km] "
        f"model.label_rate={extractor.frame_rate:g}")
    return out_dir
