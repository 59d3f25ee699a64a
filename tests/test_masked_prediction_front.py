"""The masked-prediction front half both SSL models share: one definition of each step, the same
behaviour from both models (``models/masked_prediction.py``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fairseq.data.dictionary import Dictionary
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
from omegaconf import OmegaConf

from k2ssl_fairseq.data.frames import conv_frames
from k2ssl_fairseq.models.k2ssl_hubert import K2sslHubertConfig, K2sslHubertModel
from k2ssl_fairseq.models.masked_prediction import MaskedPredictionModel, feature_penalty
from k2ssl_fairseq.models.zipformer_ssl import ZipformerSslConfig, ZipformerSslModel

TINY_CONV = ((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2
SAMPLES = (16000, 11000)


def km_dictionary(size: int = 12) -> Dictionary:
    dictionary = Dictionary()
    for k in range(size):
        dictionary.add_symbol(str(k))
    return dictionary


def zipformer(**overrides) -> ZipformerSslModel:
    torch.manual_seed(0)
    cfg = ZipformerSslConfig(label_rate=50.0, sample_rate=16000, conv_feature_layers=str(list(TINY_CONV)),
                             num_encoder_layers=[1, 1], downsampling_factor=[1, 2], encoder_dim=[32, 48],
                             feedforward_dim=[64, 96], num_heads=[2, 2], encoder_unmasked_dim=[16, 16],
                             cnn_module_kernel=[15, 15], query_head_dim=8, value_head_dim=4, pos_head_dim=2,
                             pos_dim=16, **overrides)
    return ZipformerSslModel(OmegaConf.structured(cfg), [len(km_dictionary())]).eval()


def hubert(**overrides) -> K2sslHubertModel:
    torch.manual_seed(0)
    layout = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"
    cfg = K2sslHubertConfig(label_rate=50, encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                            encoder_attention_heads=2, final_dim=16, conv_feature_layers=layout, conv_pos=16,
                            conv_pos_groups=4, logit_mode="linear", **overrides)
    return K2sslHubertModel(cfg, HubertPretrainingConfig(label_rate=50), [km_dictionary()]).eval()


BUILDERS = {"zipformer_ssl": zipformer, "k2ssl_hubert": hubert}


@pytest.fixture(params=list(BUILDERS))
def build(request):
    return BUILDERS[request.param]


def padded_batch(seed: int = 0):
    """Two utterances of different length, zero padded, with 50 Hz dictionary-index targets."""
    rng = np.random.default_rng(seed)
    audio = torch.zeros(2, max(SAMPLES))
    padding = torch.ones(2, max(SAMPLES), dtype=torch.bool)
    for row, length in enumerate(SAMPLES):
        audio[row, :length] = torch.from_numpy(rng.standard_normal(length).astype(np.float32))
        padding[row, :length] = False
    frames = conv_frames(max(SAMPLES), TINY_CONV)
    targets = [torch.from_numpy(rng.integers(4, 16, (2, frames)))]
    return audio, padding, targets


def test_both_models_are_the_shared_front_half():
    for builder in BUILDERS.values():
        model = builder()
        assert isinstance(model, MaskedPredictionModel)
        assert type(model).forward is MaskedPredictionModel.forward


def test_the_same_seed_draws_the_same_masks_in_both_models():
    audio, padding, targets = padded_batch()
    masks = []
    for builder in BUILDERS.values():
        model = builder(mask_prob=0.5, mask_length=3, mask_min_masks=2)
        torch.manual_seed(123)
        masks.append(model(audio, targets, padding)["mask_indices"])
    assert masks[0] is not None and torch.equal(masks[0], masks[1])
    frames = conv_frames(torch.tensor(SAMPLES), TINY_CONV)
    assert not masks[0][1, int(frames[1]):].any()  # nothing drawn on padding


def test_min_masks_is_honoured_by_both_models(build):
    audio, padding, targets = padded_batch()
    model = build(mask_prob=0.01, mask_length=2, mask_min_masks=3)
    torch.manual_seed(0)
    mask = model(audio, targets, padding)["mask_indices"]
    assert (mask.sum(1) >= 3).all()


def test_feature_penalty_is_the_mean_square_over_valid_frames(build):
    audio, padding, targets = padded_batch()
    model = build(mask_prob=0.0)
    out = model(audio, targets, padding)
    features, frame_padding = model.cnn_features(audio, padding)
    valid = features[~frame_padding]
    assert torch.allclose(out["features_pen"], valid.float().pow(2).mean(), rtol=1e-5)
    assert torch.allclose(feature_penalty(features[:1, :10], None), features[:1, :10].pow(2).mean())


def test_without_a_time_mask_every_valid_frame_is_unmasked(build):
    audio, padding, targets = padded_batch()
    model = build(mask_prob=0.65)
    for kwargs in ({"mask": False}, {"mask_indices": None, "mask": True}):
        if kwargs["mask"]:
            model.mask_prob = 0.0
        out = model(audio, targets, padding, mask=kwargs["mask"])
        assert out["mask_indices"] is None
        assert sum(t.numel() for t in model.get_targets(out, True)) == 0
        valid_frames = int((~out["padding_mask"]).sum())
        assert sum(t.numel() for t in model.get_targets(out, False)) == valid_frames


def test_precomputed_masks_are_used_and_checked_the_same_way(build):
    audio, padding, targets = padded_batch()
    model = build()
    frames = conv_frames(max(SAMPLES), TINY_CONV)
    given = torch.zeros(2, frames + 3, dtype=torch.bool)
    given[:, 2:6] = True
    out = model(audio, targets, padding, mask_indices=given)
    assert torch.equal(out["mask_indices"], given[:, :frames])
    for bad in (torch.zeros(2, frames - 1, dtype=torch.bool), torch.zeros(3, frames, dtype=torch.bool),
                torch.zeros(frames, dtype=torch.bool)):
        with pytest.raises(ValueError, match=rf"{model.model_name}: mask_indices has shape .*expected "
                                             rf"\(batch, >= frames\) = \(2, >= {frames}\)"):
            model(audio, targets, padding, mask_indices=bad)


def test_input_errors_are_the_same_in_both_models(build):
    audio, padding, targets = padded_batch()
    model = build()
    with pytest.raises(ValueError, match=rf"{model.model_name}: target_list is required"):
        model(audio)
    with pytest.raises(ValueError, match=rf"{model.model_name}: source must be \(batch, samples\)"):
        model(audio[0], targets)
    with pytest.raises(ValueError, match=rf"{model.model_name}: padding_mask shape"):
        model(audio, targets, padding[:, :-1])


def test_skip_flags_give_nones_and_the_criterion_sees_none_of_them(build):
    audio, padding, targets = padded_batch()
    model = build()
    model.skip_nomask = True
    out = model(audio, targets, padding)
    assert out["logit_u_list"] == [None] and out["target_u_list"] == [None]
    assert model.get_logits(out, False) == [] and model.get_targets(out, False) == []
    assert model.get_logits(out, True)[0].shape[0] == model.get_targets(out, True)[0].shape[0] > 0
