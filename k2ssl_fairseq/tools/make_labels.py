"""Make k-means labels for a corpus: dump features, learn k-means on train, label every split.

Iteration 1 (MFCC, 100 clusters, labels at 100 Hz, or --label-rate 50 to align with the CNN):
    k2ssl-make-labels --data data --out labels_it1 --n-clusters 100
Iteration 2 (layer 6 of the iteration-1 model, 500 clusters, 50 Hz):
    k2ssl-make-labels --data data --out labels_it2 --n-clusters 500 \\
        --feature checkpoint --checkpoint it1/checkpoint_best.pt --layer 6 --device cuda
Then train with task.data=data task.label_dir=labels_itN task.labels=[km] model.label_rate=<printed rate>.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import quiet_library_output
from .label_options import add_feature_arguments, feature_spec_from_args, run_reporting_errors


def _run(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="corpus directory with {split}.tsv")
    parser.add_argument("--out", type=Path, required=True,
                        help="output directory: features/, kmeans.npy, {split}.km, dict.km.txt")
    parser.add_argument("--splits", nargs="+", default=["train", "valid"], help="splits to label")
    parser.add_argument("--train-split", default="train", help="split the k-means is learned on")
    parser.add_argument("--n-clusters", type=int, required=True, help="k")
    parser.add_argument("--max-points", type=int, default=1_000_000, help="frames sampled for k-means; <= 0: all")
    parser.add_argument("--seed", type=int, default=0, help="seeds the frame sample and faiss")
    parser.add_argument("--iterations", type=int, default=100, help="Lloyd iterations")
    parser.add_argument("--nshard", type=int, default=1, help="shards per split (files as fairseq names them)")
    parser.add_argument("--sklearn-model", action="store_true", help="also write kmeans.joblib for fairseq's tools")
    add_feature_arguments(parser)
    args = parser.parse_args(argv)
    quiet_library_output()
    from k2ssl_fairseq.labels import make_labels
    make_labels(args.data, args.out, feature_spec_from_args(args), args.n_clusters, splits=args.splits,
                train_split=args.train_split, max_points=args.max_points if args.max_points > 0 else None,
                seed=args.seed, nshard=args.nshard, num_iterations=args.iterations,
                export_sklearn=args.sklearn_model)


def main(argv: Optional[List[str]] = None) -> int:
    """Exit status 1 with one ``error:`` line on bad input."""
    return run_reporting_errors(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
