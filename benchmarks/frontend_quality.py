#!/usr/bin/env python
"""Does the fbank front-end learn as well per second as the waveform CNN? Tiny Zipformers, equal cost.

Both Zipformer tiny pre-trainings (``pretrain/zipformer_tiny``: the CNN; ``pretrain/zipformer_fbank_tiny``:
the fbank front-end at 50 Hz) run at the same time, one thread each, on the same labels and batches
budget, for the same training time (fairseq's ``optimization.stop_time_hours``), so a busy machine
slows both alike. Each then validates once on ``valid`` (masked-prediction accuracy), and is
fine-tuned with the same letter-CTC recipe (``finetune/zipformer_tiny``, the same number of updates,
again side by side) and decoded greedily on ``valid`` and ``test``.

Writes ``frontend_quality.json`` and ``frontend_quality.md`` into ``--results``.

    python benchmarks/frontend_quality.py --corpus DEMO --work /tmp/fq --pretrain-minutes 15 \\
        --finetune-updates 1500 --finetune-lr 0.02
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

from k2ssl_fairseq import presets
from k2ssl_fairseq.bench.common import logged, provenance, thread_env
from k2ssl_fairseq.bench.experiment import decode, finetune, make_labels, pretrain_overrides, train_once

SYSTEMS = {"zipformer_cnn": "zipformer_tiny", "zipformer_fbank": "zipformer_fbank_tiny"}


def pretrain(corpus: Path, labels: Path, minutes: float, preset: str, run_dir: Path) -> Dict[str, Any]:
    """The shared pre-training budget with one validation at the end (its masked accuracy)."""
    overrides = [o for o in pretrain_overrides(corpus, labels, minutes) if not o.startswith("dataset.disable_validation")]
    overrides += ["task.max_duration=null", "dataset.disable_validation=false", "dataset.validate_interval=100000"]
    record = train_once(overrides, run_dir, presets.config_dir("pretrain"), preset, thread_env(1))
    valid = logged((run_dir / "train.log").read_text(), "valid")
    record["valid_masked_accuracy"] = float(valid[-1]["valid_correct_m_0"]) if valid else None
    record["valid_loss"] = float(valid[-1]["valid_loss"]) if valid else None
    return record


def markdown(records: List[Dict[str, Any]], settings: Dict[str, Any]) -> str:
    lines = ["# CNN vs fbank front-end: Zipformer tiny at equal pre-training time (CPU)", "",
             f"Settings: {json.dumps(settings)}", "",
             "| system | pre-train updates (wall s) | valid masked accuracy | fine-tune updates | valid CER | "
             "test CER | test WER |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        pre = r["pretrain"]
        lines.append(f"| {r['system']} | {pre['updates']} ({pre['wall_seconds']}) | "
                     f"{pre['valid_masked_accuracy']:.4f} | {r['finetune']['updates']} | {r['valid']['cer']:.2f} | "
                     f"{r['test']['cer']:.2f} | {r['test']['wer']:.2f} |")
    lines += ["", "Commands:", ""]
    for r in records:
        lines.append(f"- **{r['system']}**")
        for step in ("pretrain", "finetune", "valid", "test"):
            lines.append(f"  - {step}: `{r[step]['command']}`")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="demo corpus (pretrain/train/valid/test)")
    parser.add_argument("--work", type=Path, required=True, help="scratch directory for labels and runs")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--pretrain-minutes", type=float, default=15.0, help="training time per pre-training")
    parser.add_argument("--finetune-updates", type=int, default=1500, help="fine-tuning updates per system")
    parser.add_argument("--finetune-lr", type=float, default=0.02, help="fine-tuning base lr (both systems)")
    parser.add_argument("--clusters", type=int, default=100, help="k-means clusters of the pre-training labels")
    args = parser.parse_args(argv)
    corpus, work = args.corpus.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    settings = {"corpus": str(corpus), "pretrain_minutes": args.pretrain_minutes, "threads_per_system": 1,
                "finetune_updates": args.finetune_updates, "finetune_lr": args.finetune_lr, "clusters": args.clusters}
    labels_command = make_labels(corpus, work / "labels", args.clusters)

    def run_system(item) -> Dict[str, Any]:
        name, preset = item
        pre = pretrain(corpus, work / "labels", args.pretrain_minutes, preset, work / f"{name}_pt")
        checkpoint = work / f"{name}_pt" / "ckpt" / "checkpoint_last.pt"
        tuned = finetune(corpus, checkpoint, "zipformer_tiny", args.finetune_updates, work / f"{name}_ft",
                         [f"optimization.lr=[{args.finetune_lr}]"], threads=1)
        final = work / f"{name}_ft" / "ckpt" / "checkpoint_last.pt"
        return {"system": name, "preset": preset, "pretrain": pre, "finetune": tuned, "labels_command": labels_command,
                **{subset: decode(final, corpus, subset, work / f"{name}_ft" / f"decode_{subset}")
                   for subset in ("valid", "test")}}

    with ThreadPoolExecutor(len(SYSTEMS)) as pool:  # side by side: the same machine state for both
        records = list(pool.map(run_system, SYSTEMS.items()))
    run_record = provenance("cpu")
    run_record["command"] = shlex.join([sys.executable, *sys.argv])
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "frontend_quality.json").write_text(
        json.dumps({"settings": settings, "records": records, **run_record}, indent=2) + "\n")
    (args.results / "frontend_quality.md").write_text(markdown(records, settings))
    print((args.results / "frontend_quality.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
