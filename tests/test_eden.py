"""Eden schedule maths (k2ssl-notes.md section 9.2)."""
import math

import pytest

from k2ssl_fairseq.optim import EdenSchedule


def test_factor_is_the_product_of_batch_epoch_and_warmup_terms():
    schedule = EdenSchedule(lr_batches=7500, lr_epochs=10.5, warmup_batches=5000, warmup_start=0.0)
    batch, epoch = 2500, 3
    expected = ((batch**2 + 7500**2) / 7500**2) ** -0.25 * ((epoch**2 + 10.5**2) / 10.5**2) ** -0.25 * 0.5
    assert schedule.factor(batch, epoch) == pytest.approx(expected, rel=1e-15)


def test_warmup_is_linear_from_warmup_start_and_then_one():
    schedule = EdenSchedule(lr_batches=30, lr_epochs=1.5, warmup_batches=10, warmup_start=0.5)
    assert schedule.warmup(0) == 0.5
    assert schedule.warmup(1) == pytest.approx(0.55)
    assert schedule.warmup(9) == pytest.approx(0.95)
    assert schedule.warmup(10) == 1.0
    assert schedule.warmup(10_000) == 1.0


def test_no_warmup_when_warmup_batches_is_zero():
    schedule = EdenSchedule(lr_batches=100, lr_epochs=2, warmup_batches=0, warmup_start=0.0)
    assert schedule.factor(0, 0) == 1.0


def test_far_beyond_both_spans_the_lr_falls_like_inverse_sqrt_of_batch_times_epoch():
    schedule = EdenSchedule(lr_batches=10, lr_epochs=1, warmup_batches=0, warmup_start=1.0)
    ratio = schedule.factor(1e6, 1e4) / schedule.factor(4e6, 4e4)
    assert ratio == pytest.approx(math.sqrt(16), rel=1e-6)


def test_k2ssl_base_reference_point():
    """Notes 9.2 table: Base at step 10k (epoch ~13 at ~720 steps/epoch) has lr ~2.8e-2."""
    schedule = EdenSchedule(lr_batches=7500, lr_epochs=10.5, warmup_batches=5000, warmup_start=0.0)
    assert 0.045 * schedule.factor(10_000, 10_000 // 720) == pytest.approx(2.8e-2, rel=0.05)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr_batches=0), "lr_batches must be > 0"),
    (dict(lr_epochs=-1), "lr_epochs must be > 0"),
    (dict(warmup_batches=-5), "warmup_batches must be >= 0"),
    (dict(warmup_start=1.5), "warmup_start must be in [0, 1]"),
])
def test_invalid_settings_are_named(kwargs, message):
    settings = dict(lr_batches=7500, lr_epochs=10.5, warmup_batches=5000, warmup_start=0.0)
    settings.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        EdenSchedule(**settings)
