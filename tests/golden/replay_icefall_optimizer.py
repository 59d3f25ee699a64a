#!/usr/bin/env python
"""Re-run the ScaledAdam + Eden golden case with the *original* optimizer (icefall's ``optim.py``).

Follows ``scaled_adam_case1.json``'s call sequence (its README section B) from the stored initial
parameters and gradients, and prints, for what icefall's optimizer exposes, the largest difference
from the stored trajectory: every parameter after every step, the group lr, the clipping factor and
the clipping threshold. (The stored optimizer state and gradient norms were recorded by the
original harness from inside the optimizer; they are not re-derived here.) It needs a checkout of
k2-fsa/icefall (the golden files come from commit 36e0420c7e3e); ``optim.py`` imports
``lhotse.utils.fix_random_seed``, which ScaledAdam and Eden never call, so a stand-in that raises is
used when lhotse is not installed.

    python tests/golden/replay_icefall_optimizer.py --icefall $ICEFALL
"""
from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from helpers import SCALED_ADAM_GOLDEN_TOLERANCE, golden_arrays  # noqa: E402

CASE = "scaled_adam_case1"


def _import_icefall_optim(icefall: Path) -> types.ModuleType:
    try:
        import lhotse.utils  # noqa: F401
    except ImportError:
        def refuse(*args, **kwargs):
            raise RuntimeError("lhotse is not available: ScaledAdam and Eden must not call it")
        lhotse, utils = types.ModuleType("lhotse"), types.ModuleType("lhotse.utils")
        utils.fix_random_seed = refuse
        lhotse.utils = utils
        sys.modules.update({"lhotse": lhotse, "lhotse.utils": utils})
    sys.path.insert(0, str(icefall / "egs" / "librispeech" / "ASR" / "zipformer"))
    import optim  # icefall's, from the checkout
    return optim


def replay(optim: types.ModuleType, meta: dict, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The stored call sequence through icefall's ScaledAdam and Eden; the per-step trajectory."""
    names: List[str] = meta["param_names_in_group_order"]
    params = {n: torch.nn.Parameter(torch.from_numpy(np.array(arrays[f"init/{n}"]))) for n in names}
    hyper, sched = meta["optimizer_hyperparameters"], meta["scheduler_hyperparameters"]
    optimizer = optim.ScaledAdam([{"named_params": [(n, params[n]) for n in names], "lr": sched["base_lr"]}],
                                 lr=sched["base_lr"], clipping_scale=hyper["clipping_scale"])
    scheduler = optim.Eden(optimizer, sched["lr_batches"], sched["lr_epochs"], sched["warmup_batches"],
                           sched["warmup_start"])
    clipping = {"scale": [], "threshold": []}
    get_clipping_scale = optimizer._get_clipping_scale

    def recording_clipping_scale(group, tuples):  # not called on the first step, which never clips
        scale = get_clipping_scale(group, tuples)
        clipping["scale"][-1] = scale
        clipping["threshold"][-1] = float(tuples[0][1].get("model_norm_threshold", float("nan")))
        return scale

    optimizer._get_clipping_scale = recording_clipping_scale
    trajectory: Dict[str, list] = {"lr": [], **{f"param/{n}": [] for n in names}}
    for k in range(1, meta["num_steps"] + 1):
        if (k - 1) % meta["steps_per_epoch"] == 0:
            scheduler.step_epoch((k - 1) // meta["steps_per_epoch"])
        for n in names:
            params[n].grad = (torch.from_numpy(np.array(arrays[f"grad/{n}"][k - 1]))
                              if arrays[f"grad_present/{n}"][k - 1] else None)
        scheduler.step_batch(k)
        trajectory["lr"].append(optimizer.param_groups[0]["lr"])
        clipping["scale"].append(1.0)
        clipping["threshold"].append(float("nan"))
        optimizer.step()
        optimizer.zero_grad()
        for n in names:
            trajectory[f"param/{n}"].append(params[n].detach().numpy().copy())
    trajectory["trace/clip_scale"], trajectory["trace/clip_threshold"] = clipping["scale"], clipping["threshold"]
    return {key: np.asarray(values) for key, values in trajectory.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--icefall", type=Path, required=True, help="icefall checkout")
    args = parser.parse_args()
    optim = _import_icefall_optim(args.icefall)
    meta = json.loads((HERE / f"{CASE}.json").read_text())
    stored = golden_arrays(CASE, HERE)
    within = True
    for key, ours in replay(optim, meta, stored).items():
        ref = stored[key]
        both_nan = np.isnan(ours) & np.isnan(ref)
        error = float(np.where(both_nan, 0.0, np.abs(ours - ref)).max() / np.nanmax(np.abs(ref)))
        within &= error <= SCALED_ADAM_GOLDEN_TOLERANCE
        print(f"{key}: {'bitwise identical' if error == 0 else f'max |diff| / max |stored| = {error:.2e}'}")
    if not within:
        sys.exit(f"{CASE}: icefall's trajectory differs from the stored one by more than the tests' tolerance")


if __name__ == "__main__":
    main()
