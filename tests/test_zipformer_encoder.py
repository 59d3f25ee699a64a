"""Acceptance tests of the plain-PyTorch Zipformer2 encoder (issue B, part B1).

Reference numbers come from the original icefall implementation (``tests/golden``, see its README).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import ZIPFORMER_GOLDEN_TOLERANCE, golden_arrays, golden_dir
from k2ssl_fairseq.models.zipformer import ScheduledFloat, Zipformer2, set_batch_count, without_training_state
from k2ssl_fairseq.models.zipformer.regularizers import Balancer, Whiten

GOLDEN = golden_dir()
TINY_JSON = GOLDEN / "zipformer_ssl_tiny_case1.json"
PREFIX = "encoder."


def _ints(value) -> list:
    return [int(v) for v in str(value).split(",")]


def encoder_from_icefall_config(config: dict) -> Zipformer2:
    """Build the encoder from an icefall config namespace (comma strings)."""
    encoder_dim = _ints(config["encoder_dim"])
    return Zipformer2(
        input_dim=encoder_dim[0],
        encoder_dim=encoder_dim,
        num_encoder_layers=_ints(config["num_encoder_layers"]),
        feedforward_dim=_ints(config["feedforward_dim"]),
        encoder_unmasked_dim=_ints(config["encoder_unmasked_dim"]),
        num_heads=_ints(config["num_heads"]),
        cnn_module_kernel=_ints(config["cnn_module_kernel"]),
        downsampling_factor=_ints(config["downsampling_factor"]),
        query_head_dim=int(config["query_head_dim"]),
        value_head_dim=int(config["value_head_dim"]),
        pos_head_dim=int(config["pos_head_dim"]),
        pos_dim=int(config["pos_dim"]),
    )


@pytest.fixture(scope="module")
def golden():
    return golden_arrays("zipformer_ssl_tiny_case1")


@pytest.fixture()
def tiny_encoder(golden) -> Zipformer2:
    """The tiny golden encoder with the reference weights loaded strictly."""
    encoder = encoder_from_icefall_config(json.loads(TINY_JSON.read_text())["config"])
    state = {
        k[len("param/" + PREFIX) :]: torch.from_numpy(golden[k])
        for k in golden
        if k.startswith("param/" + PREFIX)
    }
    encoder.load_state_dict(state, strict=True)
    return encoder


def _features(golden) -> torch.Tensor:
    return torch.from_numpy(golden["out/features"]).transpose(0, 1).contiguous()  # (T, B, C)


def test_golden_equivalence_every_stack_and_output(tiny_encoder, golden):
    tiny_encoder.eval()
    with torch.no_grad():
        result = tiny_encoder(_features(golden))
    assert len(result.stack_outputs) == 6
    for i, stack in enumerate(result.stack_outputs):
        reference = golden[f"out/stack{i}"]
        ours = stack.transpose(0, 1).numpy()
        assert ours.shape == reference.shape
        diff = np.abs(ours - reference).max()
        assert diff <= ZIPFORMER_GOLDEN_TOLERANCE * np.abs(reference).max(), f"stack {i}: max|diff| {diff}"
    reference = golden["out/encoder"]
    ours = result.output.transpose(0, 1).numpy()
    assert ours.shape == reference.shape == (2, 74, 64)
    diff = np.abs(ours - reference).max()
    assert diff <= ZIPFORMER_GOLDEN_TOLERANCE * np.abs(reference).max(), f"encoder: max|diff| {diff}"
    assert result.lengths.tolist() == [74, 74]


@pytest.mark.parametrize("size", ["base", "large"])
def test_state_dict_keys_shapes_and_counts_match_k2ssl(size):
    listing = json.loads((GOLDEN / f"zipformer_ssl_{size}_state_dict.json").read_text())
    with torch.device("meta"):
        encoder = encoder_from_icefall_config(listing["config"])
    reference = {
        e["key"][len(PREFIX) :]: e["shape"] for e in listing["state_dict"] if e["key"].startswith(PREFIX)
    }
    ours = {k: list(v.shape) for k, v in without_training_state(encoder.state_dict()).items()}
    assert ours == reference
    assert sum(p.numel() for p in encoder.parameters()) == listing["params_by_top_module"]["encoder"]
    unused = {k[len(PREFIX) :] for k in listing["unused_params"] if k.startswith(PREFIX)}
    assert unused <= set(ours)
    assert encoder.output_dim == listing["encoder_output_dim"]


def _assert_close_relative(a: torch.Tensor, b: torch.Tensor, what: str):
    scale = max(float(b.abs().max()), 1e-6)
    diff = float((a - b).abs().max())
    assert diff <= ZIPFORMER_GOLDEN_TOLERANCE * scale, f"{what}: max|diff| {diff} vs max|ref| {scale}"


def test_padding_invariance_every_stack(tiny_encoder):
    """Each utterance alone == the same utterance inside a padded batch (eval mode)."""
    torch.manual_seed(0)
    lengths = [74, 13, 53, 37]  # not multiples of 8; long and short mixed
    utterances = [torch.randn(n, 1, 32) for n in lengths]
    batch = torch.zeros(max(lengths), len(lengths), 32)
    for b, u in enumerate(utterances):
        batch[: u.shape[0], b] = u[:, 0]
        batch[u.shape[0] :, b] = 100.0 * torch.randn(max(lengths) - u.shape[0], 32)  # garbage padding
    tiny_encoder.eval()
    with torch.no_grad():
        batched = tiny_encoder(batch, x_lens=torch.tensor(lengths))
        alone = [tiny_encoder(u) for u in utterances]
        via_mask = tiny_encoder(
            batch, padding_mask=torch.arange(max(lengths))[None] >= torch.tensor(lengths)[:, None]
        )
    assert batched.lengths.tolist() == lengths
    torch.testing.assert_close(via_mask.output, batched.output, rtol=0, atol=0)
    for b, n in enumerate(lengths):
        _assert_close_relative(batched.output[:n, b], alone[b].output[:, 0], f"output, utterance {b}")
        for i in range(6):
            _assert_close_relative(
                batched.stack_outputs[i][:n, b],
                alone[b].stack_outputs[i][:, 0],
                f"stack {i}, utterance {b}",
            )


def _set_regularisers(encoder: Zipformer2, enabled: bool) -> None:
    """Force every Balancer and Whiten on (always acting) or off, leaving RNG use unchanged."""
    for module in encoder.modules():
        if isinstance(module, Balancer):
            module.prob = ScheduledFloat((0.0, float(enabled)), default=float(enabled))
        elif isinstance(module, Whiten):
            module.min_prob = module.max_prob = module.prob = float(enabled)
            module.whitening_limit = ScheduledFloat((0.0, 1.0), default=1.0)


def _train_step(encoder: Zipformer2, x: torch.Tensor, seed: int):
    torch.manual_seed(seed)
    x = x.clone().requires_grad_(True)
    out = encoder(x).output
    out.square().mean().backward()
    grads = torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None])
    encoder.zero_grad()
    return out.detach(), grads, x.grad


def test_regularisers_change_gradients_not_forward_values(tiny_encoder, golden):
    x = _features(golden)[:41]
    tiny_encoder.train()
    set_batch_count(tiny_encoder, 1000.0)
    _set_regularisers(tiny_encoder, enabled=False)
    out_off, grads_off, x_grad_off = _train_step(tiny_encoder, x, seed=3)
    _set_regularisers(tiny_encoder, enabled=True)
    out_on, grads_on, x_grad_on = _train_step(tiny_encoder, x, seed=3)
    torch.testing.assert_close(out_on, out_off, rtol=0, atol=0)
    assert grads_on.shape == grads_off.shape
    assert (grads_on - grads_off).abs().max() > 1e-6
    assert (x_grad_on - x_grad_off).abs().max() > 1e-6


def test_schedules_follow_set_batch_count(tiny_encoder):
    layer = tiny_encoder.encoders[0].layers[0]
    dropout = layer.feed_forward1.out_proj.dropout
    tiny_encoder.train()
    assert float(dropout) == 0.0  # no batch count yet: default
    set_batch_count(tiny_encoder, 0.0)
    assert float(dropout) == pytest.approx(0.3)
    assert float(layer.bypass.skip_rate) == pytest.approx(0.5)
    set_batch_count(tiny_encoder, 10000.0)
    assert float(dropout) == pytest.approx(0.2)
    assert float(layer.attention_skip_rate) == pytest.approx(0.05 - 0.05 * 6000 / 12000)
    set_batch_count(tiny_encoder, 1e6)
    assert float(dropout) == pytest.approx(0.1)
    deepest = tiny_encoder.encoders[3].encoder.layers[-1]
    assert float(deepest.bypass.skip_rate) == pytest.approx(0.035 * 8**0.5)
    tiny_encoder.eval()
    assert float(dropout) == 0.0 and float(deepest.bypass.skip_rate) == 0.0


def test_eval_deterministic_training_stochastic(tiny_encoder, golden):
    x = _features(golden)
    tiny_encoder.eval()
    with torch.no_grad():
        first, second = tiny_encoder(x).output, tiny_encoder(x).output
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert tiny_encoder.feature_masks(x) == [1.0] * 6

    tiny_encoder.train()
    set_batch_count(tiny_encoder, 0.0)  # strongest skipping and dropout
    with torch.no_grad():
        torch.manual_seed(1)
        train_a = tiny_encoder(x).output
        torch.manual_seed(2)
        train_b = tiny_encoder(x).output
    assert (train_a - train_b).abs().max() > 1e-3
    assert (train_a - first).abs().max() > 1e-3


def test_feature_masks_only_in_training(tiny_encoder):
    tiny_encoder.train()
    torch.manual_seed(0)
    x = torch.zeros(5, 400, 32)
    masks = tiny_encoder.feature_masks(x)
    for mask, dim, unmasked in zip(masks, tiny_encoder.encoder_dim, tiny_encoder.encoder_unmasked_dim):
        assert mask.shape == (1, 400, dim)
        assert bool((mask[..., :unmasked] == 1).all())
        dropped_all = (mask[0, :, unmasked:] == 0).all(dim=-1).float().mean()
        if dim > unmasked:
            assert 0.05 < float(dropped_all) < 0.25  # expected 0.125
    kept_top = (masks[2][0, :, -1] == 1).float().mean()
    assert 0.65 < float(kept_top) < 0.85  # expected 0.875 ** 2


def test_bad_input_is_reported(tiny_encoder):
    with pytest.raises(ValueError, match=r"\(frame, batch, 32\)"):
        tiny_encoder(torch.zeros(10, 2, 31))
    with pytest.raises(ValueError, match="padding_mask"):
        tiny_encoder(torch.zeros(10, 2, 32), padding_mask=torch.zeros(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_heads has 2 entries"):
        Zipformer2(8, [8, 8, 8], [1, 1, 1], [8, 8, 8], [8, 8, 8], [1, 1], [3, 3, 3], [1, 2, 1], 4, 4, 4, 8)
