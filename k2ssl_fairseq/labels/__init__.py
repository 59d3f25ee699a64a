"""k-means label preparation: features → faiss k-means → ``.km`` labels, in fairseq's file formats.

Modules: ``shards`` (``{split}_{rank}_{nshard}.npy``/``.len`` streamed writing and validated
reading), ``kaldi_features`` (MFCC/fbank, 100 or 50 Hz), ``checkpoint_features`` (layer L of a
checkpoint, 50 Hz, chunked), ``dump`` (a manifest shard → features), ``kmeans`` (seeded faiss
k-means on a memory-mapped sample), ``assign`` (nearest-centroid labels, ``.km``, ``dict.km.txt``,
checks against the manifest), ``pipeline`` (the recipe for a corpus). The ``scripts/`` CLIs are thin
wrappers around these.
"""
from .assign import (
    NearestCentroid,
    check_lengths_match_manifest,
    km_line_lengths,
    label_shard_path,
    merge_label_shards,
    write_km_dictionary,
    write_shard_labels,
)
from .checkpoint_features import CheckpointLayerExtractor, load_feature_model
from .dump import dump_features
from .kaldi_features import KaldiFeatureExtractor
from .kmeans import KmeansResult, export_sklearn_model, learn_kmeans, load_centroids, sample_frames, save_centroids
from .pipeline import FeatureSpec, build_extractor, make_labels
from .shards import (
    FeatureShard,
    FeatureShardWriter,
    LabelPipelineError,
    open_feature_shard,
    open_feature_shards,
    shard_range,
)

__all__ = [
    "CheckpointLayerExtractor", "FeatureShard", "FeatureShardWriter", "FeatureSpec",
    "KaldiFeatureExtractor", "KmeansResult", "LabelPipelineError", "NearestCentroid", "build_extractor",
    "check_lengths_match_manifest", "dump_features", "export_sklearn_model", "km_line_lengths",
    "label_shard_path", "learn_kmeans", "load_centroids", "load_feature_model", "make_labels",
    "merge_label_shards", "open_feature_shard", "open_feature_shards", "sample_frames", "save_centroids",
    "shard_range", "write_km_dictionary", "write_shard_labels",
]
