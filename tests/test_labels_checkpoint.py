"""Iteration-2 labels from a checkpoint layer: a tiny stock HuBERT built in-process and saved as fairseq does."""
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq import tasks
from fairseq.models.hubert.hubert import HubertConfig
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
from omegaconf import OmegaConf

from k2ssl_fairseq.checkpoints import CheckpointMismatchError, CheckpointReadError
from k2ssl_fairseq.data.audio import read_audio
from k2ssl_fairseq.data.frames import conv_frames
from k2ssl_fairseq.data.manifest import read_manifest
from k2ssl_fairseq.data.synthetic import make_tiny_corpus
from k2ssl_fairseq.labels import CheckpointLayerExtractor, FeatureSpec, make_labels

EMBED_DIM = 32


def quiet(_message: str) -> None:
    """Log sink for make_labels in tests."""


def save_tiny_hubert(corpus: Path, path: Path, model_name: str = "hubert") -> Path:
    """Build a 2-layer stock HuBERT for ``corpus``'s ``dict.km.txt`` and save a fairseq checkpoint dict."""
    task_cfg = HubertPretrainingConfig(_name="hubert_pretraining", data=str(corpus), label_dir=str(corpus),
                                       labels=["km"], label_rate=50.0)
    model_cfg = HubertConfig(_name="hubert", label_rate=50.0, encoder_layers=2, encoder_embed_dim=EMBED_DIM,
                             encoder_ffn_embed_dim=64, encoder_attention_heads=2, final_dim=16, conv_pos=16,
                             conv_pos_groups=4, conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2")
    cfg = {name: OmegaConf.to_container(OmegaConf.structured(c), resolve=True, enum_to_str=True)
           for name, c in (("task", task_cfg), ("model", model_cfg))}
    torch.manual_seed(0)
    model = tasks.setup_task(OmegaConf.create(cfg).task).build_model(OmegaConf.create(cfg).model)
    cfg["model"]["_name"] = model_name
    torch.save({"cfg": cfg, "model": model.state_dict(), "extra_state": {},
                "optimizer_history": [{"criterion_name": "hubert", "optimizer_name": "adam",
                                       "lr_scheduler_state": {}, "num_updates": 0}]}, path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_tiny_corpus(tmp_path_factory.mktemp("corpus"), splits={"train": 5, "valid": 2},
                            min_seconds=0.8, max_seconds=2.0)


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory) -> Path:
    return save_tiny_hubert(corpus, tmp_path_factory.mktemp("ckpt") / "tiny_hubert.pt")


def test_chunked_extraction_keeps_cnn_frame_count_and_matches_with_full_context(corpus, checkpoint):
    manifest = read_manifest(corpus / "train.tsv")
    waveform = read_audio(manifest.audio_path(0))
    whole = CheckpointLayerExtractor(checkpoint, layer=1)(waveform)
    chunked_with_context = CheckpointLayerExtractor(checkpoint, layer=1, chunk_samples=3200,
                                                    context_samples=len(waveform))(waveform)
    chunked_alone = CheckpointLayerExtractor(checkpoint, layer=1, chunk_samples=3200, context_samples=0)(waveform)
    assert whole.shape == (conv_frames(len(waveform)), EMBED_DIM) == (1 + (len(waveform) - 400) // 320, EMBED_DIM)
    np.testing.assert_allclose(chunked_with_context, whole, rtol=1e-5, atol=1e-5)
    assert chunked_alone.shape == whole.shape
    assert not np.allclose(chunked_alone, whole, atol=1e-3)  # windows without context do see less audio


def test_iteration_two_labels_from_a_checkpoint_layer_are_read_by_stock_hubert_task(corpus, checkpoint, tmp_path):
    spec = FeatureSpec("checkpoint", 50.0, checkpoint=checkpoint, layer=2)
    out = make_labels(corpus, tmp_path / "labels", spec, num_clusters=6, nshard=2, log=quiet)
    features = np.load(out / "features" / "train_0_2.npy")
    assert features.shape[1] == EMBED_DIM
    task = tasks.setup_task(OmegaConf.structured(HubertPretrainingConfig(
        _name="hubert_pretraining", data=str(corpus), label_dir=str(out), labels=["km"], label_rate=50.0)))
    task.load_dataset("valid")
    manifest = read_manifest(corpus / "valid.tsv")
    for index in range(len(manifest)):
        labels = task.dataset("valid")[index]["label_list"][0]
        assert len(labels) == conv_frames(int(manifest.num_samples[index]))
        assert int(labels.min()) >= 4 and int(labels.max()) < 4 + 6


def test_checkpoints_the_plugin_cannot_load_are_reported(corpus, checkpoint, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointReadError, match=r"garbage\.pt: not a readable torch checkpoint"):
        CheckpointLayerExtractor(garbage, layer=1)
    unknown = save_tiny_hubert(corpus, tmp_path / "unknown.pt", model_name="no_such_model")
    with pytest.raises(CheckpointMismatchError, match=r"unknown\.pt: model type 'no_such_model' is registered neither"):
        CheckpointLayerExtractor(unknown, layer=1)
    with pytest.raises(CheckpointReadError, match=r"missing\.pt: file not found"):
        CheckpointLayerExtractor(tmp_path / "missing.pt", layer=1)


def test_checkpoint_with_stale_task_paths_loads_with_overrides(corpus, tmp_path):
    moved = tmp_path / "moved_corpus"
    (moved).mkdir()
    (moved / "dict.km.txt").write_text((corpus / "dict.km.txt").read_text())
    stale = save_tiny_hubert(moved, tmp_path / "stale.pt")
    (moved / "dict.km.txt").unlink()
    with pytest.raises(CheckpointMismatchError, match=r"stale\.pt: .*dict\.km\.txt.*overrides"):
        CheckpointLayerExtractor(stale, layer=1)
    extractor = CheckpointLayerExtractor(stale, layer=1, arg_overrides={"data": str(corpus), "label_dir": str(corpus)})
    assert extractor(np.zeros(16000, dtype=np.float32)).shape == (49, EMBED_DIM)
