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
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from k2ssl_fairseq.bench.common import git_commit
from k2ssl_fairseq.bench.experiment import (
    decode,
    finetune,
    make_labels,
    parameter_count,
    pretrain_overrides,
    train_once,
)
from k2ssl_fairseq.bench.stock import stock_hubert_config_dir

#: Stock HuBERT shrunk to about the Zipformer tiny preset's parameter count (both counted and reported).
HUBERT_TINY = {
    "encoder_layers": 4, "encoder_embed_dim": 96, "encoder_ffn_embed_dim": 384, "encoder_attention_heads": 4,
    "final_dim": 32, "conv_feature_layers": "'[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2'",
    "conv_pos": 16, "conv_pos_groups": 4,
}


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
