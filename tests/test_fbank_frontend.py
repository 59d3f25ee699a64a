"""The fbank front-end: Kaldi's numbers, the project's frame arithmetic, padding invariance, and
pre-training and fine-tuning through fairseq's trainer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchaudio
from omegaconf import OmegaConf

from k2ssl_fairseq import presets
from k2ssl_fairseq.bench.common import hydra_train
from k2ssl_fairseq.checkpoints import CheckpointMismatchError
from k2ssl_fairseq.conversion.icefall import export_icefall_checkpoint
from k2ssl_fairseq.data.frames import conv_frames
from k2ssl_fairseq.models.fbank_frontend import FbankFrontEnd, frame_layout, log_mel
from k2ssl_fairseq.models.masked_prediction import align_to_labels
from k2ssl_fairseq.models.zipformer_ssl import ZipformerSslConfig, ZipformerSslModel
from k2ssl_fairseq.tasks.k2ssl_pretraining import model_conv_layers

LENGTHS = (400, 401, 559, 560, 719, 720, 12345, 16000 * 2 + 77)


def tiny_fbank_model(frame_rate: int, seed: int = 0) -> ZipformerSslModel:
    section = presets.model_section("pretrain", "zipformer_tiny")
    cfg = OmegaConf.merge(OmegaConf.structured(ZipformerSslConfig), section,
                          {"label_rate": 50, "sample_rate": 16000, "frontend": "fbank", "fbank_frame_rate": frame_rate})
    torch.manual_seed(seed)
    return ZipformerSslModel(cfg, [24]).eval()


def test_log_mel_equals_torchaudio_kaldi_fbank():
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(3, 16000 + 333, generator=generator) * torch.tensor([[0.01], [0.3], [1.0]])
    ours = log_mel(batch)
    for row in range(3):
        reference = torchaudio.compliance.kaldi.fbank(batch[row:row + 1], num_mel_bins=80, dither=0.0,
                                                      sample_frequency=16000)
        assert ours[row].shape == reference.shape
        assert (ours[row] - reference).abs().max() <= 1e-4


@pytest.mark.parametrize("frame_rate", [50, 25])
def test_frame_counts_follow_the_frame_layout(frame_rate: int):
    frontend = FbankFrontEnd(16, frame_rate, channels=4).eval()
    for length in LENGTHS:
        with torch.no_grad():
            frames = frontend(torch.randn(1, length)).shape[1]
        assert frames == conv_frames(length, frame_layout(frame_rate, 16)), length
        if frame_rate == 50:  # the same frames as HuBERT's waveform CNN, so the same labels line up
            assert frames == conv_frames(length)


@pytest.mark.parametrize("frame_rate", [50, 25])
def test_padded_batch_gives_each_utterance_its_own_output(frame_rate: int):
    model = tiny_fbank_model(frame_rate)
    lengths = [16000 * 2 + 77, 12345, 4001]
    source = torch.zeros(len(lengths), max(lengths))
    padding = torch.ones_like(source, dtype=torch.bool)
    rows = [torch.randn(n, generator=torch.Generator().manual_seed(n)) for n in lengths]
    for row, (audio, n) in enumerate(zip(rows, lengths)):
        source[row, :n], padding[row, :n] = audio, False
    with torch.no_grad():
        batched = model(source, padding_mask=padding, mask=False, features_only=True)
        for row, (audio, n) in enumerate(zip(rows, lengths)):
            alone = model(audio[None], mask=False, features_only=True)["x"][0]
            valid = int((~batched["padding_mask"][row]).sum())
            assert valid == alone.shape[0] == conv_frames(n, model.conv_layers)
            assert torch.allclose(batched["x"][row, :valid], alone, atol=1e-4)


def test_25_hz_frames_take_every_other_50_hz_label_and_the_task_masks_them():
    model = tiny_fbank_model(25)
    assert model.frames_per_label == 2.0
    assert model_conv_layers(model) == frame_layout(25, model.cfg.encoder_dim[0])
    labels = torch.arange(40)[None]
    features, _, (aligned,) = align_to_labels(torch.zeros(1, 20, 4), None, [labels], model.frames_per_label)
    assert features.shape[1] == 20 and aligned[0].tolist() == list(range(0, 40, 2))


def test_icefall_export_refuses_an_fbank_model(tmp_path: Path):
    model = tiny_fbank_model(50)
    checkpoint = {"cfg": {"model": {"_name": "zipformer_ssl", **OmegaConf.to_container(model.cfg, resolve=True)}},
                  "model": model.state_dict()}
    with pytest.raises(CheckpointMismatchError, match="frontend='fbank'.*only the waveform CNN"):
        export_icefall_checkpoint(checkpoint, source="fbank.pt")


def _records(log: str, tag: str) -> list:
    return [json.loads(line.split(" - ", 1)[1]) for line in log.splitlines() if f"[{tag}]" in line]


@pytest.mark.e2e
@pytest.mark.parametrize("frame_rate", [50, 25])
def test_fbank_pretraining_and_finetuning_through_fairseq(tiny_corpus: Path, tmp_path: Path, frame_rate: int):
    data = [f"task.data={tiny_corpus}", f"task.label_dir={tiny_corpus}"]
    pretrain = hydra_train([*data, "optimization.max_update=3", f"++model.fbank_frame_rate={frame_rate}"],
                           tmp_path / "pretrain", config_dir=presets.config_dir("pretrain"),
                           config_name="zipformer_fbank_tiny")
    log = pretrain.stdout + pretrain.stderr
    assert "FbankFrontEnd" in log
    assert [r["num_updates"] for r in _records(log, "train_inner")] == ["1", "2", "3"]
    checkpoint = tmp_path / "pretrain" / "ckpt" / "checkpoint_last.pt"
    finetune = hydra_train([*data, f"model.pretrained_path={checkpoint}", "optimization.max_update=2"],
                           tmp_path / "finetune", config_dir=presets.config_dir("finetune"),
                           config_name="zipformer_fbank_tiny")
    log = finetune.stdout + finetune.stderr
    assert "FbankFrontEnd" in log and len(_records(log, "train_inner")) == 2
    assert _records(log, "valid") and "valid_wer" in _records(log, "valid")[-1]
