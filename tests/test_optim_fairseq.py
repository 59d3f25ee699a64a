"""``scaled_adam`` and ``eden`` built through fairseq's registries and driven like fairseq's trainer."""
import json
import logging

import numpy as np
import pytest
import torch
from fairseq import optim
from fairseq.dataclass.configs import FairseqConfig
from fairseq.logging import metrics
from fairseq.optim.lr_scheduler import build_lr_scheduler
from omegaconf import OmegaConf

from helpers import SCALED_ADAM_GOLDEN_TOLERANCE, golden_arrays, golden_dir
from k2ssl_fairseq.optim import EdenSchedule, tag_parameter_names

GOLDEN = golden_dir()


def fairseq_cfg(optimizer=None, lr_scheduler=None, common=None, optimization=None):
    """A full fairseq config (stock defaults) selecting ``scaled_adam`` and ``eden``."""
    cfg = OmegaConf.structured(FairseqConfig())
    cfg.optimizer = {"_name": "scaled_adam", **(optimizer or {})}
    cfg.lr_scheduler = {"_name": "eden", **(lr_scheduler or {})}
    cfg.optimization.lr = [0.045]
    cfg.optimization.clip_norm = 0.0
    cfg.optimization.max_update = 100_000
    for key, value in (common or {}).items():
        cfg.common[key] = value
    for key, value in (optimization or {}).items():
        cfg.optimization[key] = value
    return cfg


def build(params, **kwargs):
    cfg = fairseq_cfg(**kwargs)
    optimizer = optim.build_optimizer(cfg.optimizer, params)
    return optimizer, build_lr_scheduler(cfg.lr_scheduler, optimizer)


def test_golden_replay_through_fairseq_hooks_with_metrics():
    """Trainer order: step_update(0) at build; per epoch step_begin_epoch(epoch) + step_update(n);
    per update step(), zero_grad(), step_update(n + 1)."""
    meta = json.loads((GOLDEN / "scaled_adam_case1.json").read_text())
    arrays = golden_arrays("scaled_adam_case1")
    names = meta["param_names_in_group_order"]
    params = [torch.nn.Parameter(torch.tensor(arrays[f"init/{n}"])) for n in names]
    sched = meta["scheduler_hyperparameters"]
    optimizer, scheduler = build(params, lr_scheduler={k: sched[k] for k in
                                                       ("lr_batches", "lr_epochs", "warmup_batches", "warmup_start")})
    scheduler.step_update(0)
    lrs = []
    with metrics.aggregate(new_root=True) as agg:
        for update in range(meta["num_steps"]):
            if update % meta["steps_per_epoch"] == 0:
                scheduler.step_begin_epoch(update // meta["steps_per_epoch"] + 1)
                scheduler.step_update(update)
            for name, p in zip(names, params):
                p.grad = torch.tensor(arrays[f"grad/{name}"][update])
            lrs.append(optimizer.get_lr())
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step_update(update + 1)
            for name, p in zip(names, params):
                ref = arrays[f"param/{name}"][update]
                rel = np.abs(p.detach().numpy() - ref).max() / np.abs(ref).max()
                assert rel <= SCALED_ADAM_GOLDEN_TOLERANCE, f"{name} update {update + 1}: relative diff {rel:.2e}"
    np.testing.assert_allclose(lrs, arrays["lr"], rtol=1e-12, atol=0)
    assert agg["scaled_adam_clipped"].avg == pytest.approx(3 / 60)
    assert agg["scaled_adam_clip_thr"].avg == pytest.approx(arrays["trace/clip_threshold"][-1], rel=1e-5)


def tiny_params():
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=generator)),
            torch.nn.Parameter(torch.randn(3, generator=generator))]


def test_flattened_fp16_is_refused_with_the_settings_that_work():
    with pytest.raises(ValueError, match="fp16_no_flatten_grads=true.*amp=true.*bf16=true"):
        build(tiny_params(), common={"fp16": True})


def test_memory_efficient_fp16_is_refused():
    with pytest.raises(ValueError, match="memory_efficient_fp16"):
        build(tiny_params(), common={"fp16": True, "memory_efficient_fp16": True})


@pytest.mark.parametrize("common, dtype", [
    ({"fp16": True, "fp16_no_flatten_grads": True}, torch.float16),
    ({"bf16": True}, torch.bfloat16),
])
def test_fairseq_fp16_optimizer_steps_with_per_tensor_masters(common, dtype):
    """fairseq's own FP16Optimizer (as the trainer builds it for fp16/bf16) around scaled_adam, on CPU."""
    cfg = fairseq_cfg(common=common, lr_scheduler={"warmup_batches": 0})
    params = [torch.nn.Parameter(p.detach().to(dtype)) for p in tiny_params()]
    before = [p.detach().float().clone() for p in params]
    fp16_optimizer = optim.FP16Optimizer.build_optimizer(cfg, params)
    scheduler = build_lr_scheduler(cfg.lr_scheduler, fp16_optimizer)
    scheduler.step_update(0)
    for update in range(3):
        fp16_optimizer.zero_grad()
        loss = sum((p.float() ** 2).sum() for p in params)
        fp16_optimizer.backward(loss)
        fp16_optimizer.clip_grad_norm(0.0)
        fp16_optimizer.step()
        scheduler.step_update(update + 1)
    for p, b in zip(params, before):
        assert p.dtype == dtype and torch.isfinite(p).all()
        assert (p.float().norm() < b.norm()), "minimising sum(p^2) must shrink p"
    state = fp16_optimizer.state_dict()
    assert state["state"] and all(isinstance(k, int) for k in state["state"])


def test_names_come_from_tagged_modules_and_default_to_positions():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    tag_parameter_names(model, prefix="encoder.")
    optimizer, _ = build(list(model.parameters()) + [torch.nn.Parameter(torch.ones(2))])
    assert optimizer.optimizer.param_groups[0]["param_names"] == [
        "encoder.0.weight", "encoder.0.bias", "encoder.1.weight", "encoder.1.bias", "param4"]


def test_positive_clip_norm_warns(caplog):
    with caplog.at_level(logging.WARNING):
        build(tiny_params(), optimization={"clip_norm": 10.0})
    assert "set optimization.clip_norm=0" in caplog.text


def test_eden_maps_fairseq_updates_and_epochs():
    optimizer, scheduler = build(tiny_params(), lr_scheduler={"lr_batches": 100, "lr_epochs": 2,
                                                              "warmup_batches": 10, "warmup_start": 0.2})
    schedule = EdenSchedule(100, 2, 10, 0.2)
    assert optimizer.get_lr() == pytest.approx(0.045 * schedule.factor(1, 0), rel=1e-15)
    scheduler.step_begin_epoch(3)
    assert scheduler.step_update(41) == pytest.approx(0.045 * schedule.factor(42, 2), rel=1e-15)
    assert optimizer.get_lr() == pytest.approx(0.045 * schedule.factor(42, 2), rel=1e-15)
    assert scheduler.step(3, val_loss=1.5) == optimizer.get_lr()


def test_eden_by_hours_of_audio():
    optimizer, scheduler = build(tiny_params(), lr_scheduler={
        "lr_batches": 7500, "lr_hours": 10000, "seconds_per_update": 11200, "warmup_batches": 1000})
    scheduler.step_begin_epoch(1)
    lr = scheduler.step_update(49_999)
    assert lr == pytest.approx(0.045 * EdenSchedule(7500, 10000, 1000, 0.0).factor(50_000, 50_000 * 11200 / 3600))
    assert lr == pytest.approx(4.4e-3, rel=0.05)  # k2ssl-notes 9.2, Large at 50k steps


def test_eden_state_round_trips():
    optimizer, scheduler = build(tiny_params(), lr_scheduler={"lr_batches": 100, "lr_epochs": 2})
    scheduler.step_begin_epoch(4)
    scheduler.step_update(250)
    scheduler.step(4, val_loss=2.0)
    state = scheduler.state_dict()
    fresh_optimizer, fresh = build(tiny_params(), lr_scheduler={"lr_batches": 100, "lr_epochs": 2})
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state == {"best": 2.0, "epoch_index": 3, "num_updates": 250}
    assert fresh_optimizer.get_lr() == optimizer.get_lr()
    with pytest.raises(KeyError, match="reset_lr_scheduler"):
        fresh.load_state_dict({"best": None})


@pytest.mark.parametrize("overrides, message", [
    ({"optimization": {"lr": [-0.01]}}, "optimization.lr must be >= 0"),
    ({"optimization": {"lr": [0.01, 0.02]}}, "one base lr"),
    ({"lr_scheduler": {"lr_hours": 100}}, "needs seconds_per_update > 0"),
    ({"lr_scheduler": {"warmup_start": -0.5}}, r"warmup_start must be in \[0, 1\]"),
])
def test_eden_bad_configuration_is_an_error(overrides, message):
    cfg = fairseq_cfg(lr_scheduler=overrides.get("lr_scheduler"), optimization=overrides.get("optimization"))
    optimizer = optim.build_optimizer(fairseq_cfg().optimizer, tiny_params())
    with pytest.raises(ValueError, match=message):
        build_lr_scheduler(cfg.lr_scheduler, optimizer)


def test_negative_lr_is_an_error_for_the_optimizer():
    with pytest.raises(ValueError, match="lr must be >= 0"):
        build(tiny_params(), optimization={"lr": [-0.01]})


def test_warmup_longer_than_training_from_zero_warns(caplog):
    with caplog.at_level(logging.WARNING):
        build(tiny_params(), lr_scheduler={"warmup_batches": 5000, "warmup_start": 0.0},
              optimization={"max_update": 1000})
    assert "warmup_batches=5000 is longer than optimization.max_update=1000" in caplog.text


def test_fairseq_amp_optimizer_wraps_scaled_adam():
    """fairseq's AMPOptimizer around scaled_adam. On CPU torch disables the CUDA GradScaler, so this
    checks the wiring (build, backward, clip_grad_norm, step through the scaler), not fp16 arithmetic."""
    cfg = fairseq_cfg(common={"amp": True}, lr_scheduler={"warmup_batches": 0})
    params = tiny_params()
    before = [p.detach().clone() for p in params]
    amp_optimizer = optim.AMPOptimizer.build_optimizer(cfg, params)
    build_lr_scheduler(cfg.lr_scheduler, amp_optimizer).step_update(0)
    amp_optimizer.backward(sum((p**2).sum() for p in params))
    amp_optimizer.clip_grad_norm(0.0)
    amp_optimizer.step()
    assert all(p.norm() < b.norm() for p, b in zip(params, before))
