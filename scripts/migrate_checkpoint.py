#!/usr/bin/env python
"""Convert a stock fairseq HuBERT pre-training checkpoint to ``k2ssl_hubert`` or back.

    python scripts/migrate_checkpoint.py IN.pt OUT.pt --to k2ssl_hubert --verify

The logic lives in ``k2ssl_fairseq.conversion.hubert``; this only parses arguments and prints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from k2ssl_fairseq import compat
from k2ssl_fairseq.conversion import hubert as conversion


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="checkpoint to convert")
    parser.add_argument("destination", type=Path, help="where to write the converted checkpoint")
    parser.add_argument("--to", required=True, choices=[conversion.PLUGIN_MODEL, conversion.STOCK_MODEL],
                        help="model the converted checkpoint is for")
    parser.add_argument("--verify", action="store_true",
                        help="run both models on the same random audio and masks and print the max "
                             "difference per layer and of the losses")
    parser.add_argument("--trusted-checkpoint", action="store_true",
                        help="fully unpickle the source (only for files you trust)")
    args = parser.parse_args(argv)
    try:
        converted, dropped = conversion.migrate_checkpoint(args.source, args.destination, args.to,
                                                           trusted=args.trusted_checkpoint)
    except (conversion.CheckpointConversionError, compat.UntrustedCheckpointError, compat.CheckpointReadError,
            FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.destination} ({args.to}); reset machine paths: {', '.join(dropped) or 'none'}")
    if args.verify:
        source = conversion.build_model(conversion.read_checkpoint(args.source, args.trusted_checkpoint),
                                        str(args.source))
        target = conversion.build_model(converted, str(args.destination))
        for key, (diff, relative) in conversion.compare_models(source, target).items():
            print(f"{key:>14}: max |diff| {diff:.3e}  relative {relative:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
