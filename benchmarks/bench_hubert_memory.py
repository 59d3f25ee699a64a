#!/usr/bin/env python
"""Peak memory and speed of one HuBERT-Base pre-training step: stock ``hubert`` vs ``k2ssl_hubert``.

Every system gets the same batch (random audio, 500-cluster labels, one pinned span mask), the same
weights seed, train mode, fp32, and runs one forward + backward of the HuBERT loss (masked CE +
10 x feature penalty) in its own subprocess, so each peak is that system's own. Peak memory on CPU is
the process's resident high-water mark (``ru_maxrss``); ``step_memory_bytes`` is that peak minus the
resident size just before the step (model and batch already built), i.e. what the step itself added.

    python benchmarks/bench_hubert_memory.py --batch 4 --seconds 6 \
        --output benchmarks/results/hubert_memory_cpu.json
"""
import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List

import numpy as np
import psutil
import torch
from k2ssl_fairseq.benchmark import git_commit

SYSTEMS = ("hubert", "k2ssl_hubert_cosine", "k2ssl_hubert_linear")
NUM_CLUSTERS = 500
SAMPLE_RATE = 16000
REPO = Path(__file__).resolve().parents[1]


def base_config(logit_mode: str):
    """HuBERT Base as in fairseq's hubert_base_librispeech.yaml, layerdrop off (same work every run)."""
    from k2ssl_fairseq.models.k2ssl_hubert import K2sslHubertConfig

    return K2sslHubertConfig(label_rate=50, final_dim=256, untie_final_proj=True, mask_prob=0.8,
                             feature_grad_mult=0.1, dropout_input=0.1, dropout_features=0.1,
                             encoder_layerdrop=0.0, logit_mode=logit_mode)


def build(system: str) -> torch.nn.Module:
    from fairseq.data.dictionary import Dictionary
    from fairseq.models.hubert.hubert import HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    from k2ssl_fairseq.models.k2ssl_hubert import K2sslHubertModel

    dictionary = Dictionary()
    for k in range(NUM_CLUSTERS):
        dictionary.add_symbol(str(k))
    task_cfg = HubertPretrainingConfig(label_rate=50)
    torch.manual_seed(0)
    if system == "hubert":
        return HubertModel(base_config("cosine"), task_cfg, [dictionary])
    return K2sslHubertModel(base_config(system.rsplit("_", 1)[1]), task_cfg, [dictionary])


def run_one(system: str, batch: int, seconds: float, threads: int) -> Dict[str, object]:
    """One timed forward+backward of ``system``; returns its benchmark record."""
    from k2ssl_fairseq.conversion.hubert import masked_forward, prediction_losses
    from k2ssl_fairseq.data.frames import conv_frames
    from k2ssl_fairseq.data.masking import compute_span_mask

    torch.set_num_threads(threads)
    model = build(system).train()
    rng = np.random.default_rng(0)
    samples = int(seconds * SAMPLE_RATE)
    audio = torch.from_numpy(rng.standard_normal((batch, samples)).astype(np.float32))
    frames = conv_frames(samples)
    targets = [torch.from_numpy(rng.integers(4, 4 + NUM_CLUSTERS, (batch, frames)))]
    mask = compute_span_mask(np.full(batch, frames), frames, 0.8, 10, rng)
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    losses = prediction_losses(model, masked_forward(model, audio, targets, mask))
    loss = losses["loss_m"] + 10.0 * losses["features_pen"] * int(mask.sum())
    loss.backward()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "system": system, "size": "base", "device": "cpu", "batch_seconds": batch * seconds,
        "audio_seconds_per_second": batch * seconds / elapsed, "peak_memory_bytes": peak,
        "step_memory_bytes": peak - before, "data_wait_fraction": None, "crop_waste_fraction": None,
        "padding_fraction": 0.0, "loss_curve": [loss.item() / int(mask.sum())],
        "step_seconds": elapsed, "masked_frames": int(mask.sum()), "threads": threads,
    }


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="utterances per batch")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per utterance")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--output", type=Path, help="JSON file to write (default: print only)")
    parser.add_argument("--run-one", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        print(json.dumps(run_one(args.run_one, args.batch, args.seconds, args.threads)))
        return 0
    records = []
    for system in args.systems:
        proc = subprocess.run([sys.executable, __file__, "--run-one", system, "--batch", str(args.batch),
                               "--seconds", str(args.seconds), "--threads", str(args.threads)],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"{system} failed:\n{proc.stderr[-3000:]}")
        records.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(records[-1]), flush=True)
    stock = next((r for r in records if r["system"] == "hubert"), None)
    for record in records:
        if stock is not None:
            record["peak_memory_vs_stock"] = record["peak_memory_bytes"] / stock["peak_memory_bytes"]
            record["step_memory_vs_stock"] = record["step_memory_bytes"] / stock["step_memory_bytes"]
        record.update({
            "command": " ".join([Path(sys.executable).name, "benchmarks/bench_hubert_memory.py", *sys.argv[1:]]),
            "git_commit": git_commit(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()} {psutil.cpu_count()} CPUs "
                       f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}",
        })
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
