"""A/B benchmark of stock fairseq HuBERT against the plugin's systems, through fairseq's own trainer.

Every system runs in its own subprocess (so peak memory is its own) as ``fairseq-hydra-train``
would run it: the same Hydra composition of the same yaml and overrides, the same task, model,
criterion, optimizer and ``fairseq.trainer.Trainer``. Only the outer loop differs: instead of
fairseq's ``train()`` the worker times each ``Trainer.train_step`` (split into the task's forward and
backward, the optimizer step and the rest of the trainer) and the wait for its batch.

By default (``--batches shared``) every system trains on the same batches: one plan of utterances
and crop windows is made before any system runs, and each worker reads those windows through its
own dataset and collater, so audio per update, crops and padding are identical and only the systems
differ. ``--batches own`` lets each system's task batch the data itself, which measures the loaders
(audio per update, crop and padding waste) rather than the models.

Each system runs ``--repeats`` times, interleaved with the others so that a slow spell of a shared
machine hits all alike; the tables give the median and the range over repeats.

Usage (also the console script ``k2ssl-benchmark``)::

    k2ssl-benchmark --data CORPUS --label-dir LABELS --size tiny --updates 8 --out DIR [--work-dir W]

Outputs ``DIR/benchmark.json`` (one record per system), ``DIR/benchmark.md`` (a table with ratios to
stock HuBERT and the conditions) and ``DIR/throughput_memory.png`` / ``DIR/learning.png``.
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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import presets
from ..tools import quiet_library_output
from .common import provenance, thread_env, write_json
from .stock import STOCK_HUBERT_SIZES, hubert_model_overrides, stock_hubert_config_dir

SYSTEMS = ("stock_hubert", "k2ssl_hubert_cosine", "k2ssl_hubert_linear", "zipformer_ssl", "zipformer_fbank")
#: Which logits each system's head produces: accuracies are compared within a head type only.
HEAD_TYPES = {"stock_hubert": "cosine similarity", "k2ssl_hubert_cosine": "cosine similarity",
              "k2ssl_hubert_linear": "linear class logits", "zipformer_ssl": "linear class logits",
              "zipformer_fbank": "linear class logits"}
#: Per-GPU audio per update of each recipe (``--batches own`` without ``--seconds-per-batch``):
#: fairseq HuBERT Base 1.4M samples; k2SSL Zipformer Base ``--max-duration 600`` (see its preset).
RECIPE_SECONDS = {"stock_hubert": 87.5, "k2ssl_hubert_cosine": 87.5, "k2ssl_hubert_linear": 87.5,
                  "zipformer_ssl": 600.0, "zipformer_fbank": 600.0}
#: What turns a zipformer_<size> preset into the fbank Zipformer (as pretrain/frontend/fbank.yaml does).
FBANK_OVERRIDES = ["++model.frontend=fbank", "++model.feature_grad_mult=1.0"]
#: Audio per update of the shared batches unless ``--seconds-per-batch`` says otherwise.
SHARED_SECONDS = 40.0
#: Stock HuBERT's crop cap (its yaml's ``task.max_sample_size``), used for the shared plan.
MAX_SAMPLE_SIZE = 250000
MIN_SAMPLE_SIZE = 8000
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


def run_spec(system: str, size: str, data: Path, label_dir: Path, seconds: float, device: str, updates: int,
             warmup: int, train_subset: str = "train", compile_layers: bool = False) -> RunSpec:
    """The configuration of one system at one size, sharing data, labels and audio per update.

    Precision: see :func:`precision`. ``compile_layers``: the plugin's systems train with
    ``model.compile=true`` (stock HuBERT has no such setting; ``k2ssl_hubert_cosine`` is the same
    network compiled, its fair peer).
    """
    cuda, mode = device == "cuda", precision(system, device)
    common = [f"task.data={data}", f"task.label_dir={label_dir}", "task.labels=[km]",
              f"dataset.train_subset={train_subset}", "dataset.disable_validation=true",
              f"optimization.max_update={updates + warmup}", "common.log_interval=1",
              "common.tensorboard_logdir=null", f"common.cpu={str(not cuda).lower()}",
              f"common.fp16={str(mode == 'fp16').lower()}", f"common.amp={str(mode == 'amp').lower()}",
              "distributed_training.distributed_world_size=1", "distributed_training.nprocs_per_node=1",
              "checkpoint.no_save=true", "dataset.num_workers=0", f"task.min_sample_size={MIN_SAMPLE_SIZE}"]
    if compile_layers and system != "stock_hubert":
        common.append("++model.compile=true")
    if system.startswith("zipformer"):
        frontend = FBANK_OVERRIDES if system == "zipformer_fbank" else []
        return RunSpec(system, size, presets.config_dir("pretrain"), f"zipformer_{size}",
                       common + ["task._name=k2ssl_pretraining", f"++task.max_duration={seconds}", *frontend],
                       updates, warmup)
    overrides = common + ["model.label_rate=50"] + (hubert_model_overrides(size) if size in STOCK_HUBERT_SIZES else [])
    if system == "stock_hubert":
        overrides.append(f"dataset.max_tokens={int(seconds * 16000)}")
    else:
        overrides += ["model._name=k2ssl_hubert", "task._name=k2ssl_pretraining", f"++task.max_duration={seconds}",
                      "criterion._name=k2ssl_masked_prediction",
                      f"++model.logit_mode={'linear' if system.endswith('linear') else 'cosine'}"]
    return RunSpec(system, size, stock_hubert_config_dir(), _hubert_yaml(size), overrides, updates, warmup)


def shared_plan(manifest_path: Path, seconds: float, steps: int, seed: int = 1) -> List[List[Tuple[str, int, int]]]:
    """``steps`` batches of ``(audio name, first sample, samples)`` windows every system will read.

    Made by the plugin's duration planner (crop to the batch's shortest utterance, capped at stock
    HuBERT's ``max_sample_size``) over the utterances both tasks keep; epochs follow one another
    when one is not enough.
    """
    from ..data.bucketing import BatchingSettings, plan_epoch
    from ..data.manifest import read_manifest

    manifest = read_manifest(manifest_path)
    keep = np.flatnonzero(manifest.num_samples >= MIN_SAMPLE_SIZE)
    settings = BatchingSettings(max_duration=seconds, max_sample_size=MAX_SAMPLE_SIZE)
    batches: List[List[Tuple[str, int, int]]] = []
    epoch = 1
    while len(batches) < steps:
        plan = plan_epoch(manifest.num_samples[keep], settings, seed, epoch)
        for index in range(len(plan)):
            first, end = plan.batch_offsets[index], plan.batch_offsets[index + 1]
            batches.append([(manifest.names[keep[u]], int(s), int(n)) for u, s, n in
                            zip(plan.utterances[first:end], plan.starts[first:end], plan.num_samples[first:end])])
        epoch += 1
    return batches[:steps]


def dataset_positions(dataset: Any) -> Dict[str, int]:
    """Audio name -> item index of the system's own dataset (the plugin's bucketed dataset, or stock
    ``HubertDataset``); built once per run."""
    from ..data.dataset import BucketedAudioDataset

    if isinstance(dataset, BucketedAudioDataset):
        names = dataset.index.manifest.names
        return {names[entry]: i for i, entry in enumerate(dataset.index.kept.tolist())}
    return {name: i for i, name in enumerate(dataset.audio_names)}


def _shared_sample(dataset: Any, position: Dict[str, int], windows: Sequence[Sequence[Any]],
                   batch_index: int) -> Dict[str, Any]:
    """One planned batch read through the system's own dataset and collater (the plugin's bucketed
    dataset, or stock ``HubertDataset`` with each item cut to its window before collation)."""
    from ..data.dataset import BucketedAudioDataset
    from ..data.frames import samples_to_label_index

    if isinstance(dataset, BucketedAudioDataset):
        return dataset.collater([dataset[(_position(position, name), start, count, batch_index, 1)]
                                 for name, start, count in windows])
    items = []
    for name, start, count in windows:
        item = dataset[_position(position, name)]
        item["source"] = item["source"][start:start + count]
        item["label_list"] = [labels[int(samples_to_label_index(start, rate, dataset.sample_rate)):]
                              for labels, rate in zip(item["label_list"], dataset.label_rates)]
        items.append(item)
    return dataset.collater(items)


def _position(position: Dict[str, int], name: str) -> int:
    if name not in position:
        raise RuntimeError(f"shared batch plan names {name}, which this system's dataset filtered out")
    return position[name]


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


class _Stopwatch:
    """Time spent inside one method of an object, accumulated until read."""

    def __init__(self, owner: Any, method: str) -> None:
        self.seconds = 0.0
        wrapped = getattr(owner, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return wrapped(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(owner, method, timed)

    def read(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def _original_samples(dataset: Any, ids: Any) -> int:
    """Samples of the whole utterances behind a batch (before any crop)."""
    if hasattr(dataset, "index"):
        return int(sum(int(dataset.index.num_samples[i]) for i in ids.tolist()))
    return int(sum(int(dataset.sizes[i]) for i in ids.tolist()))


def _batch_audio(sample: Dict[str, Any]) -> Dict[str, int]:
    source = sample["net_input"]["source"]
    padding = sample["net_input"].get("padding_mask")
    padded = int(padding.sum()) if padding is not None else 0
    return {"tensor": int(source.numel()), "fed": int(source.numel()) - padded}


def _masked_accuracy(log: Optional[Dict[str, Any]]) -> float:
    """Masked-frame accuracy of the first label set, as both criteria log it (``correct_m_0``)."""
    if not log or "correct_m_0" not in log:
        return float("nan")
    return float(log["correct_m_0"])


def _measure(cfg: Any) -> None:
    """Replacement for ``fairseq_cli.train.main``: build everything as fairseq does, then time steps."""
    import torch
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
    forward_backward, optimizer = _Stopwatch(task, "train_step"), _Stopwatch(task, "optimizer_step")
    epoch_itr = trainer.get_train_iterator(epoch=1)
    dataset = task.dataset(cfg.dataset.train_subset)
    plan = json.loads(Path(spec["plan"]).read_text()) if spec["plan"] else None
    positions = dataset_positions(dataset) if plan is not None else {}
    cuda = torch.cuda.is_available() and not cfg.common.cpu
    steps: List[Dict[str, float]] = []
    epoch = 1
    iterator = epoch_itr.next_epoch_itr(shuffle=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with _PeakRss() as rss, metrics.aggregate("benchmark", new_root=True):
        for step in range(spec["updates"] + spec["warmup"]):
            start = time.perf_counter()
            if plan is not None:
                sample = _shared_sample(dataset, positions, plan[step], step)
            else:
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
            steps.append({"wait_s": got_batch - start, "step_s": done - got_batch,
                          "forward_backward_s": forward_backward.read(), "optimizer_s": optimizer.read(),
                          "fed": audio["fed"], "tensor": audio["tensor"],
                          "whole": _original_samples(dataset, sample["id"]),
                          "loss": float(log["loss"]) if log and "loss" in log else float("nan"),
                          "masked_accuracy": _masked_accuracy(log)})
            print(f"[{spec['system']}] update {step + 1}/{spec['updates'] + spec['warmup']} "
                  f"loss {steps[-1]['loss']:.3f} step {steps[-1]['step_s']:.2f}s", flush=True)
    Path(os.environ[_RESULT_ENV]).write_text(json.dumps({
        "steps": steps, "params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
        "peak_rss": max(rss.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
        "peak_cuda": torch.cuda.max_memory_allocated() if cuda else None,
    }))


def summarize_run(spec: RunSpec, raw: Dict[str, Any], device: str, sample_rate: int = 16000) -> Dict[str, Any]:
    """One run's numbers: throughput over its timed updates, waste fractions, time split, curves."""
    timed = raw["steps"][spec.warmup:]
    fed = np.array([s["fed"] for s in timed], dtype=np.float64)
    step_s = np.array([s["step_s"] for s in timed])
    wait_s = np.array([s["wait_s"] for s in timed])
    whole = sum(s["whole"] for s in timed)
    tensor = sum(s["tensor"] for s in timed)
    seen = np.cumsum([s["fed"] for s in raw["steps"]]) / sample_rate / 3600.0
    clock = np.cumsum([s["step_s"] + s["wait_s"] for s in raw["steps"]])
    return {
        "params": raw["params"], "threads": raw["threads"], "batch_seconds": float(fed.mean() / sample_rate),
        "audio_seconds_per_second": float(fed.sum() / sample_rate / (step_s.sum() + wait_s.sum())),
        "peak_memory_bytes": int(raw["peak_cuda"] if device == "cuda" else raw["peak_rss"]),
        "data_wait_fraction": float(wait_s.sum() / (wait_s.sum() + step_s.sum())),
        "crop_waste_fraction": float(max(whole - fed.sum(), 0) / max(whole, 1)),
        "padding_fraction": float((tensor - fed.sum()) / max(tensor, 1)),
        "median_step_seconds": float(np.median(step_s)),
        "median_forward_backward_seconds": float(np.median([s["forward_backward_s"] for s in timed])),
        "median_optimizer_seconds": float(np.median([s["optimizer_s"] for s in timed])),
        "median_trainer_other_seconds": float(np.median([s["step_s"] - s["forward_backward_s"] - s["optimizer_s"]
                                                         for s in timed])),
        "curve": [{"wall_seconds": float(c), "audio_hours": float(h), "loss": s["loss"],
                   "masked_accuracy": s["masked_accuracy"]} for c, h, s in zip(clock, seen, raw["steps"])],
    }


def combine_runs(spec: RunSpec, runs: List[Dict[str, Any]], device: str, batches: str) -> Dict[str, Any]:
    """One record per system: medians over repeats, their ranges, the first run's curve."""
    def spread(key: str) -> Tuple[float, List[float]]:
        values = [run[key] for run in runs]
        return float(np.median(values)), [float(min(values)), float(max(values))]

    speed, speed_range = spread("audio_seconds_per_second")
    memory, memory_range = spread("peak_memory_bytes")
    first = runs[0]
    return {
        "system": spec.system, "head": HEAD_TYPES[spec.system], "size": spec.size, "device": device,
        "compiled": "++model.compile=true" in spec.overrides,
        "precision": precision(spec.system, device), "batches": batches, "repeats": len(runs),
        "timed_updates": spec.updates, "params": first["params"], "threads": first["threads"],
        "batch_seconds": first["batch_seconds"], "audio_seconds_per_second": speed,
        "audio_seconds_per_second_range": speed_range, "peak_memory_bytes": int(memory),
        "peak_memory_bytes_range": [int(v) for v in memory_range],
        **{key: float(np.median([run[key] for run in runs])) for key in (
            "data_wait_fraction", "crop_waste_fraction", "padding_fraction", "median_step_seconds",
            "median_forward_backward_seconds", "median_optimizer_seconds", "median_trainer_other_seconds")},
        "curve": first["curve"], "runs": [{k: v for k, v in run.items() if k != "curve"} for run in runs],
        **provenance(device),
    }


def run_system(spec: RunSpec, device: str, work: Path, plan: Optional[Path], threads: Optional[int]) -> Dict[str, Any]:
    """Run one system once in a fresh process and summarise its measurements.

    Raises:
        RuntimeError: with the end of the worker's log when it fails.
    """
    work.mkdir(parents=True, exist_ok=True)
    result = work / f"{spec.system}.json"
    env = dict(os.environ, **{_RESULT_ENV: str(result), _RESULT_ENV + "_SPEC": json.dumps(
        {"system": spec.system, "updates": spec.updates, "warmup": spec.warmup,
         "plan": str(plan) if plan else None})})
    if threads:
        env.update(thread_env(threads))
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
    return summarize_run(spec, json.loads(result.read_text()), device)


def conditions(records: List[Dict[str, Any]]) -> str:
    """The line every table and plot carries: size, device, batches, audio per update, threads, commit."""
    first = records[0]
    audio = sorted({round(r["batch_seconds"], 1) for r in records})
    return (f"{first['size']}, {first['device']} ({first['machine']}), {first['batches']} batches, "
            f"{'/'.join(f'{a:g}' for a in audio)} s audio per update, {first['threads']} thread(s), "
            f"{first['timed_updates']} timed updates x {first['repeats']} repeats, commit {first['git_commit'][:10]}")


def write_reports(records: List[Dict[str, Any]], out: Path) -> None:
    """JSON, a Markdown table with ratios to stock HuBERT, and two PNG plots."""
    write_json(out / "benchmark.json", records)
    base = next((r for r in records if r["system"] == "stock_hubert"), None)
    rows = ["| system | head | params | audio s/update | audio s/s (range) | peak memory GB (range) | "
            "step s: fwd+bwd / optimizer / trainer rest | data wait | cropped | padded | speed vs stock | "
            "memory vs stock |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        low, high = r["audio_seconds_per_second_range"]
        mem_low, mem_high = (v / 2**30 for v in r["peak_memory_bytes_range"])
        speed = f"{r['audio_seconds_per_second'] / base['audio_seconds_per_second']:.2f}x" if base else "-"
        memory = f"{r['peak_memory_bytes'] / base['peak_memory_bytes']:.2f}x" if base else "-"
        rows.append(f"| {r['system']} | {r['head']} | {r['params'] / 1e6:.2f}M | {r['batch_seconds']:.1f} | "
                    f"{r['audio_seconds_per_second']:.2f} ({low:.2f}-{high:.2f}) | "
                    f"{r['peak_memory_bytes'] / 2**30:.2f} ({mem_low:.2f}-{mem_high:.2f}) | "
                    f"{r['median_forward_backward_seconds']:.2f} / {r['median_optimizer_seconds']:.2f} / "
                    f"{r['median_trainer_other_seconds']:.2f} | {100 * r['data_wait_fraction']:.1f}% | "
                    f"{100 * r['crop_waste_fraction']:.1f}% | {100 * r['padding_fraction']:.1f}% | {speed} | "
                    f"{memory} |")
    (out / "benchmark.md").write_text(f"{conditions(records)}, {records[0]['date']}\n\n" + "\n".join(rows)
                                      + f"\n\nCommand: `{records[0]['command']}`\n")
    _plots(records, out)


def _plots(records: List[Dict[str, Any]], out: Path) -> None:
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = conditions(records)
    names = [r["system"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, scale, label, color in ((axes[0], "audio_seconds_per_second", 1.0, "audio seconds / second",
                                          "tab:blue"),
                                         (axes[1], "peak_memory_bytes", 2.0**-30, "peak memory (GiB)", "tab:orange")):
        values = np.array([r[key] * scale for r in records])
        ranges = np.array([[v * scale for v in r[key + "_range"]] for r in records])
        ax.bar(names, values, color=color, yerr=[values - ranges[:, 0], ranges[:, 1] - values], capsize=4)
        ax.set_ylabel(f"{label}\n(median, bars: range over repeats)")
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput_memory.png", dpi=110)
    plt.close(fig)
    heads = sorted({r["head"] for r in records})
    fig, axes = plt.subplots(len(heads), 2, figsize=(11, 3.4 * len(heads)), squeeze=False)
    for row, head in enumerate(heads):
        for column, (key, label) in enumerate((("wall_seconds", "wall-clock seconds"),
                                               ("audio_hours", "audio seen (hours)"))):
            ax = axes[row][column]
            for r in records:
                if r["head"] == head:
                    ax.plot([p[key] for p in r["curve"]], [p["masked_accuracy"] for p in r["curve"]], marker=".",
                            label=r["system"])
            ax.set_xlabel(label)
            ax.set_ylabel(f"masked accuracy\n({head})")
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning.png", dpi=110)
    plt.close(fig)


def _worker(argv: Sequence[str]) -> None:
    import fairseq_cli.hydra_train as hydra_train

    from .. import registration

    registration.register()  # before composition, as k2ssl-hydra-train does
    hydra_train.pre_main = _measure
    sys.argv = ["fairseq-hydra-train", *argv]
    hydra_train.cli_main()


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker":
        _worker(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description="A/B benchmark: stock fairseq HuBERT vs the plugin's systems")
    parser.add_argument("--data", type=Path, required=True, help="corpus with {split}.tsv")
    parser.add_argument("--label-dir", type=Path, required=True, help="directory with {split}.km and dict.km.txt")
    parser.add_argument("--train-subset", default="train", help="split the systems train on")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS, help="systems to run")
    parser.add_argument("--size", choices=("tiny", "small", "base", "large"), default="tiny", help="model size")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the systems run")
    parser.add_argument("--batches", choices=("shared", "own"), default="shared",
                        help="shared: every system reads the same planned batches (compares the systems); "
                             "own: each task batches the data itself (compares the loaders too)")
    parser.add_argument("--seconds-per-batch", type=float, default=None,
                        help=f"audio per update; default {SHARED_SECONDS:g} s with shared batches, each system's "
                             "recipe batch with its own")
    parser.add_argument("--compile", action="store_true",
                        help="the plugin's systems train with model.compile=true (stock HuBERT stays eager; "
                             "k2ssl_hubert_cosine is its network compiled); compiling falls in the warm-up updates")
    parser.add_argument("--updates", type=int, default=5, help="timed updates per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    parser.add_argument("--repeats", type=int, default=3, help="runs per system, interleaved with the others")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: torch's)")
    parser.add_argument("--out", type=Path, required=True, help="reports: JSON, Markdown, PNG plots")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="per-system logs and hydra run folders (default: a temporary folder)")
    args = parser.parse_args(argv)
    quiet_library_output()
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="k2ssl_benchmark_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    plan = None
    if args.batches == "shared":
        plan = work / "shared_batches.json"
        seconds = args.seconds_per_batch or SHARED_SECONDS
        write_json(plan, shared_plan(args.data / f"{args.train_subset}.tsv", seconds, args.updates + args.warmup))
    specs = [run_spec(system, args.size, args.data.resolve(), args.label_dir.resolve(),
                      (args.seconds_per_batch or SHARED_SECONDS) if plan else
                      (args.seconds_per_batch or RECIPE_SECONDS[system]),
                      args.device, args.updates, args.warmup, args.train_subset, args.compile)
             for system in args.systems]
    runs: Dict[str, List[Dict[str, Any]]] = {spec.system: [] for spec in specs}
    for repeat in range(args.repeats):
        for spec in specs[repeat % len(specs):] + specs[:repeat % len(specs)]:
            print(f"[repeat {repeat + 1}/{args.repeats}] {spec.system} ({args.size}, {args.device})", flush=True)
            runs[spec.system].append(run_system(spec, args.device, work / f"repeat{repeat}", plan, args.threads))
    records = [combine_runs(spec, runs[spec.system], args.device, args.batches) for spec in specs]
    write_reports(records, args.out)
    print((args.out / "benchmark.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
