#!/usr/bin/env python
"""Run the *original* k2SSL Zipformer SSL model (icefall's code) to make or re-make a golden case.

Runs icefall's own ``hubert_ce.HubertModel`` (eval mode, float32, no_grad) on a waveform and stores
its weights, the input and its outputs (CNN, encoder input, every stack, encoder, logits) in
``<out>/<name>.npz`` with the config in ``<out>/<name>.json``. It needs a checkout of k2-fsa/icefall
(not part of this repository; the golden files come from commit 36e0420c7e3e): pass ``--icefall`` the
folder holding ``egs/librispeech/SSL/zipformer`` and ``egs/librispeech/ASR`` (a plain ``git clone``;
the recipe's files are symlinks into the ASR recipes). icefall's ``scaling.py`` imports ``k2`` for its
training-time Swoosh kernels and ``icefall.utils`` for ``torch_autocast``; the eval-mode forward
calls neither k2 function, so both are stood in by modules whose k2 functions raise if called.

A new case, its weights made from a seed (constructor, then ``_perturb_constants``):

    python tests/golden/make_icefall_case.py --icefall $ICEFALL --name per_stack_heads --out tests/golden

A stored case re-run: its stored weights and input through icefall's model; prints, per output, the
largest difference from the stored one (``--recompute`` reads the case as the tests do):

    python tests/golden/make_icefall_case.py --icefall $ICEFALL --recompute zipformer_ssl_tiny_case1 --out $WORK

A stored state-dict listing checked: icefall's model built from the listing's config, its entries
(key, shape, dtype, in order) and parameter count compared with the listing:

    python tests/golden/make_icefall_case.py --icefall $ICEFALL --listing base

Cases made here:
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
from typing import Dict, Tuple

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from helpers import ZIPFORMER_GOLDEN_TOLERANCE, array_digest, golden_arrays  # noqa: E402

BASE_CONFIG = HERE / "zipformer_ssl_tiny_case1.json"

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


def seeded_case(hubert_model: type, name: str) -> Tuple[torch.nn.Module, np.ndarray, dict]:
    """A new case: the model built from ``SEED``, its constants perturbed, and a two-tone waveform."""
    config = {**json.loads(BASE_CONFIG.read_text())["config"], **CASES[name]}
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    random.seed(SEED)
    model = hubert_model(argparse.Namespace(**config))
    rng = np.random.default_rng(SEED)
    _perturb_constants(model, rng)
    t = np.arange(24000) / 16000
    wav = np.stack([0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1375 * t),
                    0.25 * np.sin(2 * np.pi * 330 * t) + 0.15 * np.sin(2 * np.pi * 2100 * t)])
    wav = (wav * np.hanning(24000) + 0.02 * rng.standard_normal(wav.shape)).astype(np.float32)
    return model, wav, {"construction_seed": SEED, "config": config}


def stored_case(hubert_model: type, name: str) -> Tuple[torch.nn.Module, np.ndarray, dict]:
    """A stored case: the model built from its JSON config with its stored weights, and its input."""
    config = json.loads((HERE / f"{name}.json").read_text())["config"]
    arrays = golden_arrays(name, HERE)
    model = hubert_model(argparse.Namespace(**config))
    model.load_state_dict({k[len("param/"):]: torch.from_numpy(v) for k, v in arrays.items()
                           if k.startswith("param/")}, strict=True)
    return model, arrays["input/wav"], {"recomputed_from": name, "config": config}


def run_model(model: torch.nn.Module, wav: np.ndarray) -> Dict[str, np.ndarray]:
    """The model's weights, the input and every output the golden tests compare."""
    model.eval()
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
    return arrays


def report_differences(arrays: Dict[str, np.ndarray], stored: Dict[str, np.ndarray]) -> bool:
    """Print each output's max |diff| / max |stored|; True if all are within the tests' tolerance."""
    within = True
    for key in sorted(k for k in stored if k.startswith("out/")):
        error = float(np.abs(arrays[key] - stored[key]).max() / np.abs(stored[key]).max())
        within &= error <= ZIPFORMER_GOLDEN_TOLERANCE
        print(f"{key}: {'bitwise identical' if error == 0 else f'max |diff| / max |stored| = {error:.2e}'}")
    return within


def check_listing(hubert_model: type, size: str) -> bool:
    """Build icefall's model from a stored state-dict listing's config; print and compare its keys,
    shapes, dtypes and parameter count with the listing."""
    listing = json.loads((HERE / f"zipformer_ssl_{size}_state_dict.json").read_text())
    model = hubert_model(argparse.Namespace(**listing["config"]))
    built = [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    stored = [(e["key"], e["shape"], e["dtype"]) for e in listing["state_dict"]]
    total = sum(p.numel() for p in model.parameters())
    print(f"{size}: {len(built)} state_dict entries ({len(stored)} listed), {total:,} parameters "
          f"({listing['total_params']:,} listed), entries {'identical' if built == stored else 'DIFFER'}")
    return built == stored and total == listing["total_params"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--icefall", type=Path, required=True, help="icefall checkout")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--name", choices=sorted(CASES), help="make this case from its seed")
    which.add_argument("--recompute", metavar="CASE", help="re-run a case stored beside this script")
    which.add_argument("--listing", choices=("base", "large"), help="check a stored state-dict listing")
    parser.add_argument("--out", type=Path, help="folder to write <case>.npz and <case>.json to")
    args = parser.parse_args()
    if args.out is None and not args.listing:
        parser.error("--name and --recompute write a case: give --out")
    ssl_dir = args.icefall / "egs" / "librispeech" / "SSL" / "zipformer"
    sys.path[:0] = [str(ssl_dir), str(args.icefall / "egs" / "librispeech" / "ASR" / "zipformer")]
    _stand_ins()
    from hubert_ce import HubertModel  # icefall's, from the checkout

    if args.listing:
        sys.exit(0 if check_listing(HubertModel, args.listing) else f"{args.listing}: the listing differs")
    name = args.name or args.recompute
    model, wav, meta = (seeded_case if args.name else stored_case)(HubertModel, name)
    arrays = run_model(model, wav)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / f"{name}.npz", **arrays)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.icefall, capture_output=True, text=True).stdout
    (args.out / f"{name}.json").write_text(json.dumps({
        "case": name, "icefall_commit": commit.strip() or "unknown",
        "model": "icefall egs/librispeech/SSL/zipformer hubert_ce.HubertModel", **meta,
        "num_params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "shapes": {k: list(v.shape) for k, v in arrays.items() if not k.startswith("param/")},
    }, indent=2) + "\n")
    print(f"wrote {args.out / name}.npz/.json: {len(arrays)} arrays, array digest {array_digest(arrays)}")
    if args.recompute and not report_differences(arrays, golden_arrays(name, HERE)):
        sys.exit(f"{name}: icefall's outputs differ from the stored ones by more than the tests' tolerance")


if __name__ == "__main__":
    main()
