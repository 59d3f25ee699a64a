"""Write a fairseq ``zipformer_ssl`` checkpoint as an icefall k2SSL checkpoint.

Example:
    k2ssl-export-icefall checkpoints/checkpoint_last.pt epoch-0.pt

The output holds ``model`` (the state dict with icefall's head-row order and its unused parameters
restored) and the architecture hyper-parameters as icefall's top-level strings, so icefall's
fine-tuning scripts can load it with ``--pretrained-dir``.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import quiet_library_output


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="fairseq zipformer_ssl checkpoint (.pt)")
    parser.add_argument("output", type=Path, help="icefall checkpoint to write")
    parser.add_argument("--trusted-checkpoint", action="store_true",
                        help="the input may hold arbitrary pickled objects; load it fully")
    args = parser.parse_args(argv)
    quiet_library_output()
    import torch

    from k2ssl_fairseq import checkpoints, registration
    registration.register()  # zipformer_ssl and the loading fix
    from k2ssl_fairseq.conversion.icefall import export_icefall_checkpoint

    try:
        checkpoint = checkpoints.load_checkpoint(args.input, trusted=args.trusted_checkpoint)
        converted = export_icefall_checkpoint(checkpoint, source=str(args.input))
    except checkpoints.CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(converted, args.output)
    print(f"wrote {args.output}: {len(converted['model'])} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
