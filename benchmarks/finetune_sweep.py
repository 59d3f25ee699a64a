#!/usr/bin/env python
"""Choose CTC fine-tuning settings on ``valid``: several settings from one checkpoint, equal updates.

Each setting is a list of hydra overrides on a fine-tuning preset; every run saves a checkpoint every
``--validate-every`` updates (no fairseq validation pass: its UER counts the word-boundary symbol ``|``,
which a model learns first, so early on it reads far lower than the CER; measured: UER 84.8 where the
CER was 99.1), and each saved checkpoint is decoded greedily on ``valid`` (``k2ssl-decode-ctc``: CER on
letters, WER on words). The setting with the lowest final valid CER is chosen; ``test`` is decoded for
that one only, and only with ``--test-chosen``, so nothing about ``test`` can steer the choice. Runs go
``--parallel`` at a time, one thread each, so a sweep costs the same machine time per setting. Writes
``finetune_sweep_<name>.{json,md}`` into ``--results``.

Example::

    python benchmarks/finetune_sweep.py --name demo --corpus demo_work/corpus \\
        --checkpoint demo_work/pretrain/ckpt/checkpoint_last.pt --preset zipformer_small --work /tmp/sweep \\
        --updates 700 --setting lr02 'optimization.lr=[0.02]' model.mask_prob=0.3 \\
        --setting lr05 'optimization.lr=[0.05]' model.mask_prob=0.3
"""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

from k2ssl_fairseq.bench.common import provenance
from k2ssl_fairseq.bench.experiment import decode, finetune_decoding_saves


def parse_settings(raw: List[List[str]]) -> Dict[str, List[str]]:
    """``--setting NAME OVERRIDE...`` groups, by name; a name may not repeat."""
    settings: Dict[str, List[str]] = {}
    for name, *overrides in raw:
        if name in settings:
            raise SystemExit(f"error: setting {name!r} is given twice")
        if "=" in name:
            raise SystemExit(f"error: a --setting starts with its name, got the override {name!r}")
        settings[name] = overrides
    return settings


def chosen(runs: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The finished setting with the lowest final valid CER (the first of equals), or None."""
    finished = [r for r in runs if "error" not in r]
    return min(finished, key=lambda r: r["valid"]["cer"]) if finished else None


def markdown(payload: Dict[str, Any]) -> str:
    lines = [f"# Fine-tuning sweep `{payload['name']}` (chosen on valid)", "",
             f"Command: `{payload['command']}`  ", f"Commit {payload['git_commit']}, machine: {payload['machine']}, "
             f"load average at the end {payload['load_average']}", "",
             f"Checkpoint: `{payload['checkpoint']}`, preset `{payload['preset']}`, {payload['updates']} updates on "
             f"`{payload['train_subset']}`, one thread per run, {payload['parallel']} at a time.", "",
             "| setting | overrides | valid CER (final) | valid WER (final) | valid CER by updates |",
             "| --- | --- | --- | --- | --- |"]
    for r in payload["runs"]:
        if "error" in r:
            lines.append(f"| {r['setting']} | `{' '.join(r['overrides'])}` | failed | failed | see the JSON |")
            continue
        cer = ", ".join(f"{p['updates']}: {p['cer']:.1f}" for p in r["valid_cer_curve"])
        lines.append(f"| {r['setting']} | `{' '.join(r['overrides'])}` | {r['valid']['cer']:.2f} | "
                     f"{r['valid']['wer']:.2f} | {cer} |")
    best = chosen(payload["runs"])
    if best is not None:
        lines += ["", f"Lowest valid CER: **{best['setting']}** ({best['valid']['cer']:.2f})."]
        if "test" in best:
            lines.append(f"Its final model on `test` (decoded for the chosen setting only): CER "
                         f"{best['test']['cer']:.2f}, WER {best['test']['wer']:.2f}.")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="names the results files")
    parser.add_argument("--corpus", type=Path, required=True, help="fairseq manifests with .ltr labels")
    parser.add_argument("--checkpoint", type=Path, required=True, help="pre-trained checkpoint to fine-tune")
    parser.add_argument("--preset", default="zipformer_small", help="fine-tuning preset (config/finetune)")
    parser.add_argument("--train-subset", default="train", help="labelled split to fine-tune on")
    parser.add_argument("--work", type=Path, required=True, help="scratch directory for the runs")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--updates", type=int, required=True, help="fine-tuning updates per setting")
    parser.add_argument("--validate-every", type=int, default=100,
                        help="updates between the saved checkpoints that are decoded on valid")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--test-chosen", action="store_true",
                        help="after choosing on valid, decode the chosen setting's final model on test")
    parser.add_argument("--setting", nargs="+", action="append", required=True, metavar="NAME_THEN_OVERRIDES",
                        help="a setting's name followed by its hydra overrides (repeat for each setting)")
    args = parser.parse_args(argv)
    settings = parse_settings(args.setting)
    corpus, work, checkpoint = args.corpus.resolve(), args.work.resolve(), args.checkpoint.resolve()
    if not checkpoint.is_file():
        raise SystemExit(f"error: checkpoint {checkpoint} does not exist")

    def run(item) -> Dict[str, Any]:
        name, overrides = item
        run_dir = work / name
        try:
            record = finetune_decoding_saves(corpus, checkpoint, args.preset, args.updates, run_dir, overrides,
                                             args.validate_every, args.train_subset)
            curve, final = record.pop("valid_cer_curve"), record.pop("valid")
            return {"setting": name, "overrides": overrides, "finetune": record, "valid_cer_curve": curve,
                    "valid": final}
        except RuntimeError as error:  # one broken setting must not cost the others' results
            print(f"setting {name} failed (log under {run_dir}):\n{error}", file=sys.stderr, flush=True)
            return {"setting": name, "overrides": overrides, "error": str(error)[-2000:]}

    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(run, settings.items()))
    best = chosen(runs)
    if args.test_chosen and best is not None:
        run_dir = work / best["setting"]
        best["test"] = decode(run_dir / "ckpt" / "checkpoint_last.pt", corpus, "test", run_dir / "decode_test")
    payload = {"name": args.name, "checkpoint": str(checkpoint), "preset": args.preset, "updates": args.updates,
               "train_subset": args.train_subset, "parallel": args.parallel,
               "chosen": None if best is None else best["setting"], "runs": runs, **provenance("cpu")}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"finetune_sweep_{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.results / f"finetune_sweep_{args.name}.md").write_text(markdown(payload))
    print(markdown(payload))
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
