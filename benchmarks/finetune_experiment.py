#!/usr/bin/env python
"""Does pre-training help, and does Zipformer beat HuBERT? Letter-CTC WER on the demo corpus.

Systems, all fine-tuned the same way (``config/finetune/*_tiny.yaml``: k2SSL's ScaledAdam 1e-3 +
Eden, masking 0.65, the same number of updates on ``train``):

* ``zipformer_pretrained``: Zipformer tiny (``config/pretrain/zipformer_tiny.yaml``) pre-trained on
  ``pretrain`` with k-means labels for ``--pretrain-minutes`` of training time, then fine-tuned;
* ``zipformer_scratch``: the same fine-tuning from a random initialisation of the same architecture;
* ``hubert_pretrained``: stock fairseq HuBERT (``hubert_base_librispeech.yaml`` shrunk to the
  Zipformer's parameter count) pre-trained with the same labels and training-time budget, then
  fine-tuned (the checkpoint is migrated to ``k2ssl_hubert`` on load).

Labels: MFCC k-means (``scripts/make_labels.py``, 50 Hz) learned on ``pretrain``. Pre-training stops
on fairseq's ``optimization.stop_time_hours`` (cumulative training time). Fine-tuned models are
decoded greedily on ``valid`` and ``test`` with ``scripts/decode_ctc.py``; nothing is selected on
``test``. Writes ``finetune_experiment.json`` (one record per system, with every command) and
``finetune_experiment.md`` into ``--results``.

Example (the corpus comes from ``scripts/make_demo_corpus.py OUT``)::

    python benchmarks/finetune_experiment.py --corpus /data/demo --work /tmp/ft_exp \\
        --pretrain-minutes 30 --finetune-updates 2000
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from k2ssl_fairseq.testing import hydra_train, stock_hubert_config_dir  # noqa: E402
from k2ssl_fairseq.benchmark import git_commit

#: Stock HuBERT shrunk to about the Zipformer tiny preset's parameter count (both counted and reported).
HUBERT_TINY = {
    "encoder_layers": 4, "encoder_embed_dim": 96, "encoder_ffn_embed_dim": 384, "encoder_attention_heads": 4,
    "final_dim": 32, "conv_feature_layers": "'[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2'",
    "conv_pos": 16, "conv_pos_groups": 4,
}


def run(cmd: Sequence[str], log: Path) -> str:
    """Run a command, keep its output in ``log``, fail with its tail; return the command line."""
    proc = subprocess.run(list(cmd), cwd=REPO, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{(proc.stdout + proc.stderr)[-4000:]}")
    return shlex.join(cmd)


def logged(log: str, tag: str) -> List[Dict[str, Any]]:
    """fairseq's json log records of one kind (``train_inner``, ``valid``, ``train``)."""
    return [json.loads(line.split(" - ", 1)[1]) for line in log.splitlines() if f"[{tag}][INFO] - {{" in line]


def trained(proc: subprocess.CompletedProcess, seconds: float) -> Dict[str, Any]:
    """Command, wall time, updates and last losses of a hydra run."""
    log = proc.stdout + proc.stderr
    updates = logged(log, "train_inner")
    return {"command": shlex.join(proc.args), "wall_seconds": round(seconds, 1),
            "updates": int(float(updates[-1]["num_updates"])) if updates else 0,
            "first_loss": float(updates[0]["loss"]) if updates else None,
            "last_loss": float(updates[-1]["loss"]) if updates else None}


def make_labels(corpus: Path, labels: Path, clusters: int) -> str:
    """MFCC k-means labels at 50 Hz for ``pretrain`` (learned there) and ``valid``; reused if present."""
    cmd = [sys.executable, "scripts/make_labels.py", "--data", str(corpus), "--out", str(labels),
           "--n-clusters", str(clusters), "--label-rate", "50", "--splits", "pretrain", "valid",
           "--train-split", "pretrain", "--max-points", "200000"]
    if (labels / "dict.km.txt").is_file() and (labels / "pretrain.km").is_file():
        return shlex.join(cmd) + "  # (reused existing output)"
    labels.mkdir(parents=True, exist_ok=True)
    return run(cmd, labels.parent / "labels.log")


def pretrain_overrides(corpus: Path, labels: Path, minutes: float) -> List[str]:
    """What both pre-trainings share: data, labels, batch, crop, the time budget, no validation."""
    return [f"task.data={corpus}", f"task.label_dir={labels}", "task.labels=[km]", "dataset.train_subset=pretrain",
            "dataset.valid_subset=valid", "dataset.disable_validation=true", "dataset.max_tokens=100000",
            "task.max_sample_size=64000", "task.min_sample_size=8000", "optimization.max_update=10000000",
            f"optimization.stop_time_hours={minutes / 60.0}", "checkpoint.save_interval_updates=0"]


def pretrain_zipformer(corpus: Path, labels: Path, minutes: float, run_dir: Path) -> Dict[str, Any]:
    started = time.perf_counter()
    overrides = pretrain_overrides(corpus, labels, minutes) + ["task.max_duration=null"]  # batch from max_tokens
    proc = hydra_train(overrides, run_dir,
                       config_dir=REPO / "config" / "pretrain", config_name="zipformer_tiny", timeout=None)
    return trained(proc, time.perf_counter() - started)


def pretrain_hubert(corpus: Path, labels: Path, minutes: float, run_dir: Path) -> Dict[str, Any]:
    """Stock HuBERT: fairseq's own base yaml, shrunk; Adam 5e-4 (stock) with a 100-update warm-up."""
    sizes = [f"+model.{k}={v}" if k not in ("final_dim", "conv_feature_layers") else f"model.{k}={v}"
             for k, v in HUBERT_TINY.items()]
    overrides = pretrain_overrides(corpus, labels, minutes) + sizes + [
        "model.label_rate=50", "lr_scheduler.warmup_updates=100", "common.fp16=false"]
    started = time.perf_counter()
    proc = hydra_train(overrides, run_dir, config_dir=stock_hubert_config_dir(),
                       config_name="hubert_base_librispeech", timeout=None)
    return trained(proc, time.perf_counter() - started)


def finetune(corpus: Path, pretrained: Path, preset: str, updates: int, run_dir: Path,
             extra: Sequence[str] = ()) -> Dict[str, Any]:
    """The shared fine-tuning: no validation (the decoder scores valid), one save at the end (no selection)."""
    overrides = [f"task.data={corpus}", f"task.label_dir={corpus}", f"model.pretrained_path={pretrained}",
                 f"optimization.max_update={updates}", "dataset.disable_validation=true",
                 "checkpoint.save_interval=100000", *extra]
    started = time.perf_counter()
    proc = hydra_train(overrides, run_dir, config_dir=REPO / "config" / "finetune", config_name=preset, timeout=None)
    return trained(proc, time.perf_counter() - started)


def decode(checkpoint: Path, corpus: Path, subset: str, out: Path) -> Dict[str, Any]:
    cmd = [sys.executable, "scripts/decode_ctc.py", "--checkpoint", str(checkpoint), "--data", str(corpus),
           "--subset", subset, "--results-dir", str(out), "--device", "cpu"]
    command = run(cmd, out.parent / f"decode_{subset}.log")
    report = json.loads((out / "wer.json").read_text())
    return {"command": command, "wer": report["wer"], "cer": report["cer"], "word_errors": report["word_errors"],
            "ref_words": report["ref_words"], "utterances": report["utterances"]}


def parameter_count(checkpoint: Path) -> Dict[str, int]:
    """Parameters of the fine-tuned model: encoder (pre-training head removed) and CTC head."""
    from k2ssl_fairseq import compat

    weights = compat.load_checkpoint(checkpoint)["model"]
    head = sum(v.numel() for k, v in weights.items() if k.startswith("proj."))
    encoder = sum(v.numel() for k, v in weights.items() if k.startswith("encoder.") and v.is_floating_point())
    return {"encoder_parameters": int(encoder), "head_parameters": int(head)}


def markdown(records: List[Dict[str, Any]], settings: Dict[str, Any]) -> str:
    lines = [
        "# Letter-CTC fine-tuning on the demo corpus",
        "",
        f"Settings: {json.dumps(settings)}",
        "",
        "| system | encoder params | pre-train updates (wall s) | fine-tune updates | valid WER | valid CER | test WER | test CER |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        pre = r.get("pretrain")
        pre_text = f"{pre['updates']} ({pre['wall_seconds']})" if pre else "none (random init)"
        lines.append(f"| {r['system']} | {r['encoder_parameters']:,} | {pre_text} | {r['finetune']['updates']} | "
                     f"{r['valid']['wer']:.2f} | {r['valid']['cer']:.2f} | {r['test']['wer']:.2f} | "
                     f"{r['test']['cer']:.2f} |")
    lines += ["", "Commands (in order):", ""]
    for r in records:
        lines.append(f"- **{r['system']}**")
        for step in ("pretrain", "finetune", "valid", "test"):
            if r.get(step):
                lines.append(f"  - {step}: `{r[step]['command']}`")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="demo corpus (pretrain/train/valid/test)")
    parser.add_argument("--work", type=Path, required=True, help="scratch directory for labels and runs")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--pretrain-minutes", type=float, default=30.0, help="training-time budget per pre-training")
    parser.add_argument("--finetune-updates", type=int, default=2000, help="fine-tuning updates per system")
    parser.add_argument("--clusters", type=int, default=100, help="k-means clusters of the pre-training labels")
    parser.add_argument("--finetune-lr", type=float,
                        help="fine-tuning base lr for every system (default: the presets' k2SSL 1e-3, "
                             "which is meant for runs of ~100k updates)")
    args = parser.parse_args(argv)
    corpus, work = args.corpus.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    settings = {"corpus": str(corpus), "pretrain_minutes": args.pretrain_minutes,
                "finetune_updates": args.finetune_updates, "clusters": args.clusters,
                "finetune_lr": args.finetune_lr}
    shared_finetune = [] if args.finetune_lr is None else [f"optimization.lr=[{args.finetune_lr}]"]

    labels_command = make_labels(corpus, work / "labels", args.clusters)
    zip_pre = pretrain_zipformer(corpus, work / "labels", args.pretrain_minutes, work / "zipformer_pt")
    hub_pre = pretrain_hubert(corpus, work / "labels", args.pretrain_minutes, work / "hubert_pt")
    zip_ckpt = work / "zipformer_pt" / "ckpt" / "checkpoint_last.pt"
    hub_ckpt = work / "hubert_pt" / "ckpt" / "checkpoint_last.pt"
    systems = [
        ("zipformer_pretrained", zip_pre, zip_ckpt, "zipformer_tiny", []),
        ("zipformer_scratch", None, zip_ckpt, "zipformer_tiny", ["model.pretrained_weights=false"]),
        ("hubert_pretrained", hub_pre, hub_ckpt, "hubert_tiny", []),
    ]
    records = []
    for name, pre, checkpoint, preset, extra in systems:
        run_dir = work / f"{name}_ft"
        record: Dict[str, Any] = {"system": name, "size": "tiny", "device": "cpu", "pretrain": pre,
                                  "labels_command": labels_command}
        record["finetune"] = finetune(corpus, checkpoint, preset, args.finetune_updates, run_dir,
                                      [*shared_finetune, *extra])
        finetuned = run_dir / "ckpt" / "checkpoint_last.pt"
        record.update(parameter_count(finetuned))
        for subset in ("valid", "test"):
            record[subset] = decode(finetuned, corpus, subset, run_dir / f"decode_{subset}")
        record.update(command=shlex.join([sys.executable, *sys.argv]), git_commit=git_commit(),
                      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      machine=f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip())
        records.append(record)
        print(f"{name}: valid WER {record['valid']['wer']:.2f} test WER {record['test']['wer']:.2f}", flush=True)
        write_results(args.results, records, settings)


def write_results(results: Path, records: List[Dict[str, Any]], settings: Dict[str, Any]) -> None:
    """JSON and Markdown of the systems finished so far (rewritten after each one)."""
    results.mkdir(parents=True, exist_ok=True)
    (results / "finetune_experiment.json").write_text(
        json.dumps({"settings": settings, "records": records}, indent=2) + "\n")
    (results / "finetune_experiment.md").write_text(markdown(records, settings))


if __name__ == "__main__":
    main()
