#!/usr/bin/env python
"""The wav2vec2 CNN front-end alone: fairseq's module vs ``models/conv_frontend.py``, forward + backward.

Same Base-size CNN (``[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2``, GroupNorm after the first
layer, seed-0 weights), same ``--batch`` x ``--seconds`` of random audio, fp32, the output's gradient
all ones. Each implementation runs in a fresh subprocess (its own peak RSS), ``--warmup`` untimed
steps then a timed one; the two alternate for ``--repeats`` rounds and each keeps its fastest.

    python benchmarks/bench_frontend.py --threads 2 --repeats 2 --output benchmarks/results/frontend_base_cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

from k2ssl_fairseq.bench.common import (
    current_memory_bytes,
    interleaved_rounds,
    peak_memory_bytes,
    provenance,
    write_json,
)

SYSTEMS = ("fairseq_module", "conv_frontend")
LAYERS = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


def run_one(system: str, batch: int, seconds: float, threads: int, warmup: int, device: str) -> Dict[str, object]:
    import torch
    from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel

    from k2ssl_fairseq.models.conv_frontend import conv_features

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    module = ConvFeatureExtractionModel(LAYERS).to(device)
    source = torch.randn(batch, int(seconds * 16000)).to(device)
    cuda = device == "cuda"
    before = current_memory_bytes(device)
    for _ in range(warmup + 1):
        module.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = module(source) if system == "fairseq_module" else conv_features(module, source)
        if cuda:
            torch.cuda.synchronize()
        forward = time.perf_counter() - start
        out.backward(torch.ones_like(out))
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        del out
    # CPU: the process's resident high-water mark; CUDA: the allocator's peak (tensors only)
    peak = peak_memory_bytes(device)
    return {"system": system, "batch_seconds": batch * seconds, "step_seconds": elapsed, "forward_seconds": forward,
            "peak_memory_bytes": peak, "step_memory_bytes": peak - before, "threads": threads, "warmup_steps": warmup, "device": device}


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="utterances per batch")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per utterance")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the fastest is kept")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed one")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--output", type=Path, help="JSON file to write (default: print only)")
    parser.add_argument("--run-one", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        print(json.dumps(run_one(args.run_one, args.batch, args.seconds, args.threads, args.warmup, args.device)))
        return 0
    rounds = interleaved_rounds(
        lambda system: [sys.executable, __file__, "--run-one", system, "--batch", str(args.batch),
                        "--seconds", str(args.seconds), "--threads", str(args.threads),
                        "--warmup", str(args.warmup), "--device", args.device], SYSTEMS, args.repeats, echo=False)
    stock, ours = (min(rounds[s], key=lambda r: r["step_seconds"]) for s in SYSTEMS)
    result = {
        "fairseq_module": stock, "conv_frontend": ours,
        "speed_vs_module": stock["step_seconds"] / ours["step_seconds"],
        "peak_memory_vs_module": ours["peak_memory_bytes"] / stock["peak_memory_bytes"],
        "step_memory_vs_module": ours["step_memory_bytes"] / stock["step_memory_bytes"],
        "all_rounds_step_seconds": {s: [r["step_seconds"] for r in rounds[s]] for s in SYSTEMS},
        **provenance(args.device),
    }
    print(f"conv_frontend: {result['speed_vs_module']:.2f}x speed, {result['peak_memory_vs_module']:.3f}x peak "
          f"memory, {result['step_memory_vs_module']:.3f}x step memory of fairseq's module")
    if args.output:
        write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
