"""Label pipeline (MFCC/fbank → faiss k-means → .km): fairseq formats, frame counts, seeds, shards, errors."""
import importlib
import shutil
import sys
import types
from pathlib import Path

import fairseq
import joblib
import numpy as np
import pytest
from fairseq import tasks
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
from omegaconf import OmegaConf

from k2ssl_fairseq.data.audio import read_audio
from k2ssl_fairseq.data.frames import conv_frames, label_frames
from k2ssl_fairseq.data.manifest import read_manifest
from k2ssl_fairseq.data.synthetic import make_tiny_corpus
from k2ssl_fairseq.labels import (
    FeatureSpec,
    KaldiFeatureExtractor,
    LabelPipelineError,
    NearestCentroid,
    check_lengths_match_manifest,
    dump_features,
    km_line_lengths,
    learn_kmeans,
    load_centroids,
    make_labels,
    open_feature_shard,
    open_feature_shards,
    sample_frames,
    write_shard_labels,
)

NUM_CLUSTERS = 8


def quiet(_message: str) -> None:
    """Log sink for make_labels in tests."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_tiny_corpus(tmp_path_factory.mktemp("corpus"), splits={"train": 9, "valid": 3},
                            min_seconds=0.8, max_seconds=2.5)


@pytest.fixture(scope="module")
def labels_50hz(corpus, tmp_path_factory) -> Path:
    return make_labels(corpus, tmp_path_factory.mktemp("labels50"), FeatureSpec("mfcc", 50.0), NUM_CLUSTERS,
                       nshard=2, seed=3, export_sklearn=True, log=quiet)


def _concatenated(feat_dir: Path, split: str, nshard: int):
    shards = open_feature_shards(feat_dir, split, nshard)
    return (np.concatenate([np.asarray(s.features) for s in shards]),
            np.concatenate([s.lengths for s in shards]))


def _hubert_dataset(corpus: Path, label_dir: Path, label_rate: float, split: str = "train"):
    cfg = OmegaConf.structured(HubertPretrainingConfig(
        _name="hubert_pretraining", data=str(corpus), label_dir=str(label_dir), labels=["km"],
        label_rate=label_rate))
    task = tasks.setup_task(cfg)
    task.load_dataset(split)
    return task, task.dataset(split)


@pytest.mark.parametrize("label_rate", [100.0, 50.0])
def test_stock_hubert_task_reads_labels_with_manifest_frame_counts(corpus, tmp_path, label_rate):
    out = make_labels(corpus, tmp_path / "labels", FeatureSpec("mfcc", label_rate), NUM_CLUSTERS, log=quiet)
    task, dataset = _hubert_dataset(corpus, out, label_rate)
    manifest = read_manifest(corpus / "train.tsv")
    km_lines = (out / "train.km").read_text().splitlines()
    assert len(task.dictionaries[0]) == NUM_CLUSTERS + 4
    assert len(dataset) == len(manifest) == len(km_lines)
    for index in (0, len(manifest) - 1):
        item = dataset[index]
        labels = item["label_list"][0].numpy()
        n = int(manifest.num_samples[index])
        expected = conv_frames(n) if label_rate == 50.0 else 1 + (n - 400) // 160
        assert len(item["source"]) == n
        assert len(labels) == expected == label_frames(n, label_rate)
        np.testing.assert_array_equal(labels, np.array(km_lines[index].split(), dtype=np.int64) + 4)
    assert (out / "valid.km").read_text().count("\n") == 3


def test_mfcc_matches_fairseq_reader_and_50hz_keeps_even_frames(corpus, monkeypatch):
    # fairseq's reader module imports its dump helpers, which need npy_append_array (not installed),
    # and reads audio through sox_effects, which torchaudio 2.11 dropped: only its MFCC computation
    # (MfccFeatureReader.get_feats on our decoded samples) is compared.
    monkeypatch.setitem(sys.modules, "feature_utils",
                        types.SimpleNamespace(get_path_iterator=None, dump_feature=None))
    reader_path = Path(fairseq.__file__).parent / "examples/hubert/simple_kmeans/dump_mfcc_feature.py"
    spec = importlib.util.spec_from_file_location("fairseq_dump_mfcc_feature", reader_path)
    fairseq_mfcc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fairseq_mfcc)
    manifest = read_manifest(corpus / "train.tsv")
    path = manifest.audio_path(0)
    at_100 = KaldiFeatureExtractor("mfcc")(read_audio(path))
    at_50 = KaldiFeatureExtractor("mfcc", downsample_to_cnn_rate=True)(read_audio(path))
    fairseq_reader = fairseq_mfcc.MfccFeatureReader(16000)
    fairseq_reader.read_audio = lambda audio_path, ref_len=None: read_audio(audio_path)
    reference = fairseq_reader.get_feats(str(path)).numpy()
    np.testing.assert_allclose(at_100, reference, rtol=1e-5, atol=1e-4)
    assert at_100.shape == (label_frames(int(manifest.num_samples[0]), 100.0), 39)
    np.testing.assert_array_equal(at_50, at_100[::2])
    assert at_50.shape[0] == conv_frames(int(manifest.num_samples[0]))


def test_fbank_and_short_utterance_frame_counts():
    fbank = KaldiFeatureExtractor("fbank", num_mel_bins=40)
    assert fbank(np.zeros(16000, dtype=np.float32)).shape == (98, 40)
    for extractor in (fbank, KaldiFeatureExtractor("mfcc", downsample_to_cnn_rate=True)):
        assert extractor(np.zeros(399, dtype=np.float32)).shape == (0, extractor.dim)
    assert KaldiFeatureExtractor("mfcc", downsample_to_cnn_rate=True)(np.zeros(16000, np.float32)).shape == (49, 39)


def test_sharded_run_concatenates_to_unsharded_run(corpus, labels_50hz, tmp_path):
    single = make_labels(corpus, tmp_path / "single", FeatureSpec("mfcc", 50.0), NUM_CLUSTERS, nshard=1, seed=3,
                         log=quiet)
    sharded_features, sharded_lengths = _concatenated(labels_50hz / "features", "train", 2)
    single_features, single_lengths = _concatenated(single / "features", "train", 1)
    np.testing.assert_array_equal(sharded_features, single_features)
    np.testing.assert_array_equal(sharded_lengths, single_lengths)
    np.testing.assert_array_equal(load_centroids(labels_50hz / "kmeans.npy"), load_centroids(single / "kmeans.npy"))
    for split in ("train", "valid"):
        parts = "".join((labels_50hz / f"{split}_{rank}_2.km").read_text() for rank in range(2))
        assert parts == (labels_50hz / f"{split}.km").read_text() == (single / f"{split}.km").read_text()


def test_kmeans_is_deterministic_with_a_seed(labels_50hz):
    shards = open_feature_shards(labels_50hz / "features", "train", 2)
    sample = sample_frames(shards, max_points=300, seed=5)
    assert sample.shape == (300, 39)
    np.testing.assert_array_equal(sample, sample_frames(shards, max_points=300, seed=5))
    assert not np.array_equal(sample, sample_frames(shards, max_points=300, seed=6))
    first = learn_kmeans(sample, NUM_CLUSTERS, seed=1, num_iterations=10)
    again = learn_kmeans(sample, NUM_CLUSTERS, seed=1, num_iterations=10)
    other = learn_kmeans(sample, NUM_CLUSTERS, seed=2, num_iterations=10)
    np.testing.assert_array_equal(first.centroids, again.centroids)
    assert first.inertia == again.inertia
    assert not np.array_equal(first.centroids, other.centroids)
    labels = NearestCentroid(first.centroids)(sample)
    exact = ((sample[:, None, :] - first.centroids[None]) ** 2).sum(-1).argmin(1)
    assert np.mean(labels == exact) > 0.99  # faiss's BLAS distances may flip exact ties only


def test_sklearn_export_predicts_the_same_labels(labels_50hz):
    centroids = load_centroids(labels_50hz / "kmeans.npy")
    model = joblib.load(labels_50hz / "kmeans.joblib")
    np.testing.assert_array_equal(model.cluster_centers_, centroids)
    shard = open_feature_shard(labels_50hz / "features", "valid", 0, 2)
    features = np.asarray(shard.features)
    assert np.mean(model.predict(features) == NearestCentroid(centroids)(features)) > 0.99


def test_frame_counts_that_disagree_with_the_manifest_are_reported(corpus, labels_50hz, tmp_path):
    shard = open_feature_shard(labels_50hz / "features", "train", 0, 2)
    with pytest.raises(LabelPipelineError, match=r"train_0_2\.len:1: \d+ frames, but .*train\.tsv:2 has \d+ "
                                                 r"samples, i\.e\. \d+ frames at 100 Hz"):
        check_lengths_match_manifest(shard.lengths, shard.len_path, corpus / "train.tsv", 100.0, 2, 0)
    km_file = tmp_path / "train.km"
    km_file.write_text("1 2 3\n" * 8)
    with pytest.raises(LabelPipelineError, match=r"train\.km: 8 utterances, but shard 0 of 1 of .*train\.tsv has 9"):
        check_lengths_match_manifest(km_line_lengths(km_file, NUM_CLUSTERS), km_file, corpus / "train.tsv", 50.0)
    km_file.write_text("1 2 3\n" * 9)
    with pytest.raises(LabelPipelineError, match=r"train\.km:1: 3 frames, but .*train\.tsv:2 has \d+ samples"):
        check_lengths_match_manifest(km_line_lengths(km_file, NUM_CLUSTERS), km_file, corpus / "train.tsv", 50.0)
    km_file.write_text("1 2 8\n" * 9)
    with pytest.raises(LabelPipelineError, match=r"train\.km:1: label '8' is not an id in \[0, 8\)"):
        km_line_lengths(km_file, NUM_CLUSTERS)
    feat_dir = tmp_path / "features"
    shutil.copytree(labels_50hz / "features", feat_dir)
    lengths = (feat_dir / "train_1_2.len").read_text().split()
    lengths[0] = str(int(lengths[0]) + 1)
    (feat_dir / "train_1_2.len").write_text("\n".join(lengths) + "\n")
    with pytest.raises(LabelPipelineError, match=r"train_1_2\.npy: has \d+ frames but .*train_1_2\.len sums to"):
        open_feature_shard(feat_dir, "train", 1, 2)
    argv = ["--feat-dir", str(feat_dir), "--split", "train", "--nshard", "2", "--km-path",
            str(labels_50hz / "kmeans.npy"), "--lab-dir", str(tmp_path / "labels")]
    assert importlib.import_module("k2ssl_fairseq.tools.dump_labels").main(argv) == 1


def test_manifest_that_lies_about_audio_length_is_reported(corpus, tmp_path):
    lines = (corpus / "valid.tsv").read_text().splitlines()
    name, count = lines[2].split("\t")
    lines[2] = f"{name}\t{int(count) - 1}"
    (tmp_path / "valid.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(LabelPipelineError,
                       match=rf"valid\.tsv:3 .*{name}.*: file has {count} samples, the manifest says"):
        dump_features(tmp_path / "valid.tsv", KaldiFeatureExtractor(), tmp_path / "features")


def test_mixed_dimensions_and_empty_shards_are_reported(corpus, tmp_path):
    feat_dir = tmp_path / "features"
    dump_features(corpus / "valid.tsv", KaldiFeatureExtractor("mfcc"), feat_dir, nshard=2, rank=0)
    dump_features(corpus / "valid.tsv", KaldiFeatureExtractor("fbank"), feat_dir, nshard=2, rank=1)
    with pytest.raises(LabelPipelineError,
                       match=r"valid_1_2\.npy: 80-dimensional features, but .*valid_0_2\.npy has 39 "
                             r"\(mixed dimensions\)"):
        open_feature_shards(feat_dir, "valid", 2)
    centroids = np.zeros((4, 39), dtype=np.float32)
    with pytest.raises(LabelPipelineError, match=r"valid_1_2\.npy: 80-dimensional features, but the centroids"):
        write_shard_labels(open_feature_shard(feat_dir, "valid", 1, 2), NearestCentroid(centroids), tmp_path / "x.km")
    with pytest.raises(LabelPipelineError, match=r"valid\.tsv: shard 1 of 5 is empty \(3 utterances for 5 shards\)"):
        dump_features(corpus / "valid.tsv", KaldiFeatureExtractor(), feat_dir, nshard=5, rank=1)
    np.save(feat_dir / "valid_0_1.npy", np.zeros((0, 39), dtype=np.float32))
    (feat_dir / "valid_0_1.len").write_text("")
    with pytest.raises(LabelPipelineError, match=r"valid_0_1\.npy: empty shard"):
        open_feature_shard(feat_dir, "valid", 0, 1)


def test_cli_scripts_run_the_recipe_step_by_step(corpus, tmp_path, capsys):
    feat_dir, lab_dir, km_path = tmp_path / "features", tmp_path / "labels", tmp_path / "km.npy"
    dump, learn, label = (importlib.import_module(f"k2ssl_fairseq.tools.{name}")
                          for name in ("dump_features", "learn_kmeans", "dump_labels"))
    for rank in range(2):
        assert dump.main(["--tsv-dir", str(corpus), "--split", "valid", "--feat-dir",
                                                str(feat_dir), "--nshard", "2", "--rank", str(rank)]) == 0
    assert learn.main(["--feat-dir", str(feat_dir), "--split", "valid", "--nshard", "2",
                                             "--n-clusters", "4", "--km-path", str(km_path)]) == 0
    assert label.main(["--feat-dir", str(feat_dir), "--split", "valid", "--nshard", "2",
                                             "--km-path", str(km_path), "--lab-dir", str(lab_dir), "--tsv-dir",
                                             str(corpus), "--label-rate", "100", "--merge"]) == 0
    assert (lab_dir / "dict.km.txt").read_text() == "0 1\n1 1\n2 1\n3 1\n"
    assert len((lab_dir / "valid.km").read_text().splitlines()) == 3
    assert dump.main(["--tsv-dir", str(corpus), "--split", "missing", "--feat-dir",
                                            str(feat_dir)]) == 1
    assert "missing.tsv does not exist" in capsys.readouterr().err
