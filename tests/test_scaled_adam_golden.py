"""ScaledAdam + Eden replay the icefall reference trajectory (tests/golden/scaled_adam_case1, its README section B).

The replay follows the recorded call sequence: ``step_epoch(epoch - 1)`` at each epoch start, then per
step set the gradients, set the lr for batch ``k`` (icefall's ``step_batch(k)``), ``optimizer.step()``.
"""
import json

import numpy as np
import pytest
import torch

from helpers import SCALED_ADAM_GOLDEN_TOLERANCE, golden_arrays, golden_dir
from k2ssl_fairseq.optim import EdenSchedule, ScaledAdam

GOLDEN = golden_dir()


@pytest.fixture(scope="module")
def golden():
    meta = json.loads((GOLDEN / "scaled_adam_case1.json").read_text())
    arrays = golden_arrays("scaled_adam_case1")
    return meta, arrays, *replay(meta, arrays)


def replay(meta, arrays):
    """Run the recorded sequence; returns per-step lr, clip factor, threshold, params and state."""
    names = meta["param_names_in_group_order"]
    params = {n: torch.nn.Parameter(torch.tensor(arrays[f"init/{n}"])) for n in names}
    hyper = meta["optimizer_hyperparameters"]
    optimizer = ScaledAdam([(n, params[n]) for n in names], lr=hyper["lr"],
                           clipping_scale=hyper["clipping_scale"])
    sched_hyper = meta["scheduler_hyperparameters"]
    schedule = EdenSchedule(sched_hyper["lr_batches"], sched_hyper["lr_epochs"],
                            sched_hyper["warmup_batches"], sched_hyper["warmup_start"])
    trace = {"lr": [], "clip": [], "threshold": [], "param": {n: [] for n in names}}
    epoch = 0
    for k in range(1, meta["num_steps"] + 1):
        if (k - 1) % meta["steps_per_epoch"] == 0:
            epoch = (k - 1) // meta["steps_per_epoch"]
        for n in names:
            params[n].grad = torch.tensor(arrays[f"grad/{n}"][k - 1])
        lr = sched_hyper["base_lr"] * schedule.factor(k, epoch)
        optimizer.param_groups[0]["lr"] = lr
        optimizer.step()
        optimizer.zero_grad()
        trace["lr"].append(lr)
        trace["clip"].append(optimizer.last_clip_factors[0])
        trace["threshold"].append(optimizer.clipping_thresholds()[0])
        for n in names:
            trace["param"][n].append(params[n].detach().numpy().copy())
    return trace, optimizer, params


def test_learning_rates_match(golden):
    meta, arrays, trace, _, _ = golden
    np.testing.assert_allclose(trace["lr"], arrays["lr"], rtol=1e-12, atol=0)


def test_parameters_match_at_every_step(golden):
    meta, arrays, trace, _, _ = golden
    for name in meta["param_names_in_group_order"]:
        ours = np.stack(trace["param"][name])
        ref = arrays[f"param/{name}"]
        for step in range(meta["num_steps"]):
            scale = max(np.abs(ref[step]).max(), 1e-12)
            rel = np.abs(ours[step] - ref[step]).max() / scale
            assert rel <= SCALED_ADAM_GOLDEN_TOLERANCE, f"{name} step {step + 1}: max |diff| / max |ref| = {rel:.2e}"


def test_clipping_matches(golden):
    meta, arrays, trace, _, _ = golden
    np.testing.assert_allclose(trace["clip"], arrays["trace/clip_scale"], rtol=1e-5)
    assert [k for k, c in enumerate(trace["clip"], 1) if c < 1] == [15, 33, 52]
    ref_thr = arrays["trace/clip_threshold"]
    ours_thr = np.array([np.nan if t is None else t for t in trace["threshold"]])
    np.testing.assert_array_equal(np.isnan(ours_thr), np.isnan(ref_thr))
    set_ = ~np.isnan(ref_thr)
    np.testing.assert_allclose(ours_thr[set_], ref_thr[set_], rtol=1e-5)


def test_final_state_matches(golden):
    """Second moments, momentum and learned-scale statistics after the last step (unstacked per tensor)."""
    meta, arrays, _, optimizer, params = golden
    names = meta["param_names_in_group_order"]
    stacks = {}
    for name in names:
        stacks.setdefault(tuple(params[name].shape), []).append(name)
    ours_by_name = {}
    for members in stacks.values():
        state = optimizer.state[params[members[0]]]
        for i, name in enumerate(members):
            ours_by_name[name] = {key: state[key][i] for key in
                                  ("exp_avg_sq", "momentum", "param_rms", "scale_exp_avg_sq") if key in state}
            if "scale_grads" in state:
                ours_by_name[name]["scale_grads"] = state["scale_grads"][:, i]
    reference_key = {"momentum": "delta"}
    for name in names:
        for key, value in ours_by_name[name].items():
            ref = arrays[f"state/{name}/{reference_key.get(key, key)}"][-1]
            np.testing.assert_allclose(value.numpy().reshape(ref.shape), ref, rtol=2e-4,
                                       atol=1e-5 * np.abs(ref).max(), err_msg=f"{name} {key}")
