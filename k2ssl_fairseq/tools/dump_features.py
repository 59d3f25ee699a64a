"""Dump one shard of a split's features as fairseq's ``{split}_{rank}_{nshard}.npy`` + ``.len``.

Example (iteration 1, MFCC at 100 Hz, shard 0 of 4):
    k2ssl-dump-features --tsv-dir data --split train --feat-dir feats --nshard 4 --rank 0
Example (iteration 2, layer 6 of a checkpoint, on a GPU):
    k2ssl-dump-features --tsv-dir data --split train --feat-dir feats \\
        --feature checkpoint --checkpoint ckpt/checkpoint_best.pt --layer 6 --device cuda
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import quiet_library_output
from .label_options import add_feature_arguments, feature_spec_from_args, run_reporting_errors


def _run(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tsv-dir", type=Path, required=True, help="directory holding {split}.tsv")
    parser.add_argument("--split", required=True, help="manifest name without .tsv")
    parser.add_argument("--feat-dir", type=Path, required=True, help="output directory")
    parser.add_argument("--nshard", type=int, default=1, help="number of shards the split is cut into")
    parser.add_argument("--rank", type=int, default=0, help="which shard to dump, 0-based")
    add_feature_arguments(parser)
    args = parser.parse_args(argv)
    quiet_library_output()
    from k2ssl_fairseq.labels import build_extractor, dump_features
    from k2ssl_fairseq.labels.pipeline import ProgressPrinter
    extractor = build_extractor(feature_spec_from_args(args))
    npy_path = dump_features(args.tsv_dir / f"{args.split}.tsv", extractor, args.feat_dir, args.nshard, args.rank,
                             progress=ProgressPrinter(f"{args.split} shard {args.rank}/{args.nshard}", print))
    print(f"wrote {npy_path} and {npy_path.with_suffix('.len')} ({extractor.frame_rate:g} Hz)")


def main(argv: Optional[List[str]] = None) -> int:
    """Exit status 1 with one ``error:`` line on bad input."""
    return run_reporting_errors(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
