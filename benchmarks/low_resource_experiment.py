#!/usr/bin/env python
"""Does pre-training pay when labels are scarce? Small Zipformer vs stock HuBERT, letter CTC, CPU.

The corpus comes from ``k2ssl-make-demo-corpus OUT --minutes 100 --pool-hours 10.5``: a >= 10 h
unlabelled ``pretrain`` pool (every packaged Asterisk prompt in five languages plus espeak-ng/flite
speech from dozens of voices) and the nested labelled subsets ``train_10min`` and ``train_1h``;
``valid`` and ``test`` are read by held-out voices on held-out sentences.

1. Labels: MFCC k-means at 50 Hz learned on ``pretrain`` (``k2ssl-make-labels``).
2. Pre-training, all systems at once, one thread each, for the same wall-clock budget (fairseq's
   ``optimization.stop_time_hours``), so each sees the same machine: ``zipformer_small`` (the plugin,
   ``pretrain/zipformer_small``: ScaledAdam + Eden, bucketed task) and ``hubert_small`` (stock fairseq
   HuBERT from fairseq's own ``hubert_base_librispeech.yaml``, shrunk by
   ``k2ssl_fairseq.bench.stock.STOCK_HUBERT_SIZES["small"]``; its recipe's Adam 5e-4, polynomial decay
   over the updates one hour gives); optionally ``zipformer_fbank_small``. Same batch audio (24 s).
3. Fine-tuning, for each labelled size: every pre-trained system, and ``zipformer_scratch`` (the same
   Zipformer, random weights), with the same letter-CTC recipe and the same number of updates
   (budgeted in updates: a busy machine makes this stage slower, never different), ``--parallel``
   runs at a time, one thread each.
4. Greedy CTC decoding (``k2ssl-decode-ctc``) of ``valid`` with every checkpoint kept along the
   fine-tuning (``--save-every``: the valid CER curve), and of ``test`` with the final model only;
   settings are chosen on ``valid`` only.
5. With ``--along-pretraining U...``: the Zipformer fine-tuned on 10 min of labels from its pre-training
   after U updates (kept checkpoints within the budget; beyond it, the pre-training resumed until U
   updates): test CER against pre-training minutes, scratch being 0 minutes.
6. With ``--second-iteration-layer L``: HuBERT's second label iteration, k-means on stack L of the
   Zipformer's final checkpoint; a fresh Zipformer pre-trained on those labels for as many updates as the
   first (and with ``--second-iteration-resume U`` the first resumed on them until U), fine-tuned on 10 min
   of labels and set beside the same updates on MFCC labels.

Writes ``low_resource_cpu.json`` (schema: ``{"runs": [{"system", "labelled", "pretrain_minutes",
"pretrain_updates", "finetune_updates", "test_cer", "test_wer", "valid_cer"}], "command",
"git_commit", "machine"}`` plus settings, pre-training curves and every command), ``.md`` and ``.png``
(test CER per system and labelled size; masked accuracy against pre-training minutes) into ``--results``.
Every training and decoding is reused when its record shows the identical command already finished
after the checkpoint it starts from was written, so a rerun resumes after the last finished run.

    python benchmarks/low_resource_experiment.py --corpus /work/exp/corpus --work /work/exp/runs \\
        --pretrain-minutes 60 --expected-updates 3500 --finetune-updates 2000 --along-pretraining 1000 2000 6000 \\
        --second-iteration-layer 4 --second-iteration-resume 6000
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from k2ssl_fairseq import presets
from k2ssl_fairseq.bench.common import accuracy_curve, provenance, thread_env
from k2ssl_fairseq.bench.experiment import (
    decode,
    finetune_decoding_saves,
    make_labels,
    pretrain_overrides,
    train_once,
)
from k2ssl_fairseq.bench.stock import hubert_model_overrides, stock_hubert_config_dir

REPO = Path(__file__).resolve().parents[1]
BATCH_SECONDS = 24
LABELLED = {"10min": "train_10min", "1h": "train_1h"}
#: Pre-training systems: the hydra preset (plugin) or stock HuBERT, and the fine-tuning preset.
PRETRAIN_SYSTEMS = {"zipformer_small": ("zipformer_small", "zipformer_small"),
                    "zipformer_fbank_small": ("zipformer_fbank_small", "zipformer_small"),
                    "hubert_small": (None, "hubert_small")}


def with_overrides(base: Sequence[str], new: Sequence[str]) -> List[str]:
    """``base`` with every key that ``new`` sets dropped, then ``new`` (hydra rejects a key given twice)."""
    keys = {o.split("=", 1)[0].lstrip("+") for o in new}
    return [o for o in base if o.split("=", 1)[0].lstrip("+") not in keys] + list(new)


def pretrain_command(system: str, corpus: Path, labels: Path, minutes: float,
                     expected_updates: int) -> Tuple[List[str], Path, str]:
    """Overrides, config folder and config name of ``system``'s pre-training on one thread."""
    shared = with_overrides(pretrain_overrides(corpus, labels, minutes), [
        "task.max_sample_size=160000", "checkpoint.save_interval_updates=500",
        "checkpoint.keep_interval_updates=-1"])  # every 500 updates kept: fine-tune along pre-training
    preset, _ = PRETRAIN_SYSTEMS[system]
    if preset is not None:
        return (with_overrides(shared, [f"task.max_duration={BATCH_SECONDS}", "dataset.max_tokens=100000000"]),
                presets.config_dir("pretrain"), preset)
    return (with_overrides(shared, ["model.label_rate=50", "lr_scheduler.warmup_updates=200",
                                    f"+lr_scheduler.total_num_update={expected_updates}",
                                    f"dataset.max_tokens={BATCH_SECONDS * 16000}", *hubert_model_overrides("small")]),
            stock_hubert_config_dir(), "hubert_base_librispeech")


def pretrain_once(overrides: Sequence[str], run_dir: Path, config_dir: Path, config_name: str,
                  inputs: Sequence[Path] = ()) -> Dict[str, Any]:
    """A pre-training on one thread (reused when it already ran); its record and masked-accuracy curve."""
    record = train_once(overrides, run_dir, config_dir, config_name, thread_env(1), inputs=inputs)
    record["curve"] = accuracy_curve((run_dir / "train.log").read_text())
    return record


def pretrain(system: str, corpus: Path, labels: Path, minutes: float, expected_updates: int,
             run_dir: Path) -> Dict[str, Any]:
    """One pre-training for ``minutes`` of wall-clock on one thread; returns its record and curve."""
    overrides, config_dir, config_name = pretrain_command(system, corpus, labels, minutes, expected_updates)
    return pretrain_once(overrides, run_dir, config_dir, config_name)


def zipformer_pretraining_to(corpus: Path, labels: Path, minutes: float, updates: int, run_dir: Path,
                             extra: Sequence[str] = (), inputs: Sequence[Path] = ()) -> Dict[str, Any]:
    """zipformer_small's pre-training command budgeted in updates (``updates``) instead of minutes."""
    overrides, config_dir, config_name = pretrain_command("zipformer_small", corpus, labels, minutes, 0)
    overrides = with_overrides(overrides, [*extra, f"optimization.max_update={updates}",
                                           "optimization.stop_time_hours=0"])
    return pretrain_once(overrides, run_dir, config_dir, config_name, inputs=[*inputs, labels / "pretrain.km"])


def continue_pretraining(corpus: Path, labels: Path, minutes: float, updates: int, work: Path,
                         system: Optional[str] = None) -> Dict[str, Any]:
    """zipformer_small's pre-training resumed from its final checkpoint (weights, optimizer, Eden schedule
    and data position: fairseq's ``checkpoint.restore_file``) until ``updates``, budgeted in updates:
    a point on the pre-training-minutes curve beyond the equal-time budget. It runs as ``system``
    (default ``zipformer_small@<updates>``), on ``labels``."""
    last = final_checkpoint(work, "zipformer_small")
    return zipformer_pretraining_to(corpus, labels, minutes, updates,
                                    pretrain_dir(work, system or f"zipformer_small@{updates}"),
                                    extra=[f"checkpoint.restore_file={last}"], inputs=[last])


def second_iteration(corpus: Path, work: Path, clusters: int, layer: int, minutes: float, updates: int,
                     resume_to: Optional[int]) -> Dict[str, Dict[str, Any]]:
    """HuBERT's second label iteration: k-means on stack ``layer`` of zipformer_small's final checkpoint,
    then, side by side on one thread each, a fresh zipformer_small pre-trained on these labels for
    ``updates`` (iteration 1's count: equal cost, budgeted in updates), run as ``zipformer_small_it2``, and
    with ``resume_to`` iteration 1's pre-training resumed on them until that update
    (``zipformer_small_it2@<U>``: against ``zipformer_small@<U>``, only the labels differ; its label
    embeddings start from iteration 1's, for classes that now mean other units, and are relearned)."""
    last = final_checkpoint(work, "zipformer_small")
    labels = work / "labels_it2"
    labels_command = make_labels(corpus, labels, clusters, from_checkpoint=(last, layer))
    jobs = {"zipformer_small_it2": lambda: zipformer_pretraining_to(corpus, labels, minutes, updates,
                                                                    pretrain_dir(work, "zipformer_small_it2"))}
    if resume_to is not None:
        name = f"zipformer_small_it2@{resume_to}"
        jobs[name] = lambda: continue_pretraining(corpus, labels, minutes, resume_to, work, system=name)
    records = run_all(list(jobs.values()), len(jobs))
    return {name: {**record, "labels_command": labels_command, "layer": layer}
            for name, record in zip(jobs, records)}


def finetune_and_decode(name: str, checkpoint: Path, preset: str, subset: str, corpus: Path, updates: int,
                        overrides: Sequence[str], save_every: int, run_dir: Path) -> Dict[str, Any]:
    """The shared letter-CTC fine-tuning on one labelled subset with its valid CER curve, the final
    model also decoded on ``test``."""
    if name == "zipformer_scratch":
        overrides = [*overrides, "model.pretrained_weights=false"]
    record = finetune_decoding_saves(corpus, checkpoint, preset, updates, run_dir, overrides, save_every, subset)
    record["test"] = decode(run_dir / "ckpt" / "checkpoint_last.pt", corpus, "test", run_dir / "decode_test")
    return record


@dataclass(frozen=True)
class FineTuning:
    """One fine-tuning: which system, on which labels, from which checkpoint."""

    system: str
    labelled: str
    preset: str
    checkpoint: Path
    pretrain_minutes: float
    pretrain_updates: int

    @property
    def name(self) -> str:
        return f"{self.system.replace('@', '_at')}_{self.labelled}"


def pretrain_dir(work: Path, system: str) -> Path:
    """Where ``system``'s pre-training (``zipformer_small@<U>``: continued to U updates) runs; its
    checkpoints are under ``ckpt/``."""
    return work / f"{system.replace('@', '_at')}_pt"


def final_checkpoint(work: Path, system: str) -> Path:
    """The checkpoint ``system``'s pre-training ended with."""
    return pretrain_dir(work, system) / "ckpt" / "checkpoint_last.pt"


def finetuning_after(system: str, pre: Dict[str, Dict[str, Any]], record: Dict[str, Any], work: Path) -> FineTuning:
    """10 min of labels from the end of a pre-training that needed zipformer_small's (resumed from its
    final checkpoint, or trained on labels made with it); its pre-training minutes are both runs'."""
    minutes = (pre["zipformer_small"]["wall_seconds"] + record["wall_seconds"]) / 60
    return FineTuning(system, "10min", "zipformer_small", final_checkpoint(work, system), round(minutes, 1),
                      record["updates"])


def plan_finetunings(pre: Dict[str, Dict[str, Any]], work: Path, along: Sequence[int],
                     continued: Dict[int, Dict[str, Any]],
                     relabelled: Optional[Dict[str, Dict[str, Any]]] = None) -> List[FineTuning]:
    """Every pre-trained system and the scratch Zipformer on every labelled size, then the Zipformer on
    10 min of labels from its pre-training checkpoints after ``along`` updates (``zipformer_small@<U>``):
    test CER against pre-training minutes. ``continued`` holds the pre-trainings resumed beyond the
    budget, by the updates they reached; ``relabelled`` the second label iteration's, by system."""
    plan = []
    for labelled in LABELLED:
        for system, record in pre.items():
            plan.append(FineTuning(system, labelled, PRETRAIN_SYSTEMS[system][1], final_checkpoint(work, system),
                                   round(record["wall_seconds"] / 60, 1), record["updates"]))
        if "zipformer_small" in pre:
            plan.append(FineTuning("zipformer_scratch", labelled, "zipformer_small",
                                   final_checkpoint(work, "zipformer_small"), 0, 0))
    for updates in along:
        if "zipformer_small" not in pre:
            raise SystemExit("error: --along-pretraining needs zipformer_small among --pretrain-systems")
        system = f"zipformer_small@{updates}"
        if updates in continued:
            plan.append(finetuning_after(system, pre, continued[updates], work))
            continue
        ckpt_dir = pretrain_dir(work, "zipformer_small") / "ckpt"
        saved = sorted(ckpt_dir.glob(f"checkpoint_*_{updates}.pt"))
        minutes = [p["minutes"] for p in pre["zipformer_small"]["curve"] if p["updates"] == updates]
        if not saved or not minutes:
            raise SystemExit(f"error: zipformer_small's pre-training kept no checkpoint after {updates} updates "
                             f"(under {ckpt_dir}; one is kept every 500)")
        plan.append(FineTuning(system, "10min", "zipformer_small", saved[0], minutes[0], updates))
    plan += [finetuning_after(system, pre, record, work) for system, record in (relabelled or {}).items()]
    return plan


def run_all(jobs: List[Any], parallel: int) -> List[Any]:
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda job: job(), jobs))


def final_accuracy(pre: Dict[str, Any]) -> float:
    """A pre-training's masked accuracy over its last logged updates (NaN if none were logged)."""
    return pre["curve"][-1]["masked_accuracy"] if pre["curve"] else float("nan")


def markdown(payload: Dict[str, Any]) -> str:
    settings = payload["settings"]
    lines = ["# Low-resource letter CTC: pre-trained small Zipformer vs stock HuBERT (CPU)", "",
             f"Command: `{payload['command']}`  ", f"Commit {payload['git_commit']}, machine: {payload['machine']}", "",
             f"Settings: {json.dumps(settings)}", "",
             "| system | labelled | pre-train minutes | pre-train updates | fine-tune updates | valid CER | "
             "test CER | test WER |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in payload["runs"]:
        lines.append(f"| {r['system']} | {r['labelled']} | {r['pretrain_minutes']} | {r['pretrain_updates']} | "
                     f"{r['finetune_updates']} | {r['valid_cer']:.2f} | {r['test_cer']:.2f} | {r['test_wer']:.2f} |")
    lines += ["", "## Targets", ""]
    lines += [f"- {t['target']}: **{'holds' if t['holds'] else 'fails'}** ({t['measured']})"
              for t in payload["targets"]]
    lines += ["", "## Test CER against pre-training minutes (Zipformer, 10 min of labels)", ""]
    lines += [f"- {p['pretrain_minutes']} min ({p['pretrain_updates']} updates, {p['system']}): test CER "
              f"{p['test_cer']:.2f}, valid CER {p['valid_cer']:.2f}"
              + ("" if p["vs_scratch"] is None else f", {p['vs_scratch']:.3f}x scratch's test CER")
              for p in payload["pretraining_curve"]]
    lines += ["", "## Fine-tuning curves (valid CER after so many updates)", ""]
    lines += [f"- {r['system']} / {r['labelled']}: " + ", ".join(f"{p['updates']}: {p['cer']:.1f}"
                                                                 for p in r["valid_cer_curve"])
              for r in payload["runs"]]
    lines += ["", "## Pre-training", ""]
    horizon = int(settings.get("expected_updates", 0))
    for name, pre in payload["pretrain"].items():
        line = (f"- {name}: {pre['updates']} updates in {pre['wall_seconds'] / 60:.1f} min, masked accuracy "
                f"{final_accuracy(pre):.3f} over its last 50 updates")
        if PRETRAIN_SYSTEMS[name][0] is None and pre["updates"] > horizon:
            reached = next(p["minutes"] for p in pre["curve"] if p["updates"] >= horizon)
            line += (f". Its polynomial learning-rate decay ends at update {horizon} (`--expected-updates`), "
                     f"reached after {reached} min: the later updates ran at lr 0 and changed nothing")
        lines.append(f"{line}; `{pre['command']}`")
    for name, pre in payload.get("continued_pretraining", {}).items():
        lines.append(f"- {name}: zipformer_small's pre-training resumed from its final checkpoint until update "
                     f"{pre['updates']}, {pre['wall_seconds'] / 60:.1f} more minutes, masked accuracy "
                     f"{final_accuracy(pre):.3f} over its last 50 updates (not plotted: fairseq's logged wall clock "
                     f"stays 0 after a resume); `{pre['command']}`")
    second = payload.get("second_iteration", {})
    if second:
        lines += ["", "## Second label iteration (10 min of labels)", ""]
    for name, pre in second.items():
        how = (f"zipformer_small's pre-training resumed on them until update {pre['updates']}" if "@" in name else
               f"a fresh zipformer_small pre-trained on them for {pre['updates']} updates")
        lines.append(f"- {name}: labels from k-means on stack {pre['layer']} of zipformer_small's final checkpoint; "
                     f"{how}, {pre['wall_seconds'] / 60:.1f} min, masked accuracy {final_accuracy(pre):.3f} over its "
                     f"last 50 updates (other targets than MFCC's: not comparable); labels: `{pre['labels_command']}`; "
                     f"`{pre['command']}`")
    for e in payload.get("second_iteration_effect", []):
        lines.append(f"- effect: test CER {e['test_cer']:.2f} ({e['system']}) vs {e['baseline_test_cer']:.2f} "
                     f"({e['baseline']}: as many updates on MFCC labels); valid CER {e['valid_cer']:.2f} vs "
                     f"{e['baseline_valid_cer']:.2f}")
    lines += ["", "Labels: `" + payload["labels_command"] + "`", "", "Fine-tuning commands:", ""]
    lines += [f"- {r['system']} / {r['labelled']}: `{r['finetune_command']}`" for r in payload["runs"]]
    return "\n".join(lines) + "\n"


def pretraining_curve(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The Zipformer's 10-min-label results by pre-training minutes: from scratch (0), from the checkpoints
    kept along pre-training (``zipformer_small@<U>``) and the final one; CER relative to scratch's."""
    points = [r for r in runs if r["labelled"] == "10min" and r["system"].partition("@")[0] in (
        "zipformer_small", "zipformer_scratch")]
    scratch = next((r["test_cer"] for r in points if r["system"] == "zipformer_scratch"), None)
    return [{"system": r["system"], "pretrain_minutes": r["pretrain_minutes"],
             "pretrain_updates": r["pretrain_updates"], "test_cer": r["test_cer"], "valid_cer": r["valid_cer"],
             "vs_scratch": None if scratch is None else round(r["test_cer"] / scratch, 3)}
            for r in sorted(points, key=lambda r: r["pretrain_updates"])]


def second_iteration_effect(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each second-iteration run on 10 min of labels beside its MFCC-label counterpart, where both ran:
    ``zipformer_small_it2`` beside ``zipformer_small``, ``zipformer_small_it2@<U>`` beside
    ``zipformer_small@<U>``."""
    ten = {r["system"]: r for r in runs if r["labelled"] == "10min"}
    out = []
    for system, run in ten.items():
        baseline = ten.get(system.replace("zipformer_small_it2", "zipformer_small"))
        if system.partition("@")[0] == "zipformer_small_it2" and baseline is not None:
            out.append({"system": system, "baseline": baseline["system"], "test_cer": run["test_cer"],
                        "baseline_test_cer": baseline["test_cer"], "valid_cer": run["valid_cer"],
                        "baseline_valid_cer": baseline["valid_cer"]})
    return out


def targets(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The issue's two targets on 10 min of labels, measured on ``test``."""
    cer = {r["system"]: r["test_cer"] for r in runs if r["labelled"] == "10min"}
    out = []
    if {"zipformer_small", "zipformer_scratch"} <= set(cer):
        ratio = cer["zipformer_small"] / cer["zipformer_scratch"]
        out.append({"target": "10 min labels: pre-trained Zipformer test CER <= 0.8x the scratch Zipformer's",
                    "holds": ratio <= 0.8, "measured": f"{cer['zipformer_small']:.2f} / "
                                                      f"{cer['zipformer_scratch']:.2f} = {ratio:.3f}x"})
    if {"zipformer_small", "hubert_small"} <= set(cer):
        out.append({"target": "10 min labels, equal pre-training time: Zipformer test CER below stock HuBERT's",
                    "holds": cer["zipformer_small"] < cer["hubert_small"],
                    "measured": f"Zipformer {cer['zipformer_small']:.2f} vs HuBERT {cer['hubert_small']:.2f}"})
    return out


def plot(payload: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves, along, finetuning) = plt.subplots(1, 4, figsize=(24, 4.5))
    systems = list(dict.fromkeys(r["system"] for r in payload["runs"]))
    width = 0.8 / max(1, len(LABELLED))
    for k, labelled in enumerate(LABELLED):
        values = [next((r["test_cer"] for r in payload["runs"] if r["system"] == s and r["labelled"] == labelled),
                       float("nan")) for s in systems]
        bars.bar([i + k * width for i in range(len(systems))], values, width, label=f"{labelled} labelled")
    bars.set_xticks([i + width * (len(LABELLED) - 1) / 2 for i in range(len(systems))], systems, rotation=15)
    bars.set_ylabel("test CER (%)")
    bars.set_title("Greedy letter CTC on test (held-out voices and sentences)")
    bars.legend()
    for name, pre in payload["pretrain"].items():
        curves.plot([p["minutes"] for p in pre["curve"]], [p["masked_accuracy"] for p in pre["curve"]], label=name)
    curves.set_xlabel("pre-training minutes (one CPU thread each, side by side)")
    curves.set_ylabel("masked-prediction accuracy (50-update mean)")
    curves.set_title("Pre-training on the 10 h pool, MFCC k-means labels")
    curves.legend()
    points = payload["pretraining_curve"]
    along.plot([p["pretrain_minutes"] for p in points], [p["test_cer"] for p in points], "-o", label="Zipformer small")
    for r in payload["runs"]:
        if r["labelled"] == "10min" and PRETRAIN_SYSTEMS.get(r["system"], ("",))[0] is None:
            along.plot([r["pretrain_minutes"]], [r["test_cer"]], "s", label=r["system"])
        if r["labelled"] == "10min" and r["system"].partition("@")[0] == "zipformer_small_it2":
            along.plot([r["pretrain_minutes"]], [r["test_cer"]], "^", label=f"{r['system']} (second iteration)")
    scratch = next((p["test_cer"] for p in points if p["system"] == "zipformer_scratch"), None)
    if scratch is not None:
        along.axhline(0.8 * scratch, linestyle=":", color="gray", label="target: 0.8x scratch")
    along.set_xlabel("pre-training minutes before fine-tuning")
    along.set_ylabel("test CER (%), 10 min of labels")
    along.set_title("What pre-training buys: test CER by pre-training minutes")
    along.legend()
    for r in payload["runs"]:
        finetuning.plot([p["updates"] for p in r["valid_cer_curve"]], [p["cer"] for p in r["valid_cer_curve"]],
                        "-" if r["labelled"] == "10min" else "--", marker="o", label=f"{r['system']} ({r['labelled']})")
    finetuning.set_xlabel("fine-tuning updates")
    finetuning.set_ylabel("valid CER (%)")
    finetuning.set_title("Fine-tuning: valid CER along the run")
    finetuning.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="corpus from k2ssl-make-demo-corpus --pool-hours")
    parser.add_argument("--work", type=Path, required=True, help="scratch directory for labels and runs")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--pretrain-systems", nargs="+", default=["zipformer_small", "hubert_small"],
                        choices=sorted(PRETRAIN_SYSTEMS), help="pre-trained side by side, one thread each")
    parser.add_argument("--pretrain-minutes", type=float, default=60.0, help="wall-clock budget of each pre-training")
    parser.add_argument("--expected-updates", type=int, default=3500,
                        help="stock HuBERT's polynomial-decay horizon (its lr is 0 after it): the updates the budget "
                             "gives it on this machine, which varies (60 min made 2017, 3483 and 3300 in three runs "
                             "here)")
    parser.add_argument("--finetune-updates", type=int, default=2000, help="fine-tuning updates of every run")
    parser.add_argument("--save-every", type=int, default=500,
                        help="fine-tuning updates between the checkpoints decoded on valid (the CER curve)")
    parser.add_argument("--finetune-overrides", nargs="*", default=["optimization.lr=[0.02]", "model.mask_prob=0.3"],
                        help="hydra overrides of every fine-tuning (chosen on valid)")
    parser.add_argument("--along-pretraining", type=int, nargs="*", default=[],
                        help="also fine-tune zipformer_small on 10 min of labels from its pre-training checkpoints "
                             "after these updates (one is kept every 500); beyond the updates its budget made, its "
                             "pre-training is first resumed until that many updates")
    parser.add_argument("--clusters", type=int, default=100, help="k-means clusters of both label iterations")
    parser.add_argument("--second-iteration-layer", type=int,
                        help="the second label iteration: k-means on this stack (1-6) of zipformer_small's final "
                             "checkpoint; a fresh zipformer_small pre-trained on those labels for as many updates as "
                             "the first, then fine-tuned on 10 min of labels")
    parser.add_argument("--second-iteration-resume", type=int, metavar="U",
                        help="with --second-iteration-layer, also resume the first iteration's pre-training on the "
                             "new labels until update U, side by side (give U to --along-pretraining too: the "
                             "MFCC-label run it is compared with)")
    parser.add_argument("--parallel", type=int, default=max(1, os.cpu_count() or 1),
                        help="fine-tunings at a time, one thread each")
    args = parser.parse_args(argv)
    if args.second_iteration_resume is not None and args.second_iteration_layer is None:
        parser.error("--second-iteration-resume needs --second-iteration-layer")
    if args.second_iteration_layer is not None and "zipformer_small" not in args.pretrain_systems:
        parser.error("--second-iteration-layer needs zipformer_small among --pretrain-systems")
    corpus, work = args.corpus.resolve(), args.work.resolve()
    missing = [s for s in LABELLED.values() if not (corpus / f"{s}.tsv").is_file()]
    if missing:
        sys.exit(f"error: {corpus} has no {', '.join(missing)}; build it with "
                 "k2ssl-make-demo-corpus OUT --minutes 100 --pool-hours 10.5")
    if len(args.pretrain_systems) > (os.cpu_count() or 1):
        print(f"warning: {len(args.pretrain_systems)} pre-trainings share {os.cpu_count()} cores", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    labels_command = make_labels(corpus, work / "labels", args.clusters)
    print(f"pre-training {', '.join(args.pretrain_systems)} for {args.pretrain_minutes} min each, side by side",
          flush=True)
    pre_records = run_all([lambda s=s: pretrain(s, corpus, work / "labels", args.pretrain_minutes,
                                                 args.expected_updates, pretrain_dir(work, s))
                           for s in args.pretrain_systems], len(args.pretrain_systems))
    pre = dict(zip(args.pretrain_systems, pre_records))
    reached = pre.get("zipformer_small", {}).get("updates", 0)
    continued = {u: continue_pretraining(corpus, work / "labels", args.pretrain_minutes, u, work)
                 for u in args.along_pretraining if "zipformer_small" in pre and u > reached}
    relabelled = {} if args.second_iteration_layer is None else second_iteration(
        corpus, work, args.clusters, args.second_iteration_layer, args.pretrain_minutes, reached,
        args.second_iteration_resume)
    finetunes = plan_finetunings(pre, work, args.along_pretraining, continued, relabelled)
    print(f"fine-tuning {len(finetunes)} runs, {args.finetune_updates} updates each, {args.parallel} at a time",
          flush=True)
    ft_records = run_all([lambda f=f: finetune_and_decode(f.system, f.checkpoint, f.preset, LABELLED[f.labelled],
                                                          corpus, args.finetune_updates, args.finetune_overrides,
                                                          args.save_every, work / f"{f.name}_ft")
                          for f in finetunes], args.parallel)
    runs = []
    for f, record in zip(finetunes, ft_records):
        runs.append({"system": f.system, "labelled": f.labelled, "pretrain_minutes": f.pretrain_minutes,
                     "pretrain_updates": f.pretrain_updates, "finetune_updates": record["updates"],
                     "test_cer": record["test"]["cer"], "test_wer": record["test"]["wer"],
                     "valid_cer": record["valid"]["cer"], "valid_wer": record["valid"]["wer"],
                     "finetune_command": record["command"],
                     "valid_cer_curve": [{"updates": p["updates"], "cer": p["cer"]}
                                         for p in record["valid_cer_curve"]]})
        print(f"{f.system} / {f.labelled}: valid CER {record['valid']['cer']:.2f}, "
              f"test CER {record['test']['cer']:.2f}", flush=True)
    info = provenance("cpu")
    payload = {"runs": runs, "command": shlex.join([sys.executable, *sys.argv]), "git_commit": info["git_commit"],
               "machine": info["machine"], "settings": {**{k: str(v) for k, v in vars(args).items()},
                                                        "batch_seconds": BATCH_SECONDS},
               "corpus": json.loads((corpus / "corpus.json").read_text())["splits"],
               "labels_command": labels_command, "pretrain": pre, "targets": targets(runs),
               "pretraining_curve": pretraining_curve(runs),
               "continued_pretraining": {f"zipformer_small@{u}": r for u, r in continued.items()},
               "second_iteration": relabelled,
               "second_iteration_effect": second_iteration_effect(runs)}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "low_resource_cpu.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.results / "low_resource_cpu.md").write_text(markdown(payload))
    plot(payload, args.results / "low_resource_cpu.png")
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
