"""A/B benchmark of stock fairseq HuBERT against the plugin's systems, through fairseq's own trainer.

Every system runs in its own subprocess (so peak memory is its own) as ``fairseq-hydra-train`` would
run it: the same Hydra composition of the same yaml and overrides, the same task, model, criterion,
optimizer and ``fairseq.trainer.Trainer``. Only the outer loop differs: instead of fairseq's
``train()`` the worker times each ``Trainer.train_step`` and the wait for its batch, and reads the
audio actually fed, cropped away and padded from the batch itself.

Usage (also the console script ``k2ssl-benchmark``)::

    python scripts/benchmark.py --data CORPUS --label-dir LABELS --size tiny --updates 8 --out DIR [--work-dir W]

Outputs ``DIR/benchmark.json`` (one record per system, fields of DESIGN.md), ``DIR/benchmark.md``
(a table with ratios to stock HuBERT) and ``DIR/throughput_memory.png`` / ``DIR/loss_vs_audio.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .common import REPO_DIR, provenance
from .stock import stock_hubert_config_dir, tiny_hubert_model_overrides

SYSTEMS = ("stock_hubert", "k2ssl_hubert_cosine", "k2ssl_hubert_linear", "zipformer_ssl")
#: Per-GPU audio per update of each recipe: fairseq HuBERT Base 1.4M samples, k2SSL Zipformer Base 600 s.
RECIPE_SECONDS = {"stock_hubert": 87.5, "k2ssl_hubert_cosine": 87.5, "k2ssl_hubert_linear": 87.5,
                  "zipformer_ssl": 600.0}
_RESULT_ENV = "K2SSL_BENCHMARK_RESULT"


@dataclass(frozen=True)
class RunSpec:
    """What one worker runs: a yaml, its overrides and the measurement loop settings."""

    system: str
    size: str
    config_dir: Path
    config_name: str
    overrides: List[str]
    updates: int
    warmup: int


def _hubert_yaml(size: str) -> str:
    return "hubert_large_librivox" if size == "large" else "hubert_base_librispeech"


def precision(system: str, device: str) -> str:
    """``fp32`` on the CPU. On CUDA each system's recipe precision: the plugin's systems under
    autocast (``amp``, as k2SSL trains), stock HuBERT with fairseq's ``fp16`` (its yaml's setting;
    stock ``HubertModel.apply_mask`` fails under autocast with an fp16/fp32 ``index_put`` mismatch,
    measured on an H200 with fairseq 0.12.3)."""
    if device != "cuda":
        return "fp32"
    return "fp16" if system == "stock_hubert" else "amp"


def run_spec(system: str, size: str, data: Path, label_dir: Path, seconds_per_batch: Optional[float],
             device: str, updates: int, warmup: int, train_subset: str = "train") -> RunSpec:
    """The configuration of one system at one size, sharing data, labels and audio per update.

    Precision: see :func:`precision`.
    """
    seconds = seconds_per_batch if seconds_per_batch is not None else RECIPE_SECONDS[system]
    cuda, mode = device == "cuda", precision(system, device)
    common = [f"task.data={data}", f"task.label_dir={label_dir}", "task.labels=[km]",
              f"dataset.train_subset={train_subset}", "dataset.disable_validation=true",
              f"optimization.max_update={updates + warmup}", "common.log_interval=1",
              "common.tensorboard_logdir=null", f"common.cpu={str(not cuda).lower()}",
              f"common.fp16={str(mode == 'fp16').lower()}", f"common.amp={str(mode == 'amp').lower()}",
              "distributed_training.distributed_world_size=1", "distributed_training.nprocs_per_node=1",
              "checkpoint.no_save=true", "dataset.num_workers=0", "task.min_sample_size=8000"]
    if system == "zipformer_ssl":
        return RunSpec(system, size, REPO_DIR / "config" / "pretrain", f"zipformer_{size}",
                       common + ["task._name=k2ssl_pretraining", f"++task.max_duration={seconds}"], updates, warmup)
    overrides = common + ["model.label_rate=50"] + (tiny_hubert_model_overrides() if size == "tiny" else [])
    if system == "stock_hubert":
        overrides.append(f"dataset.max_tokens={int(seconds * 16000)}")
    else:
        overrides += ["model._name=k2ssl_hubert", "task._name=k2ssl_pretraining", f"++task.max_duration={seconds}",
                      "criterion._name=k2ssl_masked_prediction",
                      f"++model.logit_mode={'linear' if system.endswith('linear') else 'cosine'}"]
    return RunSpec(system, size, stock_hubert_config_dir(), _hubert_yaml(size), overrides, updates, warmup)


class _PeakRss:
    """Peak resident memory of this process while active, sampled every few milliseconds."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> "_PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _original_samples(dataset: Any, ids: torch.Tensor) -> int:
    """Samples of the whole utterances behind a batch (before any crop)."""
    if hasattr(dataset, "index"):
        return int(sum(int(dataset.index.num_samples[i]) for i in ids.tolist()))
    return int(sum(int(dataset.sizes[i]) for i in ids.tolist()))


def _batch_audio(sample: Dict[str, Any]) -> Dict[str, int]:
    source = sample["net_input"]["source"]
    padding = sample["net_input"].get("padding_mask")
    padded = int(padding.sum()) if padding is not None else 0
    return {"tensor": int(source.numel()), "fed": int(source.numel()) - padded}


def _measure(cfg: Any) -> None:
    """Replacement for ``fairseq_cli.train.main``: build everything as fairseq does, then time steps."""
    from fairseq import metrics, tasks, utils
    from fairseq.dataclass.initialize import add_defaults
    from fairseq.trainer import Trainer

    utils.import_user_module(cfg.common)
    add_defaults(cfg)
    np.random.seed(cfg.common.seed)
    utils.set_torch_seed(cfg.common.seed)
    spec = json.loads(os.environ[_RESULT_ENV + "_SPEC"])
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    epoch_itr = trainer.get_train_iterator(epoch=1)
    dataset = task.dataset(cfg.dataset.train_subset)
    cuda = torch.cuda.is_available() and not cfg.common.cpu
    steps: List[Dict[str, float]] = []
    epoch = 1
    iterator = epoch_itr.next_epoch_itr(shuffle=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with _PeakRss() as rss, metrics.aggregate("benchmark", new_root=True):
        for step in range(spec["updates"] + spec["warmup"]):
            start = time.perf_counter()
            sample = next(iterator, None)
            if sample is None:
                epoch += 1
                epoch_itr = trainer.get_train_iterator(epoch=epoch, load_dataset=False)
                iterator = epoch_itr.next_epoch_itr(shuffle=True)
                sample = next(iterator)
            got_batch = time.perf_counter()
            log = trainer.train_step([sample])
            if cuda:
                torch.cuda.synchronize()
            done = time.perf_counter()
            audio = _batch_audio(sample)
            steps.append({"wait_s": got_batch - start, "step_s": done - got_batch, "fed": audio["fed"],
                          "tensor": audio["tensor"], "whole": _original_samples(dataset, sample["id"]),
                          "loss": float(log["loss"]) if log and "loss" in log else float("nan")})
            print(f"[{spec['system']}] update {step + 1}/{spec['updates'] + spec['warmup']} "
                  f"loss {steps[-1]['loss']:.3f} step {steps[-1]['step_s']:.2f}s", flush=True)
    Path(os.environ[_RESULT_ENV]).write_text(json.dumps({
        "steps": steps, "params": sum(p.numel() for p in model.parameters()),
        "peak_rss": max(rss.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
        "peak_cuda": torch.cuda.max_memory_allocated() if cuda else None,
    }))


def _summarize(spec: RunSpec, raw: Dict[str, Any], device: str, sample_rate: int = 16000) -> Dict[str, Any]:
    timed = raw["steps"][spec.warmup:]
    fed = np.array([s["fed"] for s in timed], dtype=np.float64)
    step_s = np.array([s["step_s"] for s in timed])
    wait_s = np.array([s["wait_s"] for s in timed])
    whole = sum(s["whole"] for s in timed)
    tensor = sum(s["tensor"] for s in timed)
    audio_seen = np.cumsum([s["fed"] for s in raw["steps"]]) / sample_rate / 3600.0
    return {
        "system": spec.system, "size": spec.size, "device": device, "precision": precision(spec.system, device),
        "params": raw["params"], "batch_seconds": float(fed.mean() / sample_rate),
        "audio_seconds_per_second": float(np.median(fed / sample_rate / (step_s + wait_s))),
        "peak_memory_bytes": int(raw["peak_cuda"] if device == "cuda" else raw["peak_rss"]),
        "data_wait_fraction": float(wait_s.sum() / (wait_s.sum() + step_s.sum())),
        "crop_waste_fraction": float(max(whole - fed.sum(), 0) / max(whole, 1)),
        "padding_fraction": float((tensor - fed.sum()) / max(tensor, 1)),
        "loss_curve": [[float(h), float(s["loss"])] for h, s in zip(audio_seen, raw["steps"])],
        "timed_updates": len(timed), "median_step_seconds": float(np.median(step_s)),
        **provenance(device),
    }


def run_system(spec: RunSpec, device: str, work: Path) -> Dict[str, Any]:
    """Run one system in a fresh process and summarise its measurements.

    Raises:
        RuntimeError: with the end of the worker's log when it fails.
    """
    work.mkdir(parents=True, exist_ok=True)
    result = work / f"{spec.system}.json"
    env = dict(os.environ, **{_RESULT_ENV: str(result), _RESULT_ENV + "_SPEC": json.dumps(
        {"system": spec.system, "updates": spec.updates, "warmup": spec.warmup})})
    cmd = [sys.executable, "-m", "k2ssl_fairseq.bench.ab", "--worker", "--config-dir", str(spec.config_dir),
           "--config-name", spec.config_name, f"hydra.run.dir={work / spec.system}", *spec.overrides]
    log_lines: List[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            log_lines.append(line)
            if line.startswith(f"[{spec.system}]"):
                print("  " + line.rstrip(), flush=True)
    (work / f"{spec.system}.log").write_text("".join(log_lines))
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f"benchmark of {spec.system} failed ({proc.returncode}):\n{''.join(log_lines[-60:])}")
    return _summarize(spec, json.loads(result.read_text()), device)


def write_reports(records: List[Dict[str, Any]], out: Path) -> None:
    """JSON, a Markdown table with ratios to stock HuBERT, and two PNG plots."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(records, indent=1) + "\n")
    base = next((r for r in records if r["system"] == "stock_hubert"), None)
    rows = ["| system | params | audio s/update | audio s/s | peak memory (GB) | data wait | cropped | padded "
            "| speed vs stock | memory vs stock |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        speed = f"{r['audio_seconds_per_second'] / base['audio_seconds_per_second']:.2f}x" if base else "-"
        memory = f"{r['peak_memory_bytes'] / base['peak_memory_bytes']:.2f}x" if base else "-"
        rows.append(f"| {r['system']} | {r['params'] / 1e6:.2f}M | {r['batch_seconds']:.1f} | "
                    f"{r['audio_seconds_per_second']:.2f} | {r['peak_memory_bytes'] / 2**30:.2f} | "
                    f"{100 * r['data_wait_fraction']:.1f}% | {100 * r['crop_waste_fraction']:.1f}% | "
                    f"{100 * r['padding_fraction']:.1f}% | {speed} | {memory} |")
    first = records[0]
    header = f"Size {first['size']}, device {first['device']} ({first['machine']}), {first['date']}\n\n"
    (out / "benchmark.md").write_text(header + "\n".join(rows) + f"\n\nCommand: `{first['command']}`\n")
    _plots(records, out)


def _plots(records: List[Dict[str, Any]], out: Path) -> None:
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["system"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].bar(names, [r["audio_seconds_per_second"] for r in records], color="tab:blue")
    axes[0].set_ylabel("audio seconds / second")
    axes[1].bar(names, [r["peak_memory_bytes"] / 2**30 for r in records], color="tab:orange")
    axes[1].set_ylabel("peak memory (GiB)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(out / "throughput_memory.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in records:
        curve = np.array(r["loss_curve"])
        ax.plot(curve[:, 0], curve[:, 1], marker=".", label=r["system"])
    ax.set_xlabel("audio seen (hours)")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_vs_audio.png", dpi=110)
    plt.close(fig)


def _worker(argv: Sequence[str]) -> None:
    import fairseq_cli.hydra_train as hydra_train

    import k2ssl_fairseq  # noqa: F401  (plugin registered before composition, as k2ssl-hydra-train does)

    hydra_train.pre_main = _measure
    sys.argv = ["fairseq-hydra-train", *argv]
    hydra_train.cli_main()


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker":
        _worker(argv[1:])
        return
    parser = argparse.ArgumentParser(description="A/B benchmark: stock fairseq HuBERT vs the plugin's systems")
    parser.add_argument("--data", type=Path, required=True, help="corpus with {split}.tsv")
    parser.add_argument("--label-dir", type=Path, required=True, help="directory with {split}.km and dict.km.txt")
    parser.add_argument("--train-subset", default="train")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--size", choices=("tiny", "base", "large"), default="tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seconds-per-batch", type=float, default=None,
                        help="the same audio per update for every system; default: each system's recipe batch")
    parser.add_argument("--updates", type=int, default=5, help="timed updates per system")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    parser.add_argument("--out", type=Path, required=True, help="reports: JSON, Markdown, PNG plots")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="per-system logs and hydra run folders (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="k2ssl_benchmark_"))).resolve()
    records = []
    for i, system in enumerate(args.systems, 1):
        print(f"[{i}/{len(args.systems)}] {system} ({args.size}, {args.device})", flush=True)
        spec = run_spec(system, args.size, args.data.resolve(), args.label_dir.resolve(), args.seconds_per_batch,
                        args.device, args.updates, args.warmup, args.train_subset)
        records.append(run_system(spec, args.device, work))
    write_reports(records, args.out)
    print((args.out / "benchmark.md").read_text())


if __name__ == "__main__":
    main()
