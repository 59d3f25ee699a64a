#!/usr/bin/env python
"""Write a golden case of the *original* k2SSL Zipformer SSL model, like ``shared/golden``'s tiny case.

Runs icefall's own ``hubert_ce.HubertModel`` (eval mode, float32, no_grad) on a fixed waveform and
stores its weights, the input and its outputs (CNN, encoder input, every stack, encoder, logits) in
``<name>.npz`` with the config in ``<name>.json``. It needs a checkout of k2-fsa/icefall (not part of
this repository): pass ``--icefall`` the folder holding ``egs/librispeech/SSL/zipformer`` and
``egs/librispeech/ASR/zipformer/scaling.py``. icefall's ``scaling.py`` imports ``k2`` for its
training-time Swoosh kernels and ``icefall.utils`` for ``torch_autocast``; the eval-mode forward
calls neither k2 function, so both are stood in by modules whose k2 functions raise if called.

    python tests/golden/make_icefall_case.py --icefall /path/to/icefall --name per_stack_heads

Cases:
  per_stack_heads: per-stack query/value/positional head dimensions, the widest stack in the middle
  (encoder_dim 32,48,80,64,48,32), 8-head stacks.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import types
from pathlib import Path
from typing import Dict

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
BASE_CONFIG = HERE.parents[2] / "shared" / "golden" / "zipformer_ssl_tiny_case1.json"

CASES: Dict[str, Dict[str, object]] = {
    "per_stack_heads": {
        "encoder_dim": "32,48,80,64,48,32", "num_encoder_layers": "1,1,1,1,1,1",
        "feedforward_dim": "32,48,64,64,48,32", "encoder_unmasked_dim": "32,32,48,48,48,32",
        "num_heads": "4,8,8,8,4,4", "cnn_module_kernel": "15,15,7,7,7,15",
        "downsampling_factor": "1,2,4,8,4,2", "query_head_dim": "8,4,4,4,8,8",
        "value_head_dim": "6,4,4,4,6,6", "pos_head_dim": "4,2,2,2,4,4", "pos_dim": 16,
        "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", "num_classes": [24],
    },
}
SEED = 4321


def _stand_ins() -> None:
    """``k2`` and ``icefall.utils`` as the eval-mode forward needs them (and no more)."""
    def refuse(*args, **kwargs):
        raise RuntimeError("k2 is not available: the eval-mode forward must not call it")

    k2 = types.ModuleType("k2")
    for name in ("swoosh_l", "swoosh_r", "swoosh_l_forward", "swoosh_r_forward", "swoosh_l_forward_and_deriv",
                 "swoosh_r_forward_and_deriv"):
        setattr(k2, name, refuse)
    icefall = types.ModuleType("icefall")
    utils = types.ModuleType("icefall.utils")
    utils.torch_autocast = lambda device_type="cuda", **kwargs: torch.autocast(device_type=device_type, **kwargs)
    icefall.utils = utils
    sys.modules.update({"k2": k2, "icefall": icefall, "icefall.utils": utils})


def _perturb_constants(model: torch.nn.Module, rng: np.random.Generator) -> None:
    """Give the parameters the constructor sets to constants random values, so each one matters."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            shape = tuple(param.shape)
            if name.endswith("bypass_scale"):
                value = rng.uniform(0.3, 0.9, shape)
            elif name.endswith("downsample.bias") or name == "encoder.downsample_output.bias":
                value = 0.5 * rng.standard_normal(shape)
            elif name.endswith("log_scale"):
                value = 1 + rng.uniform(-0.3, 0.3, shape)
            elif name.endswith("norm.bias") and name.startswith("encoder."):
                value = 0.1 * rng.standard_normal(shape)
            elif name in ("feature_extractor.conv_layers.0.2.weight", "layer_norm.weight"):
                value = 1 + 0.1 * rng.standard_normal(shape)
            elif name in ("feature_extractor.conv_layers.0.2.bias", "layer_norm.bias"):
                value = 0.1 * rng.standard_normal(shape)
            else:
                continue
            param.copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--icefall", type=Path, required=True, help="icefall checkout")
    parser.add_argument("--name", choices=sorted(CASES), required=True)
    args = parser.parse_args()
    ssl_dir = args.icefall / "egs" / "librispeech" / "SSL" / "zipformer"
    sys.path[:0] = [str(ssl_dir), str(args.icefall / "egs" / "librispeech" / "ASR" / "zipformer")]
    _stand_ins()
    from hubert_ce import HubertModel  # icefall's, from the checkout

    config = {**json.loads(BASE_CONFIG.read_text())["config"], **CASES[args.name]}
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    random.seed(SEED)
    model = HubertModel(argparse.Namespace(**config))
    rng = np.random.default_rng(SEED)
    _perturb_constants(model, rng)
    model.eval()

    t = np.arange(24000) / 16000
    wav = np.stack([0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1375 * t),
                    0.25 * np.sin(2 * np.pi * 330 * t) + 0.15 * np.sin(2 * np.pi * 2100 * t)])
    wav = (wav * np.hanning(24000) + 0.02 * rng.standard_normal(wav.shape)).astype(np.float32)
    source = torch.from_numpy(wav)
    stacks: Dict[int, torch.Tensor] = {}
    hooks = [stack.register_forward_hook(lambda module, inputs, output, i=i: stacks.__setitem__(i, output))
             for i, stack in enumerate(model.encoder.encoders)]
    with torch.no_grad():
        cnn = model.forward_features(source)
        res = model(source, padding_mask=torch.zeros(source.shape, dtype=torch.bool), mask=False, features_only=True)
        logits = model.final_proj(res["x"]) / model.logit_temp
    for hook in hooks:
        hook.remove()
    arrays = {f"param/{k}": v.numpy() for k, v in model.state_dict().items()}
    arrays.update({"input/wav": wav, "out/cnn": cnn.numpy(), "out/features": res["features"].numpy(),
                   "out/encoder": res["x"].numpy(), "out/logits": logits.numpy()})
    arrays.update({f"out/stack{i}": out.transpose(0, 1).numpy() for i, out in stacks.items()})
    np.savez_compressed(HERE / f"{args.name}.npz", **arrays)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.icefall, capture_output=True, text=True).stdout
    (HERE / f"{args.name}.json").write_text(json.dumps({
        "case": args.name, "icefall_commit": commit.strip() or "unknown",
        "model": "icefall egs/librispeech/SSL/zipformer hubert_ce.HubertModel", "construction_seed": SEED,
        "config": config, "num_params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__, "command": " ".join(sys.argv),
        "shapes": {k: list(v.shape) for k, v in arrays.items() if not k.startswith("param/")},
    }, indent=2) + "\n")
    print(f"wrote {HERE / args.name}.npz/.json: {len(arrays)} arrays")


if __name__ == "__main__":
    main()
