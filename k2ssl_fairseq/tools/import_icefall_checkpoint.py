"""Wrap an icefall k2SSL (Zipformer SSL) checkpoint into a fairseq ``zipformer_ssl`` checkpoint.

Example:
    k2ssl-import-icefall exp/epoch-300.pt zipformer_base.pt --use-averaged-model

The architecture is read from the hyper-parameters icefall stores at the top level of its
checkpoints; ``--preset`` fills those it lacks from ``config/pretrain/zipformer_{base,large}.yaml``.
Load the result with ``checkpoint_utils.load_model_ensemble_and_task`` after ``import k2ssl_fairseq``.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import quiet_library_output

PRESET_DIR = Path(__file__).resolve().parent.parent / "config" / "pretrain"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="icefall checkpoint (.pt)")
    parser.add_argument("output", type=Path, help="fairseq checkpoint to write")
    parser.add_argument("--preset", choices=["base", "large"], help="architecture for hyper-parameters the checkpoint lacks")
    parser.add_argument("--use-averaged-model", action="store_true", help="convert 'model_avg' instead of 'model'")
    parser.add_argument("--trusted-checkpoint", action="store_true",
                        help="the input may hold arbitrary pickled objects (icefall stores e.g. paths); load it fully")
    args = parser.parse_args(argv)
    quiet_library_output()
    import torch
    from omegaconf import OmegaConf

    from k2ssl_fairseq import checkpoints, registration
    registration.register()  # zipformer_ssl and the loading fix
    from k2ssl_fairseq.conversion.icefall import import_icefall_checkpoint

    preset = None
    if args.preset:
        preset = OmegaConf.to_container(OmegaConf.load(PRESET_DIR / f"zipformer_{args.preset}.yaml").model)
    try:
        checkpoint = checkpoints.load_torch_file(args.input, trusted=args.trusted_checkpoint)
        converted = import_icefall_checkpoint(checkpoint, args.use_averaged_model, preset, source=str(args.input))
    except checkpoints.CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(converted, args.output)
    print(f"wrote {args.output}: {len(converted['model'])} tensors, "
          f"{sum(v.numel() for v in converted['model'].values()):,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
