"""Assign every frame of a feature shard to its nearest centroid; write ``.km`` (and ``dict.km.txt``).

Example (then ``cat`` is not needed: --merge writes {split}.km once all shards exist):
    k2ssl-dump-labels --feat-dir feats --split train --nshard 4 --rank 0 \\
        --km-path km100.npy --lab-dir labels --tsv-dir data --label-rate 100
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import quiet_library_output
from .label_options import add_shard_arguments, run_reporting_errors


def _run(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shard_arguments(parser, "split to label")
    parser.add_argument("--rank", type=int, default=None, help="shard to label; default: every shard")
    parser.add_argument("--km-path", type=Path, required=True, help="centroids written by learn_kmeans.py")
    parser.add_argument("--lab-dir", type=Path, required=True, help="output directory (fairseq's task.label_dir)")
    parser.add_argument("--tsv-dir", type=Path, help="directory of {split}.tsv: check frame counts against it")
    parser.add_argument("--label-rate", type=float, default=None, help="feature rate in Hz, needed with --tsv-dir")
    parser.add_argument("--merge", action="store_true", help="concatenate all shards into {split}.km afterwards")
    parser.add_argument("--batch-frames", type=int, default=100_000, help="frames searched per faiss call")
    args = parser.parse_args(argv)
    quiet_library_output()
    from k2ssl_fairseq.labels import (
        NearestCentroid,
        check_lengths_match_manifest,
        km_line_lengths,
        label_shard_path,
        load_centroids,
        merge_label_shards,
        open_feature_shard,
        write_km_dictionary,
        write_shard_labels,
    )
    if args.tsv_dir is not None and args.label_rate is None:
        parser.error("--tsv-dir needs --label-rate (50 or 100)")
    centroids = load_centroids(args.km_path)
    nearest = NearestCentroid(centroids)
    tsv = args.tsv_dir / f"{args.split}.tsv" if args.tsv_dir else None
    for rank in range(args.nshard) if args.rank is None else [args.rank]:
        shard = open_feature_shard(args.feat_dir, args.split, rank, args.nshard)
        if tsv is not None:
            check_lengths_match_manifest(shard.lengths, shard.len_path, tsv, args.label_rate, args.nshard, rank)
        km_path = write_shard_labels(shard, nearest, label_shard_path(args.lab_dir, args.split, rank, args.nshard),
                                     args.batch_frames)
        print(f"wrote {km_path}")
    write_km_dictionary(args.lab_dir, centroids.shape[0])
    if args.merge:
        merged = merge_label_shards(args.lab_dir, args.split, args.nshard)
        if tsv is not None:
            check_lengths_match_manifest(km_line_lengths(merged, centroids.shape[0]), merged, tsv, args.label_rate)
        print(f"wrote {merged}")


def main(argv: Optional[List[str]] = None) -> int:
    """Exit status 1 with one ``error:`` line on bad input."""
    return run_reporting_errors(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
