"""zipformer_ssl against the original: golden outputs, parameter listings, padding, interface."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import k2ssl_fairseq  # noqa: F401
from helpers import ZIPFORMER_GOLDEN_TOLERANCE, golden_arrays, golden_dir
from k2ssl_fairseq.conversion.icefall import model_config_from_hparams
from k2ssl_fairseq.data.frames import conv_frames
from k2ssl_fairseq.models.zipformer import without_training_state
from k2ssl_fairseq.models.zipformer_ssl import ZipformerSslConfig, ZipformerSslModel

GOLDEN = golden_dir()
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config" / "pretrain"
#: Outputs of the original icefall model (tests/golden/README.md): the reference tiny case, and a case
#: with per-stack head dimensions, the widest stack in the middle and 8-head stacks (made by
#: tests/golden/make_icefall_case.py from icefall's own code; always read from this repository).
GOLDEN_CASES = {"tiny_case1": GOLDEN / "zipformer_ssl_tiny_case1",
                "per_stack_heads": Path(__file__).resolve().parent / "golden" / "per_stack_heads"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def relative_error(ours: torch.Tensor, ref: np.ndarray) -> float:
    ref_t = torch.from_numpy(ref)
    return float((ours - ref_t).abs().max() / ref_t.abs().max())


def golden_model(case: Path):
    """A golden case's arrays, and its model built from the hyper-parameters in its JSON, loaded strictly."""
    arrays = golden_arrays(case.name, case.parent)
    meta = json.loads(case.with_suffix(".json").read_text())
    model = ZipformerSslModel(model_config_from_hparams(meta["config"]), meta["config"]["num_classes"])
    model.load_state_dict({k[len("param/"):]: torch.from_numpy(arrays[k]) for k in arrays
                           if k.startswith("param/")}, strict=True)
    return arrays, model.eval()


@pytest.fixture(scope="module")
def golden():
    return golden_arrays("zipformer_ssl_tiny_case1")


@pytest.fixture(scope="module")
def tiny_model() -> ZipformerSslModel:
    return golden_model(GOLDEN_CASES["tiny_case1"])[1]


@pytest.mark.parametrize("case", list(GOLDEN_CASES))
def test_golden_outputs_match(case):
    golden, tiny_model = golden_model(GOLDEN_CASES[case])
    wav = torch.from_numpy(golden["input/wav"])
    no_padding = torch.zeros_like(wav, dtype=torch.bool)
    with torch.no_grad():
        cnn, frame_padding = tiny_model.cnn_features(wav, no_padding)
        encoder_input = tiny_model(wav, padding_mask=no_padding, mask=False, features_only=True)["features"]
        encoded, padding = tiny_model.extract_features(wav, no_padding)
        stacks = [tiny_model.extract_features(wav, no_padding, output_layer=i + 1)[0] for i in range(6)]
        logits = tiny_model.final_proj(encoded) / tiny_model.cfg.logit_temp
    assert not frame_padding.any() and not padding.any()
    errors = {"cnn": relative_error(cnn.transpose(1, 2), golden["out/cnn"]),
              "features": relative_error(encoder_input, golden["out/features"]),
              "encoder": relative_error(encoded, golden["out/encoder"]),
              "logits": relative_error(logits, golden["out/logits"])}
    errors.update({f"stack{i}": relative_error(s, golden[f"out/stack{i}"]) for i, s in enumerate(stacks)})
    assert all(e <= ZIPFORMER_GOLDEN_TOLERANCE for e in errors.values()), errors


@pytest.mark.parametrize("size", ["base", "large"])
def test_parameter_listing_equals_original(size):
    listing = json.loads((GOLDEN / f"zipformer_ssl_{size}_state_dict.json").read_text())
    preset = OmegaConf.load(CONFIG_DIR / f"zipformer_{size}.yaml").model
    cfg = OmegaConf.structured(ZipformerSslConfig(
        label_rate=50.0, sample_rate=16000, **{k: v for k, v in preset.items() if k != "_name"}))
    with torch.device("meta"):
        model = ZipformerSslModel(cfg, [listing["final_proj_out_features"]])
    state = model.state_dict()
    ours = {k: list(v.shape) for k, v in without_training_state(state).items()}
    theirs = {e["key"]: e["shape"] for e in listing["state_dict"]}
    assert ours == theirs
    # Besides icefall's tensors, the state dict holds each Whiten's adaptive probability (one scalar).
    whitens = [name for name, module in model.named_modules() if type(module).__name__ == "Whiten"]
    assert sorted(k for k in state if k.endswith("._extra_state")) == sorted(f"{w}._extra_state" for w in whitens)
    assert sum(p.numel() for p in model.parameters()) == listing["total_params"]


def test_padding_invariance_every_stage(tiny_model, golden):
    """An utterance alone and inside a padded batch: same output of every stack and of the encoder."""
    alone = torch.from_numpy(golden["input/wav"][0, :17123].copy())
    other = torch.randn(29001, generator=torch.Generator().manual_seed(0)) * 0.3
    batch = torch.stack([torch.cat([alone, torch.full((29001 - 17123,), 5.0)]), other])
    padding = torch.zeros_like(batch, dtype=torch.bool)
    padding[0, 17123:] = True
    errors = {}
    with torch.no_grad():
        for layer in [None, 1, 2, 3, 4, 5, 6]:
            single, _ = tiny_model.extract_features(alone[None], output_layer=layer)
            batched, frame_padding = tiny_model.extract_features(batch, padding, output_layer=layer)
            frames = single.shape[1]
            assert int((~frame_padding[0]).sum()) == frames == conv_frames(17123)
            errors[layer] = float((batched[0, :frames] - single[0]).abs().max() / single.abs().max())
    assert all(e <= ZIPFORMER_GOLDEN_TOLERANCE for e in errors.values()), errors


def test_forward_uses_given_masks_and_returns_class_targets(tiny_model, golden):
    wav = torch.from_numpy(golden["input/wav"])
    frames = conv_frames(wav.shape[1])
    targets = torch.randint(4, 24, (2, frames), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[:, 10:30] = True
    with torch.no_grad():
        out = tiny_model(wav, target_list=[targets], mask_indices=mask)
        full = tiny_model.final_proj(tiny_model(wav, mask_indices=mask, features_only=True)["x"]) / 0.1
    assert torch.equal(tiny_model.get_targets(out, True)[0], targets[mask])
    assert torch.equal(tiny_model.get_targets(out, False)[0], targets[~mask])
    assert torch.allclose(tiny_model.get_logits(out, True)[0], full[mask], atol=1e-5)
    assert tiny_model.get_logits(out, False)[0].shape == (int((~mask).sum()), 24)
    penalties, names = tiny_model.get_extra_losses(out)
    assert names == ["features_pen"] and penalties[0].ndim == 0 and float(penalties[0]) > 0


def test_fallback_masks_and_label_alignment(tiny_model, golden):
    wav = torch.from_numpy(golden["input/wav"])
    short_labels = torch.randint(4, 24, (2, 60))  # fewer labels than the 74 frames: frames are trimmed
    with torch.no_grad():
        out = tiny_model(wav, target_list=[short_labels])
    masked = out["mask_indices"]
    assert masked.shape == (2, 60)
    assert masked.sum(1).tolist()[0] == masked.sum(1).tolist()[1] > 0
    assert torch.equal(out["target_m_list"][0], short_labels[masked])


def test_bad_inputs_are_refused(tiny_model, golden):
    wav = torch.from_numpy(golden["input/wav"])
    with pytest.raises(ValueError, match="target_list is required"):
        tiny_model(wav)
    with pytest.raises(ValueError, match="output_layer"):
        tiny_model.extract_features(wav, output_layer=7)
    with pytest.raises(ValueError, match="batch, samples"):
        tiny_model.extract_features(wav[0])


def test_extract_features_ret_conv_returns_encoder_input(tiny_model, golden):
    wav = torch.from_numpy(golden["input/wav"])
    with torch.no_grad():
        conv, _ = tiny_model.extract_features(wav, ret_conv=True)
    assert relative_error(conv, golden["out/features"]) <= ZIPFORMER_GOLDEN_TOLERANCE


def test_cnn_values_and_gradients_equal_the_stock_extractor(tiny_model, golden):
    """The model's front-end (``conv_frontend``, padding-aware GroupNorm) gives fairseq's values and
    gradients on unpadded input (feature_grad_mult 1 here)."""
    wav = torch.from_numpy(golden["input/wav"])
    extractor = tiny_model.feature_extractor
    grads = []
    grad_mult, tiny_model.cfg.feature_grad_mult = tiny_model.cfg.feature_grad_mult, 1.0
    for run in (lambda: tiny_model.cnn_features(wav, None)[0].transpose(1, 2), lambda: extractor(wav)):
        extractor.zero_grad()
        out = run()
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        grads.append([p.grad.clone() for p in extractor.parameters()])
        values = out.detach()
    tiny_model.cfg.feature_grad_mult = grad_mult
    # float32 summation order differs (matrix products vs oneDNN convolutions): ~6e-6 measured
    assert max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(*grads)) <= 5e-5
    assert relative_error(values, golden["out/cnn"]) <= ZIPFORMER_GOLDEN_TOLERANCE
    extractor.zero_grad()
