"""Learn seeded faiss k-means centroids from a split's feature shards (sampled through memmaps).

Example:
    k2ssl-learn-kmeans --feat-dir feats --split train --nshard 4 \\
        --n-clusters 100 --max-points 1000000 --seed 0 --km-path km100.npy [--sklearn-model km100.joblib]
"""
import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from . import quiet_library_output
from .label_options import add_shard_arguments, run_reporting_errors


def _run(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shard_arguments(parser, "split to learn from (normally train)")
    parser.add_argument("--n-clusters", type=int, required=True, help="k")
    parser.add_argument("--km-path", type=Path, required=True, help="output centroids, (cluster, feature) .npy")
    parser.add_argument("--max-points", type=int, default=1_000_000,
                        help="frames sampled uniformly for training (bounds memory); <= 0 uses every frame")
    parser.add_argument("--seed", type=int, default=0, help="seeds both the frame sample and faiss")
    parser.add_argument("--iterations", type=int, default=100, help="Lloyd iterations")
    parser.add_argument("--redo", type=int, default=1, help="runs from different seeds; the best is kept")
    parser.add_argument("--sklearn-model", type=Path,
                        help="also save a joblib sklearn KMeans with these centres (for fairseq's dump_km_label.py)")
    args = parser.parse_args(argv)
    quiet_library_output()
    from k2ssl_fairseq.labels import (
        export_sklearn_model,
        learn_kmeans,
        open_feature_shards,
        sample_frames,
        save_centroids,
    )
    started = time.perf_counter()
    shards = open_feature_shards(args.feat_dir, args.split, args.nshard)
    points = sample_frames(shards, args.max_points if args.max_points > 0 else None, args.seed)
    print(f"sampled {points.shape[0]} of {sum(s.features.shape[0] for s in shards)} frames ({points.shape[1]}-d)")
    result = learn_kmeans(points, args.n_clusters, seed=args.seed, num_iterations=args.iterations,
                          num_redo=args.redo, verbose=True)
    save_centroids(result.centroids, args.km_path)
    if args.sklearn_model:
        export_sklearn_model(result.centroids, args.sklearn_model)
    print(f"wrote {args.km_path}: inertia {result.inertia:.6g}, {time.perf_counter() - started:.1f} s")


def main(argv: Optional[List[str]] = None) -> int:
    """Exit status 1 with one ``error:`` line on bad input."""
    return run_reporting_errors(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
