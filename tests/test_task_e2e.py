"""End to end with fairseq-hydra-train: an existing HuBERT yaml switched to k2ssl_pretraining trains
with worker masks, logs the data metrics, and resumes mid-epoch from checkpoint_last.pt exactly."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import pytest

from k2ssl_fairseq.bench.common import hydra_train
from k2ssl_fairseq.bench.stock import stock_hubert_tiny_overrides

pytestmark = pytest.mark.e2e


def _train_inner(log: str) -> List[Dict[str, str]]:
    return [json.loads(line.split(" - ", 1)[1]) for line in log.splitlines() if "[train_inner]" in line]


def _run(corpus: Path, run_dir: Path, max_update: int) -> str:
    overrides = stock_hubert_tiny_overrides(corpus, max_update=max_update) + [
        "task._name=k2ssl_pretraining", "+task.max_duration=4", "model._name=k2ssl_hubert",
        "dataset.disable_validation=true"]
    proc = hydra_train(overrides, run_dir)
    return proc.stdout + proc.stderr


def test_switch_yaml_train_and_resume_exactly(tiny_corpus: Path, tmp_path: Path):
    straight = _run(tiny_corpus, tmp_path / "straight", 4)
    assert "masks are drawn in DataLoader workers" in straight
    records = _train_inner(straight)
    assert [int(r["num_updates"]) for r in records] == [1, 2, 3, 4]
    for record in records:
        assert float(record["audio_s"]) <= 4.0
        assert {"crop_pct", "pad_pct", "data_wait_s"} <= set(record)

    _run(tiny_corpus, tmp_path / "resumed", 2)
    resumed = _run(tiny_corpus, tmp_path / "resumed", 4)
    assert "Loaded checkpoint" in resumed and "(epoch 1 @ 2 updates)" in resumed
    tail = _train_inner(resumed)
    assert [int(r["num_updates"]) for r in tail] == [3, 4]
    for expected, got in zip(records[2:], tail):
        for key in ("loss", "audio_s", "crop_pct", "epoch"):
            assert got[key] == expected[key], key
