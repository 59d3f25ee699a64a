#!/usr/bin/env python3
"""k-means for HuBERT labels: faiss (this plugin) vs sklearn MiniBatchKMeans as fairseq configures it.

On a corpus's ``{split}.tsv`` (the demo corpus by default, see ``scripts/make_demo_corpus.py``) the
MFCC features of iteration 1 (39-d, 100 Hz) are dumped once, then each system learns k centroids in
its own subprocess, ``--runs`` times, so that its peak resident memory is its own, with the same
OpenMP/BLAS thread count (``--threads``):

* ``faiss``: ``k2ssl_fairseq.labels`` — a seeded sample of at most ``--max-points`` frames read
  through memmaps (every frame of the demo corpus), ``faiss.Kmeans`` (100 iterations, seed ``--seed``).
* ``faiss_sample_N``: the same with a sample of ``--sample-points`` frames (bounded memory and time).
* ``sklearn_minibatch_fairseq``: what ``examples/hubert/simple_kmeans/learn_kmeans.py`` does with its
  defaults (``percent -1``: every frame loaded into RAM; ``MiniBatchKMeans(init="k-means++",
  max_iter=100, batch_size=10000, tol=0, max_no_improvement=100, n_init=20, reassignment_ratio=0,
  compute_labels=False, init_size=None)``, no ``random_state``).

Both systems' centroids are scored the same way on every frame of the split: inertia (sum of squared
distances to the nearest centroid), clusters used, and the perplexity of the label distribution.
``reproducible`` says whether all runs gave identical centroids. Each run records wall and CPU
seconds (load + fit, CPU time is the fairer number on a shared machine), peak resident memory and
the resident memory before k-means started (Python, torch, fairseq imports), and the machine's
1-minute load average before and after it; runs of the systems are interleaved.
Results: one JSON record per system.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from k2ssl_fairseq.bench.common import provenance, run_json_worker, write_json

REPO = Path(__file__).resolve().parents[1]
WORKERS = ("faiss", "sklearn_minibatch_fairseq")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_worker(system: str, feat_dir: Path, split: str, n_clusters: int, seed: int, max_points: int,
               centroids_out: Path) -> None:
    """Learn centroids with one system in this process; print timing and memory as JSON."""
    from k2ssl_fairseq.labels import learn_kmeans, open_feature_shards, sample_frames

    baseline = _peak_rss_bytes()
    load_before = os.getloadavg()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    shards = open_feature_shards(feat_dir, split, 1)
    if system == "faiss":
        points = sample_frames(shards, max_points, seed)
        centroids = learn_kmeans(points, n_clusters, seed=seed, num_iterations=100).centroids
    else:
        from sklearn.cluster import MiniBatchKMeans

        points = np.concatenate([np.asarray(shard.features) for shard in shards])
        model = MiniBatchKMeans(n_clusters=n_clusters, init="k-means++", max_iter=100, batch_size=10000,
                                compute_labels=False, tol=0.0, max_no_improvement=100, init_size=None,
                                n_init=20, reassignment_ratio=0.0)
        centroids = model.fit(points).cluster_centers_.astype(np.float32)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    np.save(centroids_out, centroids)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_memory_bytes": _peak_rss_bytes(),
                      "baseline_memory_bytes": baseline, "points": int(points.shape[0]),
                      "load_average": [load_before, os.getloadavg()[0]]}))


def score(centroids: np.ndarray, features: np.ndarray, n_clusters: int) -> Dict[str, float]:
    """Inertia, clusters used and label perplexity of ``centroids`` on ``features`` ``(frame, feature)``."""
    from k2ssl_fairseq.labels import NearestCentroid

    nearest = NearestCentroid(centroids)
    labels = nearest(features)
    counts = np.bincount(labels, minlength=n_clusters)
    share = counts[counts > 0] / counts.sum()
    return {"inertia": float(nearest.squared_distances(features).sum()),
            "clusters_used": int((counts > 0).sum()),
            "cluster_perplexity": float(np.exp(-(share * np.log(share)).sum()))}


def _thread_env(threads: int) -> Dict[str, str]:
    """Environment limiting OpenMP/BLAS threads, so both systems get the same cores."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    return env


def benchmark(args: argparse.Namespace) -> List[dict]:
    """Dump features if needed, run every system ``args.runs`` times per k, score, return the records."""
    from k2ssl_fairseq.labels import KaldiFeatureExtractor, dump_features, open_feature_shards

    feat_dir = args.work_dir / "features"
    if not (feat_dir / f"{args.split}_0_1.npy").is_file():
        print(f"dumping MFCC features of {args.data / (args.split + '.tsv')} ...", flush=True)
        dump_features(args.data / f"{args.split}.tsv", KaldiFeatureExtractor("mfcc"), feat_dir)
    features = np.asarray(open_feature_shards(feat_dir, args.split, 1)[0].features)
    systems = [("faiss", "faiss", args.max_points),
               (f"faiss_sample_{args.sample_points}", "faiss", args.sample_points),
               ("sklearn_minibatch_fairseq", "sklearn_minibatch_fairseq", 0)]
    records = []
    for n_clusters in args.n_clusters:
        runs = {system: [] for system, _, _ in systems}
        centroids = {system: [] for system, _, _ in systems}
        for run in range(args.runs):  # systems interleaved, so load changes on a shared machine hit all
            for system, worker, max_points in systems:
                out = args.work_dir / f"{system}_k{n_clusters}_run{run}.npy"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--work-dir",
                       str(args.work_dir), "--split", args.split, "--n-clusters", str(n_clusters), "--seed",
                       str(args.seed), "--max-points", str(max_points), "--centroids-out", str(out)]
                runs[system].append(run_json_worker(cmd, env=_thread_env(args.threads)))
                centroids[system].append(np.load(out))
                print(f"k={n_clusters} {system} run {run}: {runs[system][-1]['seconds']:.1f} s wall, "
                      f"{runs[system][-1]['cpu_seconds']:.1f} s cpu", flush=True)
        for system, _, _ in systems:
            records.append(_record(args, system, n_clusters, features, runs[system], centroids[system]))
    return records


def _record(args: argparse.Namespace, system: str, n_clusters: int, features: np.ndarray, runs: List[dict],
            centroids: List[np.ndarray]) -> dict:
    """One JSON record: a system's runs at one k, scored on every frame."""
    scores = [score(c, features, n_clusters) for c in centroids]
    return {
        "system": system, "size": f"k={n_clusters}, {features.shape[0]} frames x {features.shape[1]}",
        "device": "cpu", "threads": args.threads, "corpus": str(args.data), "split": args.split,
        "features": "mfcc 39-d 100 Hz", "n_clusters": n_clusters, "num_frames": int(features.shape[0]),
        "feature_dim": int(features.shape[1]), "audio_hours": round(features.shape[0] / 100.0 / 3600, 4),
        "training_points": runs[0]["points"],
        "seconds": [round(r["seconds"], 3) for r in runs],
        "cpu_seconds": [round(r["cpu_seconds"], 3) for r in runs],
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in runs),
        "baseline_memory_bytes": max(r["baseline_memory_bytes"] for r in runs),
        "inertia": [s["inertia"] for s in scores],
        "mean_squared_distance": [s["inertia"] / features.shape[0] for s in scores],
        "clusters_used": [s["clusters_used"] for s in scores],
        "cluster_perplexity": [round(s["cluster_perplexity"], 3) for s in scores],
        "load_average_1min": [r["load_average"] for r in runs],
        "reproducible": all(np.array_equal(centroids[0], c) for c in centroids[1:]),
        "batch_seconds": None, "audio_seconds_per_second": None, "data_wait_fraction": None,
        "crop_waste_fraction": None, "padding_fraction": None, "loss_curve": None,
        **provenance(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="corpus directory with {split}.tsv (the demo corpus)")
    parser.add_argument("--split", default="pretrain", help="manifest whose features are clustered")
    parser.add_argument("--work-dir", type=Path, default=Path("bench_kmeans_work"), help="features and centroids")
    parser.add_argument("--n-clusters", type=int, nargs="+", default=[100], help="k values to benchmark")
    parser.add_argument("--runs", type=int, default=2, help="runs per system (reproducibility check)")
    parser.add_argument("--seed", type=int, default=0, help="faiss seed (fairseq's sklearn recipe sets none)")
    parser.add_argument("--max-points", type=int, default=1_000_000, help="faiss training sample size")
    parser.add_argument("--sample-points", type=int, default=100_000,
                        help="sample size of the second faiss system, which shows the memory bound")
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenMP/BLAS threads per system (1 keeps timings comparable on a shared machine)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "kmeans.json")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--centroids-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.work_dir / "features", args.split, args.n_clusters[0], args.seed,
                   args.max_points, args.centroids_out)
        return
    if args.data is None:
        parser.error("--data is required (build the demo corpus with scripts/make_demo_corpus.py)")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    records = benchmark(args)
    write_json(args.output, records)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
