"""Stages the WER experiments under ``benchmarks/`` share: labels, hydra runs that are reused when the
exact command already ran, fine-tuning, greedy decoding, parameter counts.

Every stage runs the project's own entry points in a subprocess (``fairseq-hydra-train`` through
``bench.common.hydra_train``, ``k2ssl_fairseq.tools.*``), so an experiment exercises what users run.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import presets
from .common import hydra_train, hydra_train_command, logged, thread_env


def run(cmd: Sequence[str], log: Path) -> str:
    """Run a command, keep its output in ``log``, fail with its tail; return the command line."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{tail}")
    return shlex.join(cmd)


def trained(proc: subprocess.CompletedProcess, seconds: float) -> Dict[str, Any]:
    """Command, wall time, updates and last losses of a hydra run."""
    log = proc.stdout + proc.stderr
    updates = logged(log, "train_inner")
    return {"command": shlex.join(proc.args), "wall_seconds": round(seconds, 1),
            "updates": int(float(updates[-1]["num_updates"])) if updates else 0,
            "first_loss": float(updates[0]["loss"]) if updates else None,
            "last_loss": float(updates[-1]["loss"]) if updates else None}


def make_labels(corpus: Path, labels: Path, clusters: int, from_checkpoint: Optional[Tuple[Path, int]] = None) -> str:
    """k-means labels at 50 Hz for ``pretrain`` (learned there) and ``valid``: MFCC (iteration 1), or with
    ``from_checkpoint=(checkpoint, layer)`` that model's layer (iteration 2). Reused if present and, for
    iteration 2, written after the checkpoint."""
    cmd = [sys.executable, "-m", "k2ssl_fairseq.tools.make_labels", "--data", str(corpus), "--out", str(labels),
           "--n-clusters", str(clusters), "--label-rate", "50", "--splits", "pretrain", "valid",
           "--train-split", "pretrain", "--max-points", "200000"]
    inputs: List[Path] = []
    if from_checkpoint is not None:
        checkpoint, layer = from_checkpoint
        cmd += ["--feature", "checkpoint", "--checkpoint", str(checkpoint), "--layer", str(layer)]
        inputs.append(checkpoint)
    if (labels / "dict.km.txt").is_file() and written_after(labels / "pretrain.km", inputs):
        return shlex.join(cmd) + "  # (reused existing output)"
    labels.mkdir(parents=True, exist_ok=True)
    return run(cmd, labels.parent / f"{labels.name}.log")


def pretrain_overrides(corpus: Path, labels: Path, minutes: float) -> List[str]:
    """What both pre-trainings share: data, labels, batch, crop, the time budget, no validation."""
    return [f"task.data={corpus}", f"task.label_dir={labels}", "task.labels=[km]", "dataset.train_subset=pretrain",
            "dataset.valid_subset=valid", "dataset.disable_validation=true", "dataset.max_tokens=100000",
            "task.max_sample_size=64000", "task.min_sample_size=8000", "optimization.max_update=10000000",
            f"optimization.stop_time_hours={minutes / 60.0}", "checkpoint.save_interval_updates=0"]


def written_after(output: Path, inputs: Sequence[Path]) -> bool:
    """Whether ``output`` exists and was written after every file in ``inputs`` (make's rule): a result
    made from a checkpoint that has since been retrained in the same place is stale."""
    if not output.is_file():
        return False
    written = output.stat().st_mtime_ns
    return all(Path(i).stat().st_mtime_ns <= written for i in inputs)


def train_once(overrides: Sequence[str], run_dir: Path, config_dir: Path, config_name: str,
               env: Optional[Dict[str, str]] = None, inputs: Sequence[Path] = ()) -> Dict[str, Any]:
    """Run a hydra training unless ``run_dir/record.json`` shows this exact command already ran after
    every file in ``inputs`` (e.g. the pre-trained checkpoint a fine-tuning starts from) was written.

    Reuse lets the fine-tuning stage be rerun with other settings on the same pre-trained models.
    """
    record_file = run_dir / "record.json"
    command = shlex.join(hydra_train_command(overrides, run_dir, config_dir, config_name))
    if written_after(record_file, inputs):
        record = json.loads(record_file.read_text())
        if record["command"] == command and (run_dir / "ckpt" / "checkpoint_last.pt").is_file():
            return {**record, "reused": True}
    # fairseq resumes from a checkpoint_last.pt it finds: one left by another command or an interrupted
    # run would silently continue instead of training this command from its start.
    shutil.rmtree(run_dir / "ckpt", ignore_errors=True)
    record_file.unlink(missing_ok=True)
    started = time.perf_counter()
    proc = hydra_train(overrides, run_dir, config_dir=config_dir, config_name=config_name, timeout=None, env=env)
    record = trained(proc, time.perf_counter() - started)
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    return record


def finetune(corpus: Path, pretrained: Path, preset: str, updates: int, run_dir: Path,
             extra: Sequence[str] = (), threads: Optional[int] = None, subset: str = "train",
             validate: bool = True) -> Dict[str, Any]:
    """The shared fine-tuning on ``subset``: with ``validate``, a pass on ``valid`` after every epoch (CTC
    loss, UER, WER in the log; nothing is selected on it); one save at the end, which is what gets decoded."""
    validation = ["dataset.disable_validation=false", "dataset.validate_interval=1"] if validate else [
        "dataset.disable_validation=true"]
    overrides = [f"task.data={corpus}", f"task.label_dir={corpus}", f"model.pretrained_path={pretrained}",
                 f"dataset.train_subset={subset}", f"optimization.max_update={updates}", *validation,
                 "checkpoint.save_interval=100000", *extra]
    env = None if threads is None else thread_env(threads)
    record = train_once(overrides, run_dir, presets.config_dir("finetune"), preset, env, inputs=[pretrained])
    valid = logged((run_dir / "train.log").read_text(), "valid")
    record["valid_curve"] = [{"epoch": v.get("epoch"), "updates": int(float(v["valid_num_updates"])),
                              "ctc_loss_per_letter": float(v.get("valid_nll_loss", v["valid_loss"])),
                              "uer": float(v["valid_uer"]),
                              "wer": float(v["valid_wer"])} for v in valid]
    return record


def decode(checkpoint: Path, corpus: Path, subset: str, out: Path) -> Dict[str, Any]:
    """Greedy CTC decoding of ``subset`` with ``k2ssl-decode-ctc``; its WER/CER report and command.
    A report in ``out`` written after the checkpoint is reused."""
    cmd = [sys.executable, "-m", "k2ssl_fairseq.tools.decode_ctc", "--checkpoint", str(checkpoint),
           "--data", str(corpus), "--subset", subset, "--results-dir", str(out), "--device", "cpu"]
    if written_after(out / "wer.json", [checkpoint]):
        command = shlex.join(cmd)
    else:
        command = run(cmd, out.parent / f"decode_{subset}.log")
    report = json.loads((out / "wer.json").read_text())
    return {"command": command, "wer": report["wer"], "cer": report["cer"], "word_errors": report["word_errors"],
            "ref_words": report["ref_words"], "utterances": report["utterances"]}


def saved_by_updates(ckpt_dir: Path, final_updates: int) -> List[Tuple[int, Path]]:
    """fairseq's ``checkpoint_<epoch>_<updates>.pt`` saves by update count, ending with the final model.

    fairseq writes no such file when an interval save falls on an epoch's last update (only
    ``checkpoint_last.pt``, overwritten later), so a curve can miss a point there."""
    saved = sorted((int(p.stem.rsplit("_", 1)[1]), p) for p in ckpt_dir.glob("checkpoint_*_*.pt"))
    saved = [(u, p) for u, p in saved if u < final_updates]
    return saved + [(final_updates, ckpt_dir / "checkpoint_last.pt")]


def valid_cer_curve(run_dir: Path, corpus: Path, final_updates: int) -> List[Dict[str, Any]]:
    """Greedy decoding of ``valid`` with every checkpoint a fine-tuning in ``run_dir`` saved, in update
    order. fairseq's own valid UER counts the word boundary ``|``, which CTC learns first, so early on it
    reads far lower than the CER (measured: UER 84.8 where the CER was 99.1)."""
    return [{"updates": updates, **decode(path, corpus, "valid", run_dir / f"decode_valid_{updates}")}
            for updates, path in saved_by_updates(run_dir / "ckpt", final_updates)]


def finetune_decoding_saves(corpus: Path, pretrained: Path, preset: str, updates: int, run_dir: Path,
                            overrides: Sequence[str], save_every: int, subset: str) -> Dict[str, Any]:
    """A fine-tuning on one thread without fairseq's validation pass (every epoch, i.e. every ~60 updates
    on 10 min of labels, with a misleading UER) that keeps a checkpoint every ``save_every`` updates and
    decodes each on ``valid``: ``valid_cer_curve``, and ``valid`` for the final model."""
    extra = ["dataset.valid_subset=valid", "optimization.max_epoch=100000",
             f"checkpoint.save_interval_updates={save_every}", "checkpoint.keep_interval_updates=-1", *overrides]
    record = finetune(corpus, pretrained, preset, updates, run_dir, extra, threads=1, subset=subset, validate=False)
    record["valid_cer_curve"] = valid_cer_curve(run_dir, corpus, record["updates"])
    record["valid"] = record["valid_cer_curve"][-1]
    return record


def parameter_count(checkpoint: Path) -> Dict[str, int]:
    """Parameters of the fine-tuned model: encoder (pre-training head removed) and CTC head."""
    from k2ssl_fairseq import checkpoints

    weights = checkpoints.load_checkpoint(checkpoint)["model"]
    head = sum(v.numel() for k, v in weights.items() if k.startswith("proj."))
    encoder = sum(v.numel() for k, v in weights.items() if k.startswith("encoder.") and v.is_floating_point())
    return {"encoder_parameters": int(encoder), "head_parameters": int(head)}
