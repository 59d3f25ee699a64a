#!/usr/bin/env python
"""A compiled pre-training next to eager ones: does ``model.compile=true`` train the same model?

Runs the ``zipformer_tiny`` preset through ``fairseq-hydra-train`` for ``--updates`` updates on the
same data (``--corpus``, or the tests' 16-utterance synthetic corpus made in ``--work``): eagerly with two seeds (their difference is the seed spread) and compiled (inductor,
``model.compile=true``) with the first seed, side by side, one thread each. Reports each run's loss
curve, wall time and, for the compiled run, every graph it compiled (from its log) against the
bound ``LayerCompiler`` states. The compiled run follows eager when its distance to the eager run
of the same seed is within the seed spread (mean absolute difference of the loss curves, averaged
over windows of ``--window`` updates: single-update losses of a tiny model are noisy).

    python benchmarks/compile_pretraining.py --work $WORK/compile_pretraining --updates 200 \
        --out benchmarks/results/compile_pretraining_tiny_cpu
"""
from __future__ import annotations

import argparse
import concurrent.futures
import re
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
RUNS = {"eager_seed1": ["common.seed=1"], "eager_seed2": ["common.seed=2"],
        "compiled_seed1": ["common.seed=1", "model.compile=true"]}


def train(name: str, corpus: Path, work: Path, updates: int) -> Dict[str, object]:
    from k2ssl_fairseq.bench.common import hydra_train, logged, thread_env

    start = time.perf_counter()
    hydra_train([f"task.data={corpus}", f"task.label_dir={corpus}", f"optimization.max_update={updates}",
                 "checkpoint.no_save=true", "dataset.disable_validation=true", *RUNS[name]], work / name,
                config_dir=REPO / "config" / "pretrain", config_name="zipformer_tiny", timeout=3600,
                env=thread_env(1))
    log = (work / name / "train.log").read_text()
    graphs = re.findall(r"compiled zipformer_ssl graph (\d+) of at most (\d+)", log)
    return {"run": name, "overrides": RUNS[name], "wall_seconds": round(time.perf_counter() - start, 1),
            "losses": [float(record["loss"]) for record in logged(log, "train_inner")],
            "compiled_graphs": len(graphs), "graph_bound": int(graphs[-1][1]) if graphs else None}


def windowed(losses: List[float], window: int) -> List[float]:
    return [sum(losses[i:i + window]) / window for i in range(0, len(losses) - window + 1, window)]


def distance(a: List[float], b: List[float], window: int) -> float:
    pairs = list(zip(windowed(a, window), windowed(b, window)))
    return sum(abs(x - y) for x, y in pairs) / len(pairs)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="a corpus with km labels (default: the synthetic test corpus, "
                                                    "made in --work)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the runs")
    parser.add_argument("--updates", type=int, default=200, help="updates per run")
    parser.add_argument("--window", type=int, default=20, help="updates averaged per point when comparing curves")
    parser.add_argument("--out", type=Path, required=True, help="results prefix: writes <out>.json and <out>.md")
    args = parser.parse_args(argv)
    from k2ssl_fairseq.bench.common import provenance, write_json
    from k2ssl_fairseq.data.synthetic import make_tiny_corpus

    corpus = (args.corpus or make_tiny_corpus(args.work / "corpus")).resolve()
    with concurrent.futures.ThreadPoolExecutor(len(RUNS)) as pool:
        runs = {run["run"]: run for run in pool.map(
            lambda name: train(name, corpus, args.work.resolve(), args.updates), RUNS)}
    spread = distance(runs["eager_seed1"]["losses"], runs["eager_seed2"]["losses"], args.window)
    compiled = distance(runs["compiled_seed1"]["losses"], runs["eager_seed1"]["losses"], args.window)
    result = {"runs": list(runs.values()), "window": args.window, "seed_spread": round(spread, 4),
              "compiled_vs_eager": round(compiled, 4), "follows_eager": compiled <= spread,
              "within_graph_bound": runs["compiled_seed1"]["compiled_graphs"] <= (runs["compiled_seed1"]["graph_bound"] or 0),
              **provenance()}
    write_json(args.out.with_suffix(".json"), result)
    lines = [f"# Compiled vs eager pre-training, zipformer_tiny, {args.updates} updates", "",
             f"Command: `{result['command']}` ({result['date']}, {result['machine']})", "",
             "| run | wall (s) | mean loss, last window | graphs compiled (bound) |", "| --- | --- | --- | --- |"]
    for run in runs.values():
        last = windowed(run["losses"], args.window)[-1]
        graphs = f"{run['compiled_graphs']} ({run['graph_bound']})" if run["graph_bound"] else "-"
        lines.append(f"| {run['run']} | {run['wall_seconds']} | {last:.3f} | {graphs} |")
    lines += ["", f"Mean |difference| of the loss curves ({args.window}-update windows): eager seed 1 vs seed 2 "
              f"(the seed spread) {spread:.4f}; compiled vs eager, seed 1: {compiled:.4f} "
              f"({'within' if result['follows_eager'] else 'outside'} the seed spread)."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if result["follows_eager"] and result["within_graph_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
