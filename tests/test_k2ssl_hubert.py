"""k2ssl_hubert against stock fairseq HuBERT on tiny in-memory models (no checkpoint needed).

Acceptance tests on a checkpoint trained by ``fairseq-hydra-train`` are in test_migrate_checkpoint.py.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.hubert_criterion import HubertCriterion
from fairseq.data.dictionary import Dictionary
from fairseq.models.hubert.hubert import HubertModel
from fairseq.modules.multihead_attention import MultiheadAttention
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

from helpers import assert_gradients_close
from k2ssl_fairseq.conversion.hubert import pinned_stock_masks
from k2ssl_fairseq.criterions.masked_prediction import MaskedPredictionCriterion
from k2ssl_fairseq.data.frames import conv_frames
from k2ssl_fairseq.data.masking import compute_span_mask
from k2ssl_fairseq.models.k2ssl_hubert import K2sslHubertConfig, K2sslHubertModel, SdpaSelfAttention

TINY_CONV = "[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2"
TINY_CONV_LAYERS = ((64, 10, 5),) + ((64, 3, 2),) * 4 + ((64, 2, 2),) * 2
NUM_CLUSTERS = 20
BATCH, SAMPLES = 2, 24000
FRAMES = conv_frames(SAMPLES, TINY_CONV_LAYERS)


def km_dictionary(num_clusters: int = NUM_CLUSTERS) -> Dictionary:
    dictionary = Dictionary()
    for k in range(num_clusters):
        dictionary.add_symbol(str(k))
    return dictionary


def tiny_config(**overrides) -> K2sslHubertConfig:
    fields = dict(label_rate=50, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                  encoder_attention_heads=4, final_dim=32, conv_feature_layers=TINY_CONV, conv_pos=16,
                  conv_pos_groups=4, untie_final_proj=True, mask_prob=0.8)
    fields.update(overrides)
    return K2sslHubertConfig(**fields)


def tiny_pair(**overrides):
    """(stock HubertModel, K2sslHubertModel) with identical weights, in eval mode."""
    cfg, task_cfg = tiny_config(**overrides), HubertPretrainingConfig(label_rate=50)
    torch.manual_seed(0)
    ours = K2sslHubertModel(cfg, task_cfg, [km_dictionary()])
    stock = HubertModel(cfg, task_cfg, [km_dictionary()])
    stock.load_state_dict(ours.state_dict(), strict=True)
    return stock.eval(), ours.eval()


def batch_inputs(seed: int = 0):
    """Audio, dictionary-index targets and a pinned ``(batch, frame)`` mask."""
    rng = np.random.default_rng(seed)
    audio = torch.from_numpy(rng.standard_normal((BATCH, SAMPLES)).astype(np.float32))
    targets = [torch.from_numpy(rng.integers(4, 4 + NUM_CLUSTERS, (BATCH, FRAMES)))]
    mask = compute_span_mask(np.full(BATCH, FRAMES), FRAMES, 0.8, 10, rng)
    return audio, targets, mask


def test_state_dict_names_shapes_and_order_equal_stock():
    stock, ours = tiny_pair()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in stock.state_dict().items()]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in stock.named_parameters()]
    assert all(isinstance(layer.self_attn, SdpaSelfAttention) for layer in ours.encoder.layers)


def test_sdpa_attention_matches_fairseq_with_padding():
    torch.manual_seed(0)
    stock = MultiheadAttention(32, 4, dropout=0.0, self_attention=True).eval()
    ours = SdpaSelfAttention.adopt(MultiheadAttention(32, 4, dropout=0.0, self_attention=True)).eval()
    ours.load_state_dict(stock.state_dict(), strict=True)
    x = torch.randn(9, 3, 32)
    padding = torch.zeros(3, 9, dtype=torch.bool)
    padding[1, 6:] = True
    padding[2, 2:] = True
    expected, _ = stock(x, x, x, key_padding_mask=padding, need_weights=False)
    got, weights = ours(x, x, x, key_padding_mask=padding)
    assert weights is None
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="self-attention only"):
        ours(x, torch.randn_like(x), x)


def test_cosine_logits_loss_and_criterion_equal_stock():
    stock, ours = tiny_pair()
    audio, targets, mask = batch_inputs()
    padding = torch.zeros(audio.shape, dtype=torch.bool)
    sample = {"net_input": {"source": audio, "padding_mask": padding}, "target_list": targets,
              "id": torch.arange(BATCH)}
    criterion = HubertCriterion(None, pred_masked_weight=1.0, pred_nomask_weight=0.5, loss_weights=[10.0])
    with pinned_stock_masks(mask):
        stock_out = stock(audio, target_list=targets, padding_mask=padding)
        stock_loss, stock_size, stock_log = criterion(stock, sample)
    ours_out = ours(audio, target_list=targets, padding_mask=padding, mask_indices=torch.from_numpy(mask))
    ours_loss, ours_size, ours_log = criterion(ours, {**sample, "net_input": {
        **sample["net_input"], "mask_indices": torch.from_numpy(mask)}})
    for key in ("logit_m_list", "logit_u_list"):
        expected, got = stock_out[key][0], ours_out[key][0]
        assert got.shape == expected.shape == (int((mask if key == "logit_m_list" else ~mask).sum()),
                                               1 + NUM_CLUSTERS + 4)
        assert torch.equal(torch.isinf(got), torch.isinf(expected))
        finite = torch.isfinite(expected)
        torch.testing.assert_close(got[finite], expected[finite], rtol=1e-5, atol=1e-5)
    assert ours_size == stock_size
    assert abs(ours_loss.item() - stock_loss.item()) <= 1e-5 * abs(stock_loss.item())
    for key in ("correct_m_0", "count_m_0", "correct_u_0", "count_u_0"):
        assert ours_log[key] == stock_log[key], key


def test_cosine_logits_mark_every_copy_of_the_positive():
    stock, ours = tiny_pair()
    with torch.no_grad():  # labels 5 and 9 (indices) share an embedding: both are "the positive"
        ours.label_embs_concat[9] = ours.label_embs_concat[5]
        stock.label_embs_concat[9] = stock.label_embs_concat[5]
    audio, targets, mask = batch_inputs()
    targets[0][:] = 5
    with pinned_stock_masks(mask):
        expected = stock(audio, target_list=targets, padding_mask=torch.zeros(audio.shape, dtype=torch.bool))
    got = ours(audio, target_list=targets, mask_indices=torch.from_numpy(mask))
    inf = torch.isinf(got["logit_m_list"][0])
    assert inf[:, 1 + 5].all() and inf[:, 1 + 9].all() and inf.sum(1).eq(2).all()
    assert torch.equal(inf, torch.isinf(expected["logit_m_list"][0]))


def test_cosine_gradients_equal_stock():
    stock, ours = tiny_pair(dropout=0.0, attention_dropout=0.0)
    audio, targets, mask = batch_inputs(seed=1)
    with pinned_stock_masks(mask):
        stock_out = stock(audio, target_list=targets, padding_mask=torch.zeros(audio.shape, dtype=torch.bool))
    ours_out = ours(audio, target_list=targets, mask_indices=torch.from_numpy(mask))
    for model, out in ((stock, stock_out), (ours, ours_out)):
        loss = sum(F.cross_entropy(l, t, reduction="sum")
                   for l, t in zip(model.get_logits(out), model.get_targets(out)))
        loss.backward()
    stock_grads = {name: p.grad for name, p in stock.named_parameters()}
    ours_grads = {name: p.grad for name, p in ours.named_parameters()}
    assert [k for k, g in ours_grads.items() if g is None] == [k for k, g in stock_grads.items() if g is None]
    assert_gradients_close(ours_grads, stock_grads)


def test_masks_come_from_the_batch_when_given():
    _, ours = tiny_pair()
    audio, targets, mask = batch_inputs()
    out = ours(audio, target_list=targets, mask_indices=torch.from_numpy(mask))
    assert out["logit_m_list"][0].shape[0] == mask.sum()
    features = ours(audio, mask_indices=torch.from_numpy(mask), features_only=True)["features"]
    assert torch.equal(features[torch.from_numpy(mask)], ours.mask_emb.expand(int(mask.sum()), -1))
    with pytest.raises(ValueError, match=r"mask_indices has shape \(2, 5\)"):
        ours(audio, target_list=targets, mask_indices=torch.zeros(2, 5, dtype=torch.bool))


def test_fallback_masks_follow_the_stock_setting():
    _, ours = tiny_pair()
    audio, targets, _ = batch_inputs()
    torch.manual_seed(3)
    out = ours(audio, target_list=targets)
    masked = out["logit_m_list"][0].shape[0]
    # mask_prob 0.8 with 10-frame spans masks about 1 - exp(-0.8) = 55% before equalising rows.
    assert 0.2 * BATCH * FRAMES < masked < 0.7 * BATCH * FRAMES
    assert masked % BATCH == 0  # require_same_masks: every row has the same count


def test_frame_exact_padding_mask():
    _, ours = tiny_pair()
    lengths = torch.tensor([SAMPLES, 16000 + 250])
    padding = torch.arange(SAMPLES)[None, :] >= lengths[:, None]
    out = ours(torch.randn(BATCH, SAMPLES), padding_mask=padding, mask=False, features_only=True)
    valid = (~out["padding_mask"]).sum(1)
    assert valid.tolist() == [conv_frames(int(n), TINY_CONV_LAYERS) for n in lengths]
    # stock's chunked approximation gives a different count for the padded row
    stock_valid = (~ours.forward_padding_mask(torch.zeros(BATCH, FRAMES, 1), padding)).sum(1)
    assert stock_valid.tolist() != valid.tolist()


def test_padded_utterance_encodes_like_its_unpadded_self_in_the_encoder():
    _, ours = tiny_pair(extractor_mode="layer_norm")  # no batch-wide GroupNorm in the CNN
    short = torch.randn(1, 16000)
    batch = torch.cat([torch.nn.functional.pad(short, (0, SAMPLES - 16000)), torch.randn(1, SAMPLES)])
    padding = torch.arange(SAMPLES)[None, :] >= torch.tensor([16000, SAMPLES])[:, None]
    with torch.no_grad():
        alone, _ = ours.extract_features(short, torch.zeros(1, 16000, dtype=torch.bool))
        padded, frame_padding = ours.extract_features(batch, padding)
    frames = conv_frames(16000, TINY_CONV_LAYERS)
    assert (~frame_padding[0]).sum() == frames
    # padded frames are zeroed before pos_conv and hidden from attention, as the end of `alone` is
    torch.testing.assert_close(padded[0, :frames], alone[0], rtol=1e-4, atol=1e-4)


def test_linear_mode_head_targets_and_loss():
    cfg, task_cfg = tiny_config(logit_mode="linear"), HubertPretrainingConfig(label_rate=50)
    model = K2sslHubertModel(cfg, task_cfg, [km_dictionary()]).eval()
    assert tuple(model.final_proj.weight.shape) == (NUM_CLUSTERS + 4, 64)
    assert not hasattr(model, "label_embs_concat")
    audio, targets, mask = batch_inputs()
    out = model(audio, target_list=targets, mask_indices=torch.from_numpy(mask))
    logits, = model.get_logits(out)
    wanted, = model.get_targets(out)
    selected = torch.from_numpy(mask)
    assert torch.equal(wanted, targets[0][selected])
    encoded = model(audio, mask_indices=selected, features_only=True)["x"]
    torch.testing.assert_close(logits, model.final_proj(encoded[selected]) / model.logit_temp)
    criterion = MaskedPredictionCriterion(None, pred_masked_weight=1.0, pred_nomask_weight=0.0, loss_weights=[10.0])
    sample = {"net_input": {"source": audio, "padding_mask": None, "mask_indices": selected},
              "target_list": targets, "id": torch.arange(BATCH)}
    loss, size, log = criterion(model, sample)
    expected = F.cross_entropy(logits, wanted, reduction="sum") + 10.0 * out["features_pen"] * size
    assert size == mask.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
    assert log["correct_m_0"] == int((logits.argmax(-1) == wanted).sum())


@pytest.mark.parametrize("logit_mode", ["cosine", "linear"])
def test_masked_prediction_criterion_accuracy(logit_mode):
    cfg, task_cfg = tiny_config(logit_mode=logit_mode), HubertPretrainingConfig(label_rate=50)
    torch.manual_seed(0)
    model = K2sslHubertModel(cfg, task_cfg, [km_dictionary()]).eval()
    audio, targets, mask = batch_inputs()
    sample = {"net_input": {"source": audio, "padding_mask": None, "mask_indices": torch.from_numpy(mask)},
              "target_list": targets, "id": torch.arange(BATCH)}
    _, _, log = MaskedPredictionCriterion(None, 1.0, 0.0, [10.0])(model, sample)
    out = model(audio, target_list=targets, mask_indices=torch.from_numpy(mask))
    logits, = model.get_logits(out)
    wanted, = model.get_targets(out)
    hits = (logits.argmax(-1) == wanted) & (logits.argmin(-1) != wanted)
    assert log["count_m_0"] == int(mask.sum())
    assert log["correct_m_0"] == int(hits.sum())


@pytest.mark.parametrize("logit_mode", ["cosine", "linear"])
def test_bf16_autocast_forward_backward(logit_mode):
    cfg, task_cfg = tiny_config(logit_mode=logit_mode), HubertPretrainingConfig(label_rate=50)
    model = K2sslHubertModel(cfg, task_cfg, [km_dictionary()]).train()
    audio, targets, mask = batch_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(audio, target_list=targets, mask_indices=torch.from_numpy(mask))
        loss = sum(F.cross_entropy(l, t, reduction="sum")
                   for l, t in zip(model.get_logits(out), model.get_targets(out)))
    assert model.get_logits(out)[0].dtype == torch.float32
    if logit_mode == "cosine":  # computed with autocast off, like stock's float() cosine similarity
        assert out["logit_m_list"][0].dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_unsupported_settings_are_refused():
    with pytest.raises(ValueError, match="layer_type='conformer'"):
        K2sslHubertModel(tiny_config(layer_type="conformer"), HubertPretrainingConfig(label_rate=50),
                         [km_dictionary()])
    with pytest.raises(ValueError, match="needs the label dictionaries"):
        K2sslHubertModel(tiny_config(logit_mode="linear"), HubertPretrainingConfig(label_rate=50), [None])
