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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from k2ssl_fairseq.bench.common import git_commit, hydra_train, hydra_train_command, logged
from k2ssl_fairseq.bench.stock import stock_hubert_config_dir

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
    overrides = pretrain_overrides(corpus, labels, minutes) + ["task.max_duration=null"]  # batch from max_tokens
    return train_once(overrides, run_dir, REPO / "config" / "pretrain", "zipformer_tiny")


def pretrain_hubert(corpus: Path, labels: Path, minutes: float, run_dir: Path) -> Dict[str, Any]:
    """Stock HuBERT: fairseq's own base yaml, shrunk; Adam 5e-4 (stock) with a 100-update warm-up."""
    sizes = [f"+model.{k}={v}" if k not in ("final_dim", "conv_feature_layers") else f"model.{k}={v}"
             for k, v in HUBERT_TINY.items()]
    overrides = pretrain_overrides(corpus, labels, minutes) + sizes + [
        "model.label_rate=50", "lr_scheduler.warmup_updates=100", "common.fp16=false"]
    return train_once(overrides, run_dir, stock_hubert_config_dir(), "hubert_base_librispeech")


def train_once(overrides: Sequence[str], run_dir: Path, config_dir: Path, config_name: str,
               env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run a hydra training unless ``run_dir/record.json`` shows this exact command already ran.

    Reuse lets the fine-tuning stage be rerun with other settings on the same pre-trained models.
    """
    record_file = run_dir / "record.json"
    command = shlex.join(hydra_train_command(overrides, run_dir, config_dir, config_name))
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if record["command"] == command and (run_dir / "ckpt" / "checkpoint_last.pt").is_file():
            return {**record, "reused": True}
    started = time.perf_counter()
    proc = hydra_train(overrides, run_dir, config_dir=config_dir, config_name=config_name, timeout=None, env=env)
    record = trained(proc, time.perf_counter() - started)
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    return record


def finetune(corpus: Path, pretrained: Path, preset: str, updates: int, run_dir: Path,
             extra: Sequence[str] = (), threads: Optional[int] = None) -> Dict[str, Any]:
    """The shared fine-tuning: validation on ``valid`` after every epoch (CTC loss, UER, WER in the
    log; nothing is selected on it), one save at the end, which is what gets decoded."""
    overrides = [f"task.data={corpus}", f"task.label_dir={corpus}", f"model.pretrained_path={pretrained}",
                 f"optimization.max_update={updates}", "dataset.disable_validation=false",
                 "dataset.validate_interval=1", "checkpoint.save_interval=100000", *extra]
    env = None if threads is None else {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    record = train_once(overrides, run_dir, REPO / "config" / "finetune", preset, env)
    valid = logged((run_dir / "train.log").read_text(), "valid")
    record["valid_curve"] = [{"epoch": v.get("epoch"), "updates": int(float(v["valid_num_updates"])),
                              "ctc_loss_per_letter": float(v.get("valid_nll_loss", v["valid_loss"])), "uer": float(v["valid_uer"]),
                              "wer": float(v["valid_wer"])} for v in valid]
    return record


def decode(checkpoint: Path, corpus: Path, subset: str, out: Path) -> Dict[str, Any]:
    cmd = [sys.executable, "scripts/decode_ctc.py", "--checkpoint", str(checkpoint), "--data", str(corpus),
           "--subset", subset, "--results-dir", str(out), "--device", "cpu"]
    command = run(cmd, out.parent / f"decode_{subset}.log")
    report = json.loads((out / "wer.json").read_text())
    return {"command": command, "wer": report["wer"], "cer": report["cer"], "word_errors": report["word_errors"],
            "ref_words": report["ref_words"], "utterances": report["utterances"]}


def parameter_count(checkpoint: Path) -> Dict[str, int]:
    """Parameters of the fine-tuned model: encoder (pre-training head removed) and CTC head."""
    from k2ssl_fairseq import checkpoints

    weights = checkpoints.load_checkpoint(checkpoint)["model"]
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
    parser.add_argument("--finetune-overrides", nargs="*", default=[],
                        help="extra hydra overrides for every fine-tuning, e.g. model.mask_prob=0.3")
    parser.add_argument("--parallel", action="store_true",
                        help="run the three fine-tunings at once, one thread each")
    parser.add_argument("--finetune-lr", type=float,
                        help="fine-tuning base lr for every system (default: the presets' k2SSL 1e-3, "
                             "which is meant for runs of ~100k updates)")
    args = parser.parse_args(argv)
    corpus, work = args.corpus.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    settings = {"corpus": str(corpus), "pretrain_minutes": args.pretrain_minutes,
                "finetune_updates": args.finetune_updates, "clusters": args.clusters,
                "finetune_lr": args.finetune_lr, "finetune_overrides": args.finetune_overrides,
                "parallel": args.parallel}
    shared_finetune = ([] if args.finetune_lr is None else [f"optimization.lr=[{args.finetune_lr}]"]) + list(
        args.finetune_overrides)

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

    def finetune_system(system) -> Dict[str, Any]:
        name, _, checkpoint, preset, extra = system
        return finetune(corpus, checkpoint, preset, args.finetune_updates, work / f"{name}_ft",
                        [*shared_finetune, *extra], threads=1 if args.parallel else None)

    if args.parallel:  # one thread each: tiny models use a core better than two cores share one model
        with ThreadPoolExecutor(len(systems)) as pool:
            finetuned = list(pool.map(finetune_system, systems))
    else:
        finetuned = [finetune_system(system) for system in systems]
    records = []
    for (name, pre, _, _, _), finetune_record in zip(systems, finetuned):
        run_dir = work / f"{name}_ft"
        record: Dict[str, Any] = {"system": name, "size": "tiny", "device": "cpu", "pretrain": pre,
                                  "labels_command": labels_command, "finetune": finetune_record}
        checkpoint = run_dir / "ckpt" / "checkpoint_last.pt"
        record.update(parameter_count(checkpoint))
        for subset in ("valid", "test"):
            record[subset] = decode(checkpoint, corpus, subset, run_dir / f"decode_{subset}")
        record.update(command=shlex.join([sys.executable, *sys.argv]), git_commit=git_commit(),
                      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      machine=f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip())
        records.append(record)
        print(f"{name}: valid WER {record['valid']['wer']:.2f} CER {record['valid']['cer']:.2f}", flush=True)
    write_results(args.results, records, settings)


def write_results(results: Path, records: List[Dict[str, Any]], settings: Dict[str, Any]) -> None:
    """JSON and Markdown of the systems finished so far (rewritten after each one)."""
    results.mkdir(parents=True, exist_ok=True)
    (results / "finetune_experiment.json").write_text(
        json.dumps({"settings": settings, "records": records}, indent=2) + "\n")
    (results / "finetune_experiment.md").write_text(markdown(records, settings))


if __name__ == "__main__":
    main()
