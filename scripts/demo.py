#!/usr/bin/env python3
"""The main job (``make demo``): corpus → MFCC k-means labels → pre-train → fine-tune CTC → WER → A/B.

Every stage writes into ``--work-dir`` and is skipped when its output already exists, so an
interrupted demo resumes where it stopped. All training goes through fairseq's own
``fairseq-hydra-train`` (as ``k2ssl-hydra-train``, i.e. with the plugin imported first) on the
yaml presets under ``config/`` (``zipformer_small``); nothing here is a special demo-only path.
Training is budgeted in updates, so a busy machine makes the demo slower, never worse; each stage
prints an estimate measured on a quiet 2-core machine and, while training, an ETA from its own pace.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from k2ssl_fairseq.bench.common import accuracy_curve, log_record, thread_env  # noqa: E402

PLUGIN = ROOT / "k2ssl_fairseq"
#: Progress lines worth showing from each stage's log.
SHOWN = ("synthesized", "converted", "k-means", "labels", "wrote", "WER", "error")
#: Small models train faster on one thread than on two here (README: measured 0.65 vs 0.78 s/update).
ONE_THREAD = thread_env(1)
#: Pace of the training stages on the demo corpus, one thread, measured on this 2-core machine.
PRETRAIN_SECONDS_PER_UPDATE = 0.9
FINETUNE_SECONDS_PER_UPDATE = 0.6


def run(cmd: Sequence[object], log: Path, total_updates: Optional[int] = None, env: Optional[dict] = None) -> None:
    """Run a stage's command, showing its progress (with an ETA for training); stop the demo with
    the log's tail on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    last_report = 0.0
    with open(log, "w") as sink, subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                                                  stderr=subprocess.STDOUT, text=True,
                                                  env={**os.environ, **(env or {})}) as proc:
        for line in proc.stdout:
            sink.write(line)
            record = log_record(line, "train_inner") if total_updates else None
            if record is not None:
                done, wall = int(float(record["num_updates"])), float(record["wall"])
                if time.time() - last_report > 30 or done == total_updates:
                    last_report = time.time()
                    eta = wall / max(done, 1) * (total_updates - done)
                    print(f"    update {done}/{total_updates}, loss {float(record['loss']):.3f}, "
                          f"{wall:.0f} s so far, ETA {eta:.0f} s", flush=True)
            elif any(key in line for key in SHOWN) and "[train_inner]" not in line:
                print("    " + line.rstrip()[:200], flush=True)
    if proc.returncode != 0:
        sys.exit(f"stage failed ({proc.returncode}); log: {log}\n" + "".join(open(log).readlines()[-40:]))


def hydra(kind: str, config_name: str, run_dir: Path, overrides: List[str]) -> List[object]:
    return [sys.executable, "-m", "k2ssl_fairseq.cli", "--config-dir", ROOT / "config" / kind, "--config-name",
            config_name, f"hydra.run.dir={run_dir}", f"checkpoint.save_dir={run_dir / 'ckpt'}",
            f"common.user_dir={PLUGIN}", "common.log_interval=10", *overrides]


def stage(name: str, estimate: str, done: Path, action: Callable[[], None]) -> None:
    if done.exists():
        print(f"== {name}: already done ({done})", flush=True)
        return
    print(f"== {name} (about {estimate} on a quiet 2-core machine)", flush=True)
    start = time.time()
    action()
    if not done.exists():
        sys.exit(f"stage {name!r} finished without producing {done}")
    print(f"   {name} took {time.time() - start:.0f} s", flush=True)


def plot_pretraining(log: Path, out: Path) -> None:
    """Masked-prediction accuracy against updates, from the pre-training's own log (one point per
    log interval, which fairseq already averages)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = accuracy_curve(log.read_text(), window=1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["updates"] for p in curve], [p["masked_accuracy"] for p in curve])
    ax.set_xlabel("pre-training updates (zipformer_small, MFCC k-means labels)")
    ax.set_ylabel("masked-prediction accuracy (10-update means)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def examples(decode: Path, count: int = 3) -> str:
    refs = (decode / "ref.wrd").read_text().splitlines()
    hyps = (decode / "hyp.wrd").read_text().splitlines()
    return "\n".join(f"  REF: {ref}\n  HYP: {hyp}" for ref, hyp in list(zip(refs, hyps))[:count])


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "demo_work")
    parser.add_argument("--minutes", type=float, default=100.0, help="labelled audio of the demo corpus")
    parser.add_argument("--pretrain-updates", type=int, default=300, help="pre-training updates (24 s batches)")
    parser.add_argument("--finetune-updates", type=int, default=1500, help="CTC fine-tuning updates (12.5 s batches)")
    parser.add_argument("--clusters", type=int, default=100)
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    corpus, labels = work / "corpus", work / "labels"
    pretrain, finetune, decode, ab = work / "pretrain", work / "finetune", work / "decode", work / "ab"
    scripts = ROOT / "scripts"
    py = sys.executable

    stage("1/6 demo corpus", "2 min", corpus / "corpus.json", lambda: (
        run([py, scripts / "make_demo_corpus.py", corpus, "--minutes", args.minutes], work / "logs" / "corpus.log"),
        run([py, scripts / "validate_corpus.py", corpus], work / "logs" / "validate.log")))
    stage("2/6 MFCC k-means labels (50 Hz)", "1 min", labels / "dict.km.txt", lambda: run(
        [py, scripts / "make_labels.py", "--data", corpus, "--out", labels, "--splits", "pretrain", "valid",
         "--train-split", "pretrain", "--n-clusters", args.clusters, "--feature", "mfcc", "--label-rate", "50"],
        work / "logs" / "labels.log"))
    stage(f"3/6 pre-train zipformer_small, {args.pretrain_updates} updates (plugin, fairseq-hydra-train)",
          f"{args.pretrain_updates * PRETRAIN_SECONDS_PER_UPDATE / 60:.0f} min",
          pretrain / "ckpt" / "checkpoint_last.pt",
          lambda: run(hydra("pretrain", "zipformer_small", pretrain, [
              f"task.data={corpus}", f"task.label_dir={labels}", "dataset.train_subset=pretrain",
              "dataset.valid_subset=valid", "dataset.disable_validation=true",
              f"optimization.max_update={args.pretrain_updates}"]),
              work / "logs" / "pretrain.log", args.pretrain_updates, ONE_THREAD))
    stage(f"4/6 fine-tune letter CTC on train, {args.finetune_updates} updates",
          f"{args.finetune_updates * FINETUNE_SECONDS_PER_UPDATE / 60:.0f} min",
          finetune / "ckpt" / "checkpoint_last.pt", lambda: run(
              hydra("finetune", "zipformer_small", finetune, [
                  f"task.data={corpus}", f"task.label_dir={corpus}",
                  f"model.pretrained_path={pretrain / 'ckpt' / 'checkpoint_last.pt'}",
                  # Chosen on valid (benchmarks/results/finetune_sweep_demo_*.md; the preset's k2SSL lr
                  # 1e-3 is meant for ~100k updates): lr 0.02 and masking 0.3; the preset's schedules
                  # already advance 8 batch counts per update so that layer skipping ends within the run.
                  "optimization.lr=[0.02]", "model.mask_prob=0.3",
                  "dataset.disable_validation=true",
                  f"optimization.max_update={args.finetune_updates}", "optimization.max_epoch=100000",
                  "checkpoint.save_interval=100000"]),
              work / "logs" / "finetune.log", args.finetune_updates, ONE_THREAD))
    stage("5/6 decode test (greedy CTC)", "1 min", decode / "wer.json", lambda: run(
        [py, scripts / "decode_ctc.py", "--checkpoint", finetune / "ckpt" / "checkpoint_last.pt", "--data", corpus,
         "--subset", "test", "--results-dir", decode], work / "logs" / "decode.log"))
    stage("6/6 A/B at Base size: one pre-training step of stock HuBERT vs the plugin's Zipformer, equal batches",
          "4 min", ab / "benchmark.md", lambda: run(
              [py, scripts / "benchmark.py", "--data", corpus, "--label-dir", labels, "--train-subset", "pretrain",
               "--size", "base", "--systems", "stock_hubert", "zipformer_ssl", "--seconds-per-batch", "40",
               "--updates", "2", "--warmup", "1", "--repeats", "1", "--out", ab], work / "logs" / "benchmark.log"))
    plot_pretraining(work / "logs" / "pretrain.log", work / "pretraining_curve.png")

    wer = json.loads((decode / "wer.json").read_text())
    print(f"\nTest WER {wer['wer']:.2f}%  CER {wer['cer']:.2f}%  ({decode / 'wer.json'})")
    print("Three test utterances (held-out voices and sentences):\n" + examples(decode))
    print("\n" + (ab / "benchmark.md").read_text())
    print(f"plots: {work / 'pretraining_curve.png'}, {ab / 'throughput_memory.png'}")


if __name__ == "__main__":
    main()
