"""Unit tests of the Zipformer2 building blocks: custom autograd, regularisers, schedules."""

from __future__ import annotations

import math

import pytest
import torch

from k2ssl_fairseq.models.zipformer.activations import (
    ActivationDropoutLinear,
    _SwooshDropoutLinear,
    swoosh_l,
    swoosh_r,
)
from k2ssl_fairseq.models.zipformer.attention import relative_to_absolute
from k2ssl_fairseq.models.zipformer.encoder import SimpleDownsample, upsample
from k2ssl_fairseq.models.zipformer.layers import BypassModule
from k2ssl_fairseq.models.zipformer.norms import BiasNorm, _BiasNormFunction
from k2ssl_fairseq.models.zipformer.positional import relative_position_table
from k2ssl_fairseq.models.zipformer.regularizers import (
    Balancer,
    Whiten,
    balancer_gradient,
    limit_param_value,
    penalize_abs_values_gt,
    whitening_gradient,
    whitening_metric,
)
from k2ssl_fairseq.models.zipformer.schedules import ScheduledFloat, set_batch_count


def test_swoosh_formulas():
    x = torch.linspace(-30, 30, 601, dtype=torch.float64)
    torch.testing.assert_close(swoosh_l(x), torch.log1p(torch.exp(x - 4)) - 0.08 * x - 0.035)
    torch.testing.assert_close(swoosh_r(x), torch.log1p(torch.exp(x - 1)) - 0.08 * x - 0.313261687)
    assert abs(float(swoosh_r(torch.tensor(0.0, dtype=torch.float64)))) < 1e-8  # SwooshR(0) = 0


@pytest.mark.parametrize("activation", ["swoosh_l", "swoosh_r"])
def test_activation_dropout_linear_gradients(activation):
    torch.manual_seed(0)
    x = (3 * torch.randn(4, 3, 6, dtype=torch.float64)).requires_grad_(True)
    weight = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(1, 3, 6) > 0.3).double() / 0.7
    for dropout_mask in (None, mask):
        assert torch.autograd.gradcheck(
            lambda x, w, b: _SwooshDropoutLinear.apply(x, w, b, activation, dropout_mask), (x, weight, bias)
        )


def test_activation_dropout_linear_shares_mask_over_time():
    torch.manual_seed(0)
    module = ActivationDropoutLinear(16, 16, "swoosh_l", dropout=0.5, dropout_shared_dim=0)
    module.weight.data = torch.eye(16)
    module.bias.data.zero_()
    module.train()
    x = torch.ones(7, 3, 16)
    out = module(x)
    dropped = out == 0
    assert bool(dropped.any()) and bool((dropped == dropped[:1]).all())
    torch.testing.assert_close(out[~dropped], swoosh_l(x)[~dropped] * 2.0)
    module.eval()
    torch.testing.assert_close(module(x), swoosh_l(x))


def test_bias_norm_forward_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(5, 2, 7, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    expected = x * ((x - bias).pow(2).mean(-1, keepdim=True) ** -0.5) * log_scale.exp()
    torch.testing.assert_close(_BiasNormFunction.apply(x, bias, log_scale), expected)
    assert torch.autograd.gradcheck(_BiasNormFunction.apply, (x, bias, log_scale))
    norm = BiasNorm(7)
    with pytest.raises(ValueError, match="expects 7 channels"):
        norm(torch.zeros(3, 6))


def test_balancer_changes_only_gradient():
    torch.manual_seed(0)
    balancer = Balancer(
        4, channel_dim=-1, min_positive=0.4, max_positive=0.6, min_abs=0.5, max_abs=1.0, prob=1.0
    )
    balancer.train()
    x = torch.randn(50, 4) * torch.tensor([0.01, 5.0, 1.0, 1.0]) + torch.tensor([0.0, 0.0, 3.0, 0.0])
    x.requires_grad_(True)
    upstream = torch.randn(50, 4)
    out = balancer(x)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    out.backward(upstream)
    changed = (x.grad - upstream).abs().amax(dim=0)
    assert bool((changed[:3] > 0).all())  # too small, too large, too often positive
    balancer.eval()
    assert balancer(x) is x


def _balancer_loss_gradient_by_autograd(x, limits, channel_dim):
    """k2SSL's Balancer: autograd through its range-violation loss, normalised to RMS grad_scale per channel."""
    min_mean, max_mean, min_rms, max_rms, grad_scale = limits
    other_dims = [d for d in range(x.ndim) if d != channel_dim]
    x = x.detach().requires_grad_(True)
    mean_square = (x * x).mean(dim=other_dims, keepdim=True)
    mean = x.mean(dim=other_dims, keepdim=True)
    std = (mean_square - mean * mean).clamp(min=1.0e-20).sqrt()
    rms = mean_square.clamp(min=1.0e-20).sqrt()
    ratio = mean / std
    loss = (ratio - ratio.clamp(min=min_mean, max=max_mean)).abs() + (rms.clamp(min=min_rms, max=max_rms) / rms).log().abs()
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return grad * (grad_scale / (grad * grad).mean(dim=other_dims, keepdim=True).sqrt().clamp(min=1.0e-20))


@pytest.mark.parametrize("channel_dim", [-1, 1])
def test_balancer_gradient_written_out_equals_autograd_of_its_loss(channel_dim):
    """Every case of the loss: mean/std below, inside and above its range, rms below, inside and
    above, and an all-zero channel (std and rms clamped). (A constant non-zero channel is left out:
    there k2SSL's ``mean(x^2) - mean^2`` is rounding noise, so its gradient is too.)"""
    torch.manual_seed(0)
    x = torch.randn(40, 8, 3, dtype=torch.float64)
    scale = torch.tensor([0.01, 0.5, 1.0, 30.0, 1.0, 1.0, 0.1, 1.0], dtype=torch.float64)
    shift = torch.tensor([0.0, 0.0, 2.0, 0.0, -2.0, 0.1, 5.0, 0.0], dtype=torch.float64)
    x = x * scale[:, None] + shift[:, None]
    x[:, 7] = 0.0  # all zero
    x = x.movedim(1, channel_dim % 3)
    limits = (-0.5, 0.5, 0.3, 4.0, 0.04)
    expected = _balancer_loss_gradient_by_autograd(x, limits, channel_dim % 3)
    torch.testing.assert_close(balancer_gradient(x, limits, channel_dim % 3), expected, rtol=1e-9, atol=1e-12)


def test_whitening_gradient_written_out_equals_autograd_of_the_metric():
    torch.manual_seed(0)
    for groups in (1, 4):
        x = (torch.randn(3, 50, 16, dtype=torch.float64) @ torch.randn(16, 16, dtype=torch.float64)).requires_grad_(True)
        metric, grad = whitening_gradient(x.detach(), groups)
        reference = whitening_metric(x, groups)
        (expected,) = torch.autograd.grad(reference, x)
        torch.testing.assert_close(metric, reference.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-14)


def test_whiten_changes_only_gradient_when_over_limit():
    torch.manual_seed(0)
    base = torch.randn(200, 1)
    correlated = (base * torch.ones(1, 8) + 0.01 * torch.randn(200, 8)).requires_grad_(True)
    assert float(whitening_metric(correlated.detach(), 1)) > 5.0
    assert float(whitening_metric(torch.randn(20000, 8), 1)) < 1.1
    whiten = Whiten(num_groups=1, whitening_limit=2.0, prob=(1.0, 1.0), grad_scale=0.1)
    whiten.train()
    upstream = torch.randn(200, 8)
    out = whiten(correlated)
    torch.testing.assert_close(out, correlated, rtol=0, atol=0)
    out.backward(upstream)
    added = correlated.grad - upstream
    assert float(added.norm()) == pytest.approx(0.1 * float(upstream.norm()), rel=1e-4)


def test_limit_param_value_flips_wrong_way_gradients():
    param = torch.tensor([0.1, 0.5, 1.5, 0.1, 1.5], requires_grad=True)
    grad = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0])
    limited = limit_param_value(param, 0.2, 1.0, prob=1.0)
    torch.testing.assert_close(limited, param.detach())
    limited.backward(grad)
    # below min with positive grad, above max with negative grad: flipped; the rest unchanged
    torch.testing.assert_close(param.grad, torch.tensor([-1.0, 1.0, 1.0, -1.0, 1.0]))


def test_penalize_abs_values_gt_adds_l1_gradient():
    x = torch.tensor([-30.0, -1.0, 0.0, 2.0, 26.0], requires_grad=True)
    out = penalize_abs_values_gt(x, limit=25.0, penalty=1e-4)
    torch.testing.assert_close(out, x.detach())
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1 - 1e-4, 1.0, 1.0, 1.0, 1 + 1e-4]))


def test_scheduled_float_and_set_batch_count():
    value = ScheduledFloat((0.0, 0.5), (100.0, 0.1), (200.0, 0.0), default=0.7)
    holder = torch.nn.Module()
    holder.value = value
    holder.train()
    assert float(value) == 0.7  # no batch count yet
    set_batch_count(holder, 50)
    assert float(value) == pytest.approx(0.3)
    set_batch_count(holder, 150)
    assert float(value) == pytest.approx(0.05)
    set_batch_count(holder, 1e9)
    assert float(value) == 0.0
    holder.eval()
    assert float(value) == 0.7
    with pytest.raises(ValueError, match="increase strictly"):
        ScheduledFloat((1.0, 0.0), (1.0, 1.0))


def test_relative_position_table_formula():
    table = relative_position_table(5, 8)
    assert table.shape == (9, 8)
    offset = 3.0  # row 4 + 3
    c = math.sqrt(8)
    theta = math.atan(c * (math.log(offset + c) - math.log(c)) * 2 * math.pi / 8)
    expected = [f(k * theta) for k in range(1, 5) for f in (math.cos, math.sin)]
    expected[-1] = 1.0
    torch.testing.assert_close(table[7], torch.tensor(expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(relative_position_table(9, 8)[4:13], table)


def test_relative_to_absolute_indexes_key_minus_query():
    frames = 4
    offsets = torch.arange(-(frames - 1), frames, dtype=torch.float32)
    scores = offsets.expand(2, 3, frames, 2 * frames - 1).contiguous()
    absolute = relative_to_absolute(scores)
    query = torch.arange(frames).unsqueeze(1)
    key = torch.arange(frames).unsqueeze(0)
    torch.testing.assert_close(absolute[1, 2], (key - query).float())


def test_simple_downsample_repeats_each_sequences_last_frame():
    down = SimpleDownsample(4)
    with torch.no_grad():
        down.bias.copy_(torch.tensor([0.1, -0.3, 0.7, 0.2]))
    w = down.bias.softmax(0).detach()
    x = torch.randn(6, 2, 3)
    out = down(x, lengths=torch.tensor([6, 3]))
    assert out.shape == (2, 2, 3)
    torch.testing.assert_close(out[1, 0], w[0] * x[4, 0] + (1 - w[0]) * x[5, 0])
    torch.testing.assert_close(out[0, 1], w[0] * x[0, 1] + w[1] * x[1, 1] + (w[2] + w[3]) * x[2, 1])
    torch.testing.assert_close(upsample(out, 4, 6)[:, 0], out[:, 0].repeat_interleave(4, dim=0)[:6])


def test_bypass_skips_whole_sequences_only_in_training():
    bypass = BypassModule(3, skip_rate=1.0)
    orig, x = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    bypass.train()
    torch.testing.assert_close(bypass(orig, x), orig)
    bypass.eval()
    torch.testing.assert_close(bypass(orig, x), torch.full((2, 4, 3), 0.5))


def test_a_unit_is_kept_only_when_its_draw_exceeds_the_rate():
    """k2SSL's tie rule: keep when ``rand > p`` (a draw of exactly ``p`` drops)."""
    from k2ssl_fairseq.models.zipformer.layers import sequence_keep_mask

    quarters = torch.full((4, 1), 0.25)
    assert sequence_keep_mask(0.25, quarters).sum() == 0
    assert sequence_keep_mask(0.2, quarters).sum() == 4
    assert sequence_keep_mask(0.0, quarters) is None  # a host rate of 0: nothing to drop
    assert sequence_keep_mask(torch.tensor(0.0), quarters).sum() == 4  # a device rate: always a mask
    x = torch.zeros(3, 4, 8)
    layer = ActivationDropoutLinear(8, 8, "swoosh_l", dropout=0.25).train()
    assert not layer._dropout_mask(x, torch.full((1, 4, 8), 0.25)).any()
    layer.dropout = 0.2
    assert layer._dropout_mask(x, torch.full((1, 4, 8), 0.25)).all()


def test_whiten_probability_follows_updates_and_is_saved():
    from k2ssl_fairseq.models.zipformer.regularizers import end_whitening_update

    holder = torch.nn.Sequential(Whiten(1, 5.0, prob=(0.025, 0.25), grad_scale=0.01),
                                 Whiten(1, 5.0, prob=(0.025, 0.25), grad_scale=0.01))
    over, quiet = holder[0], holder[1]
    over.observed = Whiten.UNDER
    over.observed = max(over.observed, Whiten.OVER)  # one batch under the limit, another over it
    seen = []
    end_whitening_update(holder, combine=lambda found: seen.append(found.tolist()) or found)
    assert seen == [[Whiten.OVER, Whiten.NOT_SEEN]]
    assert (over.prob, quiet.prob) == (0.25, 0.25) and over.observed == Whiten.NOT_SEEN
    over.observed = Whiten.UNDER
    end_whitening_update(holder)
    assert (over.prob, quiet.prob) == (0.025, 0.25)

    over.observed = Whiten.OVER  # pending findings of the update in progress are saved too
    state = holder.state_dict()
    assert sorted(state) == ["0._extra_state", "1._extra_state"]
    restored = torch.nn.Sequential(Whiten(1, 5.0, prob=(0.025, 0.25), grad_scale=0.01),
                                   Whiten(1, 5.0, prob=(0.025, 0.25), grad_scale=0.01))
    restored.load_state_dict(state, strict=True)
    assert (restored[0].prob, restored[0].observed) == (0.025, Whiten.OVER)
    restored.load_state_dict({}, strict=True)  # icefall's state dicts have none: a fresh run's values
    assert (restored[0].prob, restored[0].observed) == (0.25, Whiten.NOT_SEEN)


def test_whiten_backward_records_whether_the_metric_was_over_its_limit():
    torch.manual_seed(0)
    correlated = torch.randn(200, 1) * torch.ones(1, 8) + 0.01 * torch.randn(200, 8)
    for x, expected in ((correlated, Whiten.OVER), (torch.randn(200, 8), Whiten.UNDER)):
        whiten = Whiten(1, 2.0, prob=(1.0, 1.0), grad_scale=0.01).train()
        whiten(x.clone().requires_grad_()).sum().backward()
        assert whiten.observed == expected
