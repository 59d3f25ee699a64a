#!/usr/bin/env python
"""Write ``scaled_adam_state_v1.pt``: a ScaledAdam state saved by the optimizer as it was before its
stacks became persistent and its clip factor stayed on the device (commit 8b5bba6), and where the
same optimizer took the parameters in the 12 steps after it. ``tests/test_scaled_adam.py`` loads the
state into today's optimizer and asserts it takes the same steps (bit for bit when the file is
made on the machine that runs the test; to rounding elsewhere).

    git show 8b5bba6:k2ssl_fairseq/optim/scaled_adam.py > $WORK/scaled_adam_8b5bba6.py
    python tests/data/make_scaled_adam_state.py $WORK/scaled_adam_8b5bba6.py
"""
import copy
import importlib.util
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from test_scaled_adam import make_params, set_grads  # noqa: E402


def main() -> None:
    spec = importlib.util.spec_from_file_location("old_scaled_adam", sys.argv[1])
    old = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = old  # its dataclasses look themselves up there
    spec.loader.exec_module(old)
    params = make_params()
    optimizer = old.ScaledAdam(list(params.items()), lr=0.05, clipping_scale=2.0)
    for step in range(15):
        set_grads(params, step)
        optimizer.step()
    saved = {"optimizer": copy.deepcopy(optimizer.state_dict()),  # the live state moves on below
             "params": {n: p.detach().clone() for n, p in params.items()}}
    for step in range(15, 27):  # step 17 clips heavily (set_grads scales it by 30)
        set_grads(params, step)
        optimizer.step()
    saved["params_after_12_steps"] = {n: p.detach().clone() for n, p in params.items()}
    torch.save(saved, HERE / "scaled_adam_state_v1.pt")
    print(f"wrote {HERE / 'scaled_adam_state_v1.pt'}")


if __name__ == "__main__":
    main()
