"""Stock fairseq HuBERT pre-training runs, resumes and reloads with the plugin loaded (torch >= 2.6)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from k2ssl_fairseq.bench.common import hydra_train
from k2ssl_fairseq.bench.stock import stock_hubert_tiny_overrides

pytestmark = pytest.mark.e2e


def _updates_logged(log: str) -> list:
    updates = []
    for line in log.splitlines():
        if "[train_inner]" in line:
            updates.append(int(json.loads(line.split(" - ", 1)[1])["num_updates"]))
    return updates


def test_train_resume_and_load_without_env_vars(tiny_corpus: Path, stock_hubert_run: Path, tmp_path: Path):
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    assert torch.__version__ >= "2.6"
    first_log = (stock_hubert_run / "train.log").read_text()
    assert _updates_logged(first_log) == [1, 2, 3, 4]
    ckpt = stock_hubert_run / "ckpt" / "checkpoint_last.pt"
    assert ckpt.is_file()

    # Resume in a copy of the run directory so the shared fixture stays untouched.
    resumed = tmp_path / "resumed"
    (resumed / "ckpt").mkdir(parents=True)
    (resumed / "ckpt" / "checkpoint_last.pt").write_bytes(ckpt.read_bytes())
    proc = hydra_train(stock_hubert_tiny_overrides(tiny_corpus, max_update=6), resumed)
    log = proc.stdout + proc.stderr
    assert "Loaded checkpoint" in log and "@ 4 updates" in log
    assert _updates_logged(log) == [5, 6]

    from fairseq import checkpoint_utils

    import k2ssl_fairseq  # noqa: F401

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(resumed / "ckpt" / "checkpoint_last.pt")])
    assert type(models[0]).__name__ == "HubertModel"
    assert cfg.model._name == "hubert" and task.cfg._name == "hubert_pretraining"
    state = checkpoint_utils.load_checkpoint_to_cpu(str(resumed / "ckpt" / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 6
    for name, tensor in models[0].state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name
