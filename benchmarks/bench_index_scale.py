#!/usr/bin/env python3
"""Scale benchmark: index and one epoch of batches for 3,000,000 utterances.

Writes a synthetic manifest with a Libri-Light-like length distribution (VAD segments of 1-60 s,
mostly 10-30 s; the audio files do not exist), then, in a fresh process, times what a run does at
start-up with ``task.validate_inputs=false``: ``k2ssl_pretraining`` loads the split (manifest parse,
length filters) and fairseq's ``EpochBatchIterator`` builds the first epoch's batches for one rank
of ``--world-size``. Reports wall time (and the process's CPU time, since the machine may be shared) and peak RSS (``ru_maxrss``, including the interpreter, torch
and fairseq) against the limits of 30 s and 2 GB.

    python benchmarks/bench_index_scale.py --out benchmarks/results/bench_index_scale.json
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from k2ssl_fairseq.bench.common import provenance, run_json_worker, write_json

SAMPLE_RATE = 16000
LIMIT_SECONDS = 30.0
LIMIT_BYTES = 2 * 10**9


def libri_light_like_seconds(count: int, rng: np.random.Generator) -> np.ndarray:
    """VAD-segmented audiobook durations: a broad mode around 18 s, a short tail, cut at 1 and 60 s."""
    main = rng.gamma(shape=6.0, scale=3.0, size=count)
    short = rng.uniform(1.0, 8.0, size=count)
    return np.clip(np.where(rng.random(count) < 0.85, main, short), 1.0, 60.0)


def write_manifest(data_dir: Path, count: int, seed: int) -> float:
    """``train.tsv`` in chunks (bounded memory); returns total hours."""
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0
    with open(data_dir / "train.tsv", "w") as tsv:
        tsv.write(f"{data_dir}/audio\n")
        for first in range(0, count, 100_000):
            samples = (libri_light_like_seconds(min(100_000, count - first), rng) * SAMPLE_RATE).astype(np.int64)
            total += int(samples.sum())
            tsv.write("".join(f"speaker{(first + i) // 1000:05d}/book/seg{first + i:08d}.flac\t{n}\n"
                              for i, n in enumerate(samples.tolist())))
    return total / SAMPLE_RATE / 3600


def measure(data_dir: Path, world_size: int, max_duration: float) -> dict:
    """Runs in a fresh process so that ``ru_maxrss`` is this measurement's alone."""
    import k2ssl_fairseq  # noqa: F401
    from k2ssl_fairseq.tasks.k2ssl_pretraining import K2sslPretrainingConfig, K2sslPretrainingTask

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cfg = K2sslPretrainingConfig(data=str(data_dir), labels=[], label_rate=50.0, max_sample_size=250_000,
                                 min_sample_size=32_000, max_duration=max_duration, validate_inputs=False)
    task = K2sslPretrainingTask.setup_task(cfg)
    cpu_started = time.process_time()
    started = time.perf_counter()
    task.load_dataset("train")
    index_seconds = time.perf_counter() - started
    epoch_itr = task.get_batch_iterator(task.dataset("train"), seed=1, num_shards=world_size, shard_id=0)
    batches = len(epoch_itr.frozen_batches)
    rank_batches = len(epoch_itr.next_epoch_itr(shuffle=True))
    total_seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"utterances_kept": len(task.dataset("train")), "index_seconds": index_seconds,
            "epoch_plan_seconds": total_seconds - index_seconds, "total_seconds": total_seconds, "cpu_seconds": cpu_seconds,
            "num_batches": batches, "batches_per_rank": rank_batches, "peak_rss_bytes": peak,
            "rss_after_imports_bytes": baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=3_000_000)
    parser.add_argument("--world-size", type=int, default=32)
    parser.add_argument("--max-duration", type=float, default=87.5, help="seconds per batch per GPU")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/k2ssl_bench_index_scale"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_index_scale.json"))
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.work_dir.resolve(), args.world_size, args.max_duration)))
        return

    hours = write_manifest(args.work_dir.resolve(), args.utterances, seed=0)
    result = run_json_worker([sys.executable, __file__, "--measure", "--work-dir", args.work_dir,
                              "--world-size", args.world_size, "--max-duration", args.max_duration])
    record = {
        "system": "k2ssl_pretraining", "size": f"{args.utterances} utterances, {hours:.0f} h (synthetic)",
        "device": "cpu", "world_size": args.world_size, "max_duration": args.max_duration, **result,
        "within_limits": result["total_seconds"] <= LIMIT_SECONDS and result["peak_rss_bytes"] <= LIMIT_BYTES,
        "limits": {"seconds": LIMIT_SECONDS, "bytes": LIMIT_BYTES},
        "batch_seconds": None, "audio_seconds_per_second": None, "peak_memory_bytes": result["peak_rss_bytes"],
        "data_wait_fraction": None, "crop_waste_fraction": None, "padding_fraction": None, "loss_curve": None,
        **provenance(),
    }
    print(f"{args.utterances} utterances ({hours:.0f} h): index {result['index_seconds']:.1f} s + epoch plan "
          f"{result['epoch_plan_seconds']:.1f} s = {result['total_seconds']:.1f} s (limit {LIMIT_SECONDS:.0f} s; "
          f"{result['cpu_seconds']:.1f} s of CPU), "
          f"peak RSS {result['peak_rss_bytes'] / 1e9:.2f} GB (limit 2 GB; {result['rss_after_imports_bytes'] / 1e9:.2f} "
          f"GB after imports), {result['num_batches']} batches, {result['batches_per_rank']} per rank")
    write_json(args.out, {"records": [record]})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
