#!/usr/bin/env python
"""One pre-training step, forward + backward: speed and peak memory of each model at Base size.

Systems: stock fairseq ``hubert`` (the model settings of ``hubert_base_librispeech.yaml``: final_dim
256, untied projection, dropouts 0.1, feature_grad_mult 0.1; layerdrop off so every run does the
same work), ``k2ssl_hubert`` in cosine and linear mode (same settings), ``zipformer_ssl``
(``config/pretrain/zipformer_base.yaml``, schedules at batch count 0, i.e. the most dropout) and the
same Zipformer with the fbank front-end at 50 Hz and at 25 Hz (``zipformer_fbank50``/``25``; masks
drawn over its own frames, 50 Hz labels as for the others).
Every system gets the same batch (``--batch`` x ``--seconds`` of random audio, 500-cluster labels as
dictionary indices, one pinned span mask at mask_prob 0.8), fp32, train mode, and the masked-prediction
loss with the feature penalty (``k2ssl_masked_prediction``, loss_weights [10]; for stock ``hubert``
that criterion computes exactly the stock ``hubert`` criterion's loss).

Each measurement runs in a fresh subprocess, so each peak is that system's own: ``--warmup`` untimed
steps, then the timed one (steady state, not first-allocation costs); the systems are interleaved
for ``--repeats`` rounds and each keeps its fastest round (the least disturbed by other load). Memory on CPU: ``peak_memory_bytes`` is the process's resident high-water mark
(``ru_maxrss``, model and batch included); ``step_memory_bytes`` is that peak minus the resident size
just before the step, i.e. what forward + backward added.

``--modes eager compiled`` runs every system both ways: compiled, each encoder layer's training step
goes through ``torch.compile`` (``models/compiling.py``, as ``model.compile=true`` trains; stock
HuBERT's layers too, its fair peer); compiling happens in the warm-up steps. ``--count`` adds what
each step asks of the device (``k2ssl_fairseq.bench.dispatch``): aten ops dispatched (eager only),
kernel launches (eager and compiled, counted alike) and reads of device values, for forward +
backward and for one step of the system's own optimizer (fairseq's Adam for the HuBERTs, ScaledAdam
for the Zipformers), which is never compiled.

    python benchmarks/bench_models.py --threads 2 --repeats 2 --warmup 1 --output benchmarks/results/models_base_cpu.json
    python benchmarks/bench_models.py --modes eager compiled --count --warmup 2 \\
        --systems hubert k2ssl_hubert_cosine zipformer_ssl zipformer_fbank50 --output benchmarks/results/compile_base_cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Dict, List

import numpy as np

from k2ssl_fairseq.bench.common import (
    current_memory_bytes,
    interleaved_rounds,
    peak_memory_bytes,
    provenance,
    write_json,
)

if TYPE_CHECKING:
    import torch

SYSTEMS = ("hubert", "k2ssl_hubert_cosine", "k2ssl_hubert_linear", "zipformer_ssl", "zipformer_fbank50",
           "zipformer_fbank25")
#: The Zipformer systems' front-end settings: the waveform CNN, or the fbank front-end at 50 / 25 Hz.
ZIPFORMER_FRONTENDS = {"zipformer_ssl": {}, "zipformer_fbank50": {"frontend": "fbank", "fbank_frame_rate": 50},
                       "zipformer_fbank25": {"frontend": "fbank", "fbank_frame_rate": 25}}
#: Targets from the issues: Zipformer vs stock (issue B) and k2ssl_hubert cosine vs stock (issue E).
#: Issue N: the fbank Zipformer >= 2x the CNN Zipformer's speed and >= 7x stock's, memory <= the CNN Zipformer's.
TARGETS = {"zipformer_ssl": {"speed_vs_hubert": ">= 3.6", "peak_memory_vs_hubert": "<= 1/3"},
           "k2ssl_hubert_cosine": {"peak_memory_vs_hubert": "<= 0.6"},
           "zipformer_fbank50": {"speed_vs_hubert": ">= 7", "speed_vs_zipformer_ssl": ">= 2",
                                 "peak_memory_vs_zipformer_ssl": "<= 1"},
           "zipformer_fbank25": {"speed_vs_hubert": ">= 7", "speed_vs_zipformer_ssl": ">= 2",
                                 "peak_memory_vs_zipformer_ssl": "<= 1"}}
#: How each system runs: eagerly, or with each encoder layer compiled (``models/compiling.py``).
MODES = ("eager", "compiled")
#: ``torch.compile`` modes (``k2ssl_fairseq.models.compiling.COMPILE_MODES``; not imported: torch loads late).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
NUM_CLUSTERS = 500
#: torch dtype names of the ``--precision`` choices (torch is imported only where a step runs).
AUTOCAST_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
SAMPLE_RATE = 16000
REPO = Path(__file__).resolve().parents[1]


def build(system: str) -> torch.nn.Module:
    """The model of ``system`` with weights from seed 0 and a 500-cluster dictionary."""
    import torch
    from fairseq.data.dictionary import Dictionary
    from fairseq.models.hubert.hubert import HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
    from omegaconf import OmegaConf

    import k2ssl_fairseq  # noqa: F401
    from k2ssl_fairseq.models.k2ssl_hubert import K2sslHubertConfig, K2sslHubertModel
    from k2ssl_fairseq.models.zipformer_ssl import ZipformerSslConfig, ZipformerSslModel

    dictionary = Dictionary()
    for k in range(NUM_CLUSTERS):
        dictionary.add_symbol(str(k))
    torch.manual_seed(0)
    if system in ZIPFORMER_FRONTENDS:
        preset = OmegaConf.load(REPO / "config" / "pretrain" / "zipformer_base.yaml").model
        cfg = ZipformerSslConfig(label_rate=50.0, sample_rate=SAMPLE_RATE,
                                 **{k: v for k, v in preset.items() if k != "_name"}, **ZIPFORMER_FRONTENDS[system])
        model = ZipformerSslModel(OmegaConf.structured(cfg), [len(dictionary)])
        model.set_num_updates(0)
        return model
    cfg = K2sslHubertConfig(label_rate=50, final_dim=256, untie_final_proj=True, mask_prob=0.8,
                            feature_grad_mult=0.1, dropout_input=0.1, dropout_features=0.1, encoder_layerdrop=0.0,
                            logit_mode=system.rsplit("_", 1)[1] if system != "hubert" else "cosine")
    model_class = HubertModel if system == "hubert" else K2sslHubertModel
    return model_class(cfg, HubertPretrainingConfig(label_rate=50, sample_rate=SAMPLE_RATE), [dictionary])


def compile_layers(model: "torch.nn.Module", system: str, mode: str = None) -> None:
    """Route ``model``'s encoder layers through one ``LayerCompiler`` (inductor), as ``model.compile=true``
    (``mode``: ``model.compile_mode``)."""
    from k2ssl_fairseq.models.compiling import LayerCompiler

    layers = model.encoder.layers() if system in ZIPFORMER_FRONTENDS else model.encoder.layers
    LayerCompiler(mode=mode, name=system).attach(layers)


def own_optimizer(model: "torch.nn.Module", system: str) -> "torch.optim.Optimizer":
    """The optimizer of the system's own recipe: ScaledAdam (k2SSL) for the Zipformers, fairseq's Adam
    (stock HuBERT's ``optimizer=adam``) for the HuBERTs; learning rates as in their presets."""
    from fairseq.optim.adam import Adam

    from k2ssl_fairseq.optim import ScaledAdam

    if system in ZIPFORMER_FRONTENDS:
        return ScaledAdam(list(model.named_parameters()), lr=0.045, clipping_scale=2.0)
    return Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)


def count_step(model, criterion, sample, system: str, mode: str, cuda: bool) -> Dict[str, object]:
    """What one forward + backward and one optimizer step ask of the device (module docstring)."""
    import torch

    from k2ssl_fairseq.bench.dispatch import count_launches, count_ops

    def forward_backward():
        model.zero_grad(set_to_none=True)
        criterion(model, sample)[0].backward()

    counts: Dict[str, object] = {"launches": count_launches(forward_backward, cuda)}
    if mode == "eager":
        counter = count_ops(forward_backward)
        counts.update(dispatched_ops=counter.total, value_reads=counter.value_reads, top_ops=counter.summary()["top_ops"])
    optimizer = own_optimizer(model, system)
    for _ in range(12):  # ScaledAdam sets its first clipping threshold at step 10
        forward_backward()
        optimizer.step()
    forward_backward()
    snapshot = [p.detach().clone() for p in model.parameters()]
    counter = count_ops(optimizer.step)
    with torch.no_grad():
        for param, value in zip(model.parameters(), snapshot):
            param.copy_(value)
    counts.update(optimizer=type(optimizer).__name__, optimizer_dispatched_ops=counter.total,
                  optimizer_value_reads=counter.value_reads, optimizer_launches=count_launches(optimizer.step, cuda))
    return counts


def run_one(system: str, batch: int, seconds: float, threads: int, warmup: int, device: str = "cpu",
            precision: str = "fp32", profile: Path = None, mode: str = "eager", count: bool = False,
            compile_mode: str = None) -> Dict[str, object]:
    """``warmup`` untimed then one timed forward + backward of ``system``; returns its benchmark record.

    ``precision`` bf16/fp16 runs the step under ``torch.autocast`` (weights and gradients stay fp32, as
    fairseq's ``common.amp`` trains); fp16 runs without a loss scaler, which changes no kernel timed here.
    ``mode`` ``compiled`` compiles each encoder layer (``compile_layers``); ``count`` adds ``count_step``.
    ``profile``: after the timed step, one more under ``torch.profiler``; its operator table (sorted
    by device time on CUDA, CPU time otherwise) is written to ``profile/<system>_<precision>.txt``.
    """
    import torch

    from k2ssl_fairseq.bench.dispatch import enable_compiled_kernel_events
    from k2ssl_fairseq.criterions.masked_prediction import MaskedPredictionCriterion
    from k2ssl_fairseq.data.frames import conv_frames
    from k2ssl_fairseq.data.masking import compute_span_mask

    torch.set_num_threads(threads)
    cuda = device == "cuda"
    model = build(system).train().to(device)
    if mode == "compiled":
        enable_compiled_kernel_events()
        compile_layers(model, system, compile_mode)
    criterion = MaskedPredictionCriterion(SimpleNamespace(), 1.0, 0.0, [10.0], [])
    rng = np.random.default_rng(0)
    samples = int(seconds * SAMPLE_RATE)
    label_frames = conv_frames(samples)  # 50 Hz labels, as k2SSL's
    frames = conv_frames(samples, model.conv_layers) if hasattr(model, "conv_layers") else label_frames
    source = torch.from_numpy(rng.standard_normal((batch, samples)).astype(np.float32))
    mask = torch.from_numpy(compute_span_mask(np.full(batch, frames), frames, 0.8, 10, rng))
    source, mask = source.to(device), mask.to(device)
    sample = {"id": torch.arange(batch),
              "net_input": {"source": source, "padding_mask": torch.zeros_like(source, dtype=torch.bool)},
              "target_list": [torch.from_numpy(rng.integers(4, 4 + NUM_CLUSTERS, (batch, label_frames))).to(device)]}
    if system == "hubert":  # stock HuBERT draws its own masks: pin them to the same ones
        model.apply_mask = lambda x, padding_mask, target_list: (
            torch.where(mask[..., None], model.mask_emb.to(x.dtype), x), mask)
    else:
        sample["net_input"]["mask_indices"] = mask
    autocast = torch.autocast(device, dtype=getattr(torch, AUTOCAST_DTYPES[precision]), enabled=precision != "fp32")
    before = current_memory_bytes(device)
    compile_start = time.perf_counter()
    for index in range(warmup + 1):  # the last step is timed: one-off costs (first allocations, compiling) are not
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss, sample_size, _ = criterion(model, sample)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if index == 0:
            first_step_seconds = time.perf_counter() - compile_start
    if profile is not None:
        write_profile(lambda: criterion(model, sample)[0].backward(), autocast, device,
                      profile / f"{system}_{mode}_{precision}.txt")
    # CPU: the process's resident high-water mark; CUDA: the caching allocator's peak (tensors only)
    peak = peak_memory_bytes(device)
    record = {
        "system": system, "mode": mode, "compile_mode": compile_mode if mode == "compiled" else None, "size": "base", "device": device, "precision": precision,
        "batch_seconds": batch * seconds, "audio_seconds_per_second": batch * seconds / elapsed, "peak_memory_bytes": peak,
        "step_memory_bytes": peak - before, "data_wait_fraction": 0.0, "crop_waste_fraction": 0.0,
        "padding_fraction": 0.0, "loss_curve": [float(loss.detach()) / sample_size], "step_seconds": elapsed,
        "first_step_seconds": first_step_seconds, "masked_frames": int(sample_size), "threads": threads,
        "warmup_steps": warmup, "parameters": sum(p.numel() for p in model.parameters()),
    }
    if count:
        with autocast:
            record.update(count_step(model, criterion, sample, system, mode, cuda))
    return record


def write_profile(step, autocast, device: str, path: Path) -> None:
    """Run ``step`` once under the profiler and write its operator table to ``path``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        with autocast:
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=60) + "\n")


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="utterances per batch")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per utterance")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; the fastest is kept")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed one (same process)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=sorted(AUTOCAST_DTYPES), default="fp32",
                        help="fp32, or bf16/fp16 autocast (mixed precision)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["eager"],
                        help="eager, and/or compiled (each encoder layer through torch.compile, as model.compile=true)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                        help="torch.compile mode of the compiled runs (reduce-overhead: CUDA graphs)")
    parser.add_argument("--count", action="store_true",
                        help="also count ops, kernel launches and device reads per step (k2ssl_fairseq.bench.dispatch)")
    parser.add_argument("--profile", type=Path, help="folder for one profiled step's operator table per system")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--output", type=Path, help="JSON file to write (default: print only)")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        system, mode = args.run_one.split(":")
        print(json.dumps(run_one(system, args.batch, args.seconds, args.threads, args.warmup, args.device,
                                 args.precision, args.profile, mode, args.count, args.compile_mode)))
        return 0

    variants = [f"{system}:{mode}" for mode in args.modes for system in args.systems]
    rounds = interleaved_rounds(
        lambda variant: [sys.executable, __file__, "--run-one", variant, "--batch", str(args.batch),
                         "--seconds", str(args.seconds), "--threads", str(args.threads), "--warmup", str(args.warmup),
                         "--device", args.device, "--precision", args.precision]
        + (["--profile", str(args.profile)] if args.profile else []) + (["--count"] if args.count else [])
        + (["--compile-mode", args.compile_mode] if args.compile_mode else []),
        variants, args.repeats)
    records = []
    for variant in variants:
        best = min(rounds[variant], key=lambda r: r["step_seconds"])
        best["step_seconds_all_rounds"] = [r["step_seconds"] for r in rounds[variant]]
        records.append(best)
    run_record = provenance(args.device)
    for record in records:
        compare(record, records)
        record.update(run_record)
    if args.output:
        write_json(args.output, records)
    return 0


def compare(record: Dict[str, object], records: List[Dict[str, object]]) -> None:
    """Add the ratios against stock HuBERT and the CNN Zipformer in the same mode, and against the
    same system eager (each printed), and the issue targets that apply."""
    def peer(system: str, mode: str):
        return next((r for r in records if r["system"] == system and r["mode"] == mode and r is not record), None)

    for name, other in (("hubert", peer("hubert", record["mode"])),
                        ("zipformer_ssl", peer("zipformer_ssl", record["mode"]) if record["system"].startswith("zipformer_fbank") else None),
                        ("eager", peer(record["system"], "eager") if record["mode"] != "eager" else None)):
        if other is None:
            continue
        record[f"speed_vs_{name}"] = record["audio_seconds_per_second"] / other["audio_seconds_per_second"]
        record[f"peak_memory_vs_{name}"] = record["peak_memory_bytes"] / other["peak_memory_bytes"]
        if name != "eager":
            record[f"step_memory_vs_{name}"] = record["step_memory_bytes"] / other["step_memory_bytes"]
        print(f"{record['system']} ({record['mode']}): {record[f'speed_vs_{name}']:.2f}x speed, "
              f"{record[f'peak_memory_vs_{name}']:.3f}x peak memory of {name}", flush=True)
    if record["system"] in TARGETS and record["mode"] == "eager":
        record["targets"] = TARGETS[record["system"]]


if __name__ == "__main__":
    sys.exit(main())
