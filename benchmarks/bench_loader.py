#!/usr/bin/env python3
"""Data loader benchmark: ``k2ssl_pretraining`` vs stock ``hubert_pretraining`` at equal audio budget.

For each corpus (the synthetic corpus of ``k2ssl_fairseq.data.synthetic`` and a synthetic corpus with a
LibriSpeech-like length distribution) and each loader (0 and 2 DataLoader workers), one training
epoch is iterated through fairseq's ``EpochBatchIterator`` with the same nominal budget per batch
(stock: ``dataset.max_tokens``; ours: the same number as ``max_duration`` seconds) and the same
``pad_audio=false``, ``random_crop=true``, ``max_sample_size`` and ``min_sample_size``. Measured:
audio cropped away (share of the batches' utterance audio never fed), padding, audio seconds fed per
batch, throughput (audio seconds fed per wall second, including worker start-up), peak memory (main
process plus the largest worker, ``ru_maxrss``). Each measurement runs in its own process. A third,
lengths-only comparison plans one epoch of a LibriSpeech-sized length list (no audio) to compare crop
waste and audio per batch where the corpus is too big to read here.

    python benchmarks/bench_loader.py --out benchmarks/results/bench_loader.json
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from k2ssl_fairseq.bench.common import provenance, run_json_worker, write_json

SAMPLE_RATE = 16000
MAX_SAMPLE_SIZE = 250_000  # HuBERT base yaml
MIN_SAMPLE_SIZE = 8_000


def librispeech_like_seconds(count: int, rng: np.random.Generator) -> np.ndarray:
    """LibriSpeech train-style durations: most utterances 10-16.5 s, a tail down to 1.5 s, max 24.5 s."""
    long_part = rng.normal(14.5, 1.6, count)
    short_part = rng.uniform(1.5, 12.0, count)
    return np.clip(np.where(rng.random(count) < 0.75, long_part, short_part), 1.5, 24.5)


def make_librispeech_like_corpus(root: Path, count: int, seed: int = 0) -> Path:
    """Noise audio (PCM16) with LibriSpeech-like lengths, 50 Hz random k-means labels, ``dict.km.txt``."""
    import soundfile as sf

    from k2ssl_fairseq.data.frames import conv_frames

    root = root.resolve()
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tsv, km = [str(root)], []
    for i, seconds in enumerate(librispeech_like_seconds(count, rng)):
        samples = int(seconds * SAMPLE_RATE)
        name = f"wav/utt{i:05d}.wav"
        sf.write(root / name, (0.1 * rng.standard_normal(samples)).astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        tsv.append(f"{name}\t{samples}")
        km.append(" ".join(map(str, rng.integers(0, 100, conv_frames(samples)))))
    (root / "train.tsv").write_text("\n".join(tsv) + "\n")
    (root / "train.km").write_text("\n".join(km) + "\n")
    (root / "dict.km.txt").write_text("".join(f"{k} 1\n" for k in range(100)))
    return root


def measure(system: str, corpus: Path, workers: int, budget_seconds: float) -> Dict[str, Any]:
    """One epoch of one loader; runs in a fresh process."""
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask

    import k2ssl_fairseq  # noqa: F401  (registers k2ssl_pretraining)
    from k2ssl_fairseq.tasks.k2ssl_pretraining import K2sslPretrainingConfig, K2sslPretrainingTask

    common = dict(data=str(corpus), label_dir=str(corpus), labels=["km"], label_rate=50.0, pad_audio=False,
                  random_crop=True, max_sample_size=MAX_SAMPLE_SIZE, min_sample_size=MIN_SAMPLE_SIZE)
    if system == "k2ssl_pretraining":
        task = K2sslPretrainingTask.setup_task(K2sslPretrainingConfig(**common))
    else:
        task = HubertPretrainingTask.setup_task(HubertPretrainingConfig(**common))
    started = time.perf_counter()
    task.load_dataset("train")
    dataset = task.dataset("train")
    setup_seconds = time.perf_counter() - started
    sizes = dataset.index.num_samples if system == "k2ssl_pretraining" else np.asarray(dataset.sizes)

    started = time.perf_counter()
    epoch_itr = task.get_batch_iterator(dataset, max_tokens=int(budget_seconds * SAMPLE_RATE), seed=1,
                                        num_workers=workers, required_batch_size_multiple=1)
    fed = whole = tensor = batches = 0
    for batch in epoch_itr.next_epoch_itr(shuffle=True):
        source = batch["net_input"]["source"]
        padding = batch["net_input"]["padding_mask"]
        fed += source.numel() - (int(padding.sum()) if padding is not None else 0)
        tensor += source.numel()
        whole += int(sizes[batch["id"].numpy()].sum())
        batches += 1
    epoch_seconds = time.perf_counter() - started
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {
        "system": system, "workers": workers, "utterances": int(len(sizes)),
        "corpus_audio_seconds": float(sizes.sum() / SAMPLE_RATE), "num_batches": batches,
        "budget_seconds": budget_seconds, "batch_seconds": fed / SAMPLE_RATE / batches,
        "audio_seconds_per_second": fed / SAMPLE_RATE / epoch_seconds, "epoch_seconds": epoch_seconds,
        "setup_seconds": setup_seconds, "crop_waste_fraction": 1 - fed / whole,
        "padding_fraction": 1 - fed / tensor, "audio_fed_seconds": fed / SAMPLE_RATE,
        "peak_memory_bytes": own + workers_peak, "main_peak_rss_bytes": own, "worker_peak_rss_bytes": workers_peak,
        "data_wait_fraction": None, "loss_curve": None, "device": "cpu",
    }


def plan_statistics(lengths: np.ndarray, budget_seconds: float, world_size: int = 1) -> List[Dict[str, Any]]:
    """Crop waste and audio per batch of one epoch from the lengths alone (no audio read), for
    corpora too large to read here. Stock: ``HubertDataset.ordered_indices`` (size-sorted) batched by
    fairseq's ``batch_by_size`` on uncropped sizes, each batch cropped to its shortest member (capped
    at ``max_sample_size``), as its collater does. Ours: :func:`plan_epoch`."""
    from fairseq.data import data_utils

    from k2ssl_fairseq.data.bucketing import BatchingSettings, plan_epoch

    kept = lengths[lengths >= MIN_SAMPLE_SIZE]
    budget = int(budget_seconds * SAMPLE_RATE)
    rng = np.random.default_rng(1)
    indices = np.lexsort([rng.permutation(len(kept)), kept])[::-1]
    stock = data_utils.batch_by_size(indices, lambda i: kept[i], max_tokens=budget)
    stock_fed = sum(len(b) * min(int(kept[b].min()), MAX_SAMPLE_SIZE) for b in stock)
    plan = plan_epoch(kept, BatchingSettings(max_duration=budget_seconds, max_sample_size=MAX_SAMPLE_SIZE),
                      seed=1, epoch=1, num_shards=world_size)
    ours_fed = int(plan.num_samples.sum())
    common = {"utterances": int(len(kept)), "corpus_audio_seconds": float(kept.sum() / SAMPLE_RATE),
              "budget_seconds": budget_seconds, "workers": None, "audio_seconds_per_second": None,
              "peak_memory_bytes": None, "padding_fraction": 0.0, "data_wait_fraction": None, "loss_curve": None,
              "device": "cpu"}
    return [
        {"system": "hubert_pretraining", **common, "num_batches": len(stock),
         "batch_seconds": stock_fed / SAMPLE_RATE / len(stock), "crop_waste_fraction": 1 - stock_fed / kept.sum()},
        {"system": "k2ssl_pretraining", **common, "num_batches": len(plan),
         "batch_seconds": ours_fed / SAMPLE_RATE / len(plan), "crop_waste_fraction": 1 - ours_fed / kept.sum()},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_loader.json"))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/k2ssl_bench_loader"))
    parser.add_argument("--tiny-utterances", type=int, default=120)
    parser.add_argument("--librispeech-utterances", type=int, default=160)
    parser.add_argument("--lengths-only-utterances", type=int, default=28539,
                        help="size of the lengths-only comparison (LibriSpeech train-clean-100 has 28,539)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="an extra existing corpus (train.tsv, train.km, dict.km.txt), e.g. the demo corpus")
    parser.add_argument("--measure", nargs=4, metavar=("SYSTEM", "CORPUS", "WORKERS", "BUDGET"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    from k2ssl_fairseq.data.synthetic import make_tiny_corpus  # after parsing: it imports torch
    if args.measure:
        system, corpus, workers, budget = args.measure
        print(json.dumps(measure(system, Path(corpus), int(workers), float(budget))))
        return

    corpora = {
        "tiny": (make_tiny_corpus(args.work_dir / "tiny", splits={"train": args.tiny_utterances},
                                  min_seconds=1.0, max_seconds=5.0), 16.0),
        "librispeech_like": (make_librispeech_like_corpus(args.work_dir / "librispeech_like",
                                                          args.librispeech_utterances), 87.5),
    }
    if args.corpus:
        corpora["extra"] = (args.corpus.resolve(), 16.0)
    records: List[Dict[str, Any]] = []
    for name, (corpus, budget) in corpora.items():
        for workers in (0, 2):
            for system in ("hubert_pretraining", "k2ssl_pretraining"):
                record = run_json_worker([sys.executable, __file__, "--measure", system, corpus, workers, budget])
                record["size"] = name
                records.append(record)
                print(f"{name:17s} workers={workers} {system:19s} crop_waste={record['crop_waste_fraction']:.3f} "
                      f"batch_s={record['batch_seconds']:.1f} audio_s/s={record['audio_seconds_per_second']:.0f} "
                      f"peak_MB={record['peak_memory_bytes'] / 2**20:.0f}", flush=True)
    lengths = (librispeech_like_seconds(args.lengths_only_utterances, np.random.default_rng(1)) * SAMPLE_RATE)
    for record in plan_statistics(lengths.astype(np.int64), 87.5):
        record["size"] = f"librispeech_like_lengths_{args.lengths_only_utterances}"
        records.append(record)
        print(f"{record['size']} {record['system']:19s} crop_waste={record['crop_waste_fraction']:.3f} "
              f"batch_s={record['batch_seconds']:.1f} batches={record['num_batches']}", flush=True)
    ratios = {}
    stock, ours = records[-2:]
    ratios[stock["size"]] = {"crop_waste_stock": stock["crop_waste_fraction"],
                             "crop_waste_ours": ours["crop_waste_fraction"],
                             "audio_per_batch_ratio": ours["batch_seconds"] / stock["batch_seconds"]}
    for name in corpora:
        for workers in (0, 2):
            stock, ours = (next(r for r in records if r["size"] == name and r["workers"] == workers
                                and r["system"] == s) for s in ("hubert_pretraining", "k2ssl_pretraining"))
            ratios[f"{name}/workers={workers}"] = {
                "throughput_ratio": ours["audio_seconds_per_second"] / stock["audio_seconds_per_second"],
                "crop_waste_stock": stock["crop_waste_fraction"], "crop_waste_ours": ours["crop_waste_fraction"],
                "audio_per_batch_ratio": ours["batch_seconds"] / stock["batch_seconds"],
                "memory_ratio": ours["peak_memory_bytes"] / stock["peak_memory_bytes"],
            }
    for key, value in ratios.items():
        print(key, " ".join(f"{k}={v:.3f}" for k, v in value.items()))
    stamp = provenance()
    for record in records:
        record.update(stamp)
    write_json(args.out, {"records": records, "ratios": ratios, **stamp})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
