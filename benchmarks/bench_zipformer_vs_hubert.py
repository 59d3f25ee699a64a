#!/usr/bin/env python
"""Training-step speed and peak memory: Zipformer Base (``zipformer_ssl``) vs stock fairseq HuBERT Base.

Both systems get the same batch (4 x 10 s of random audio by default, 500-cluster labels as
dictionary indices, one pinned span mask at mask_prob 0.8), fp32, train mode, and run forward +
backward of their pre-training loss: ``zipformer_ssl`` with ``k2ssl_masked_prediction``, stock
``hubert`` with fairseq's ``hubert`` criterion (loss_weights [10] for both). HuBERT uses the model
settings of fairseq's ``hubert_base_librispeech.yaml`` (final_dim 256, untied projection, dropouts
0.1, feature_grad_mult 0.1) with layerdrop off so that every run does the same work; Zipformer uses
``config/pretrain/zipformer_base.yaml`` with its schedules at batch count 0 (the most dropout).

Each measurement runs in a fresh subprocess, so each peak is that system's own. The systems are
interleaved (``--repeats`` rounds of Zipformer then HuBERT) and each record keeps its fastest
round, which is the least disturbed by other load on the machine. Memory on CPU:
``peak_memory_bytes`` is the process's resident high-water mark (``ru_maxrss``, model and batch
included); ``step_memory_bytes`` is that peak minus the resident size just before the step, i.e.
what forward + backward added (activations, gradients, temporaries).

    python benchmarks/bench_zipformer_vs_hubert.py --output benchmarks/results/zipformer_vs_hubert_cpu.json
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
from types import SimpleNamespace
from typing import Dict, List

import numpy as np
import psutil
import torch
from k2ssl_fairseq.benchmark import git_commit

SYSTEMS = ("zipformer_ssl", "hubert")
NUM_CLUSTERS = 500
SAMPLE_RATE = 16000
REPO = Path(__file__).resolve().parents[1]


def label_dictionary():
    from fairseq.data.dictionary import Dictionary

    dictionary = Dictionary()
    for k in range(NUM_CLUSTERS):
        dictionary.add_symbol(str(k))
    return dictionary


def build(system: str):
    """(model, criterion) for one system, weights from seed 0."""
    from omegaconf import OmegaConf

    import k2ssl_fairseq  # noqa: F401
    from k2ssl_fairseq.criterions.masked_prediction import MaskedPredictionCriterion

    dictionary = label_dictionary()
    torch.manual_seed(0)
    if system == "zipformer_ssl":
        from k2ssl_fairseq.models.zipformer_ssl import ZipformerSslConfig, ZipformerSslModel

        preset = OmegaConf.load(REPO / "config" / "pretrain" / "zipformer_base.yaml").model
        cfg = ZipformerSslConfig(label_rate=50.0, sample_rate=SAMPLE_RATE,
                                 **{k: v for k, v in preset.items() if k != "_name"})
        model = ZipformerSslModel(OmegaConf.structured(cfg), [len(dictionary)])
        criterion = MaskedPredictionCriterion(SimpleNamespace(), 1.0, 0.0, [10.0], [])
        model.set_num_updates(0)
        return model, criterion
    from fairseq.criterions.hubert_criterion import HubertCriterion
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    cfg = HubertConfig(label_rate=50, final_dim=256, untie_final_proj=True, mask_prob=0.8, feature_grad_mult=0.1,
                       dropout_input=0.1, dropout_features=0.1, dropout=0.1, attention_dropout=0.1,
                       activation_dropout=0.0, encoder_layerdrop=0.0, extractor_mode="default")
    model = HubertModel(cfg, HubertPretrainingConfig(label_rate=50, sample_rate=SAMPLE_RATE), [dictionary])
    return model, HubertCriterion(SimpleNamespace(), 1.0, 0.0, [10.0], [])


def run_one(system: str, batch: int, seconds: float, threads: int) -> Dict[str, object]:
    """One timed forward + backward of ``system``; returns its benchmark record."""
    from k2ssl_fairseq.data.frames import conv_frames
    from k2ssl_fairseq.data.masking import compute_span_mask

    torch.set_num_threads(threads)
    model, criterion = build(system)
    model.train()
    rng = np.random.default_rng(0)
    samples = int(seconds * SAMPLE_RATE)
    frames = conv_frames(samples)
    source = torch.from_numpy(rng.standard_normal((batch, samples)).astype(np.float32))
    mask = torch.from_numpy(compute_span_mask(np.full(batch, frames), frames, 0.8, 10, rng))
    sample = {"id": torch.arange(batch),
              "net_input": {"source": source, "padding_mask": torch.zeros_like(source, dtype=torch.bool)},
              "target_list": [torch.from_numpy(rng.integers(4, 4 + NUM_CLUSTERS, (batch, frames)))]}
    if system == "zipformer_ssl":
        sample["net_input"]["mask_indices"] = mask
    else:  # stock HuBERT draws its own masks; pin them to the same ones
        model.apply_mask = lambda x, padding_mask, target_list: (
            torch.where(mask[..., None], model.mask_emb.to(x.dtype), x), mask)
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    loss, sample_size, _ = criterion(model, sample)
    loss.backward()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "system": system, "size": "base", "device": "cpu", "batch_seconds": batch * seconds,
        "audio_seconds_per_second": batch * seconds / elapsed, "peak_memory_bytes": peak,
        "step_memory_bytes": peak - before, "data_wait_fraction": 0.0, "crop_waste_fraction": 0.0,
        "padding_fraction": 0.0, "loss_curve": [float(loss.detach()) / sample_size], "step_seconds": elapsed,
        "masked_frames": int(sample_size), "threads": threads,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def measure(system: str, args: argparse.Namespace) -> Dict[str, object]:
    proc = subprocess.run([sys.executable, __file__, "--run-one", system, "--batch", str(args.batch),
                           "--seconds", str(args.seconds), "--threads", str(args.threads)],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{system} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="utterances per batch")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per utterance")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; the fastest is kept")
    parser.add_argument("--output", type=Path, help="JSON file to write (default: print only)")
    parser.add_argument("--run-one", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        print(json.dumps(run_one(args.run_one, args.batch, args.seconds, args.threads)))
        return 0

    rounds: Dict[str, List[Dict[str, object]]] = {s: [] for s in SYSTEMS}
    for _ in range(args.repeats):
        for system in SYSTEMS:
            rounds[system].append(measure(system, args))
            print(json.dumps(rounds[system][-1]), flush=True)
    records = []
    for system in SYSTEMS:
        best = min(rounds[system], key=lambda r: r["step_seconds"])
        best["step_seconds_all_rounds"] = [r["step_seconds"] for r in rounds[system]]
        best["load_average"] = list(psutil.getloadavg())
        records.append(best)
    zipformer, hubert = records
    zipformer["speedup_vs_hubert"] = zipformer["audio_seconds_per_second"] / hubert["audio_seconds_per_second"]
    zipformer["peak_memory_vs_hubert"] = zipformer["peak_memory_bytes"] / hubert["peak_memory_bytes"]
    zipformer["step_memory_vs_hubert"] = zipformer["step_memory_bytes"] / hubert["step_memory_bytes"]
    zipformer["targets"] = {"speedup_vs_hubert": ">= 3.6", "peak_memory_vs_hubert": "<= 1/3"}
    for record in records:
        record.update({
            "command": " ".join(["python", "benchmarks/bench_zipformer_vs_hubert.py", *sys.argv[1:]]),
            "git_commit": git_commit(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {psutil.cpu_count()} CPUs "
                       f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}",
        })
    print(json.dumps({k: zipformer[k] for k in ("speedup_vs_hubert", "peak_memory_vs_hubert", "step_memory_vs_hubert")}))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
