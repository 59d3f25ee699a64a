"""The plugin's changes to fairseq: listed in one place, announced at start-up, each switchable off."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils

from k2ssl_fairseq import checkpoints, patches
from k2ssl_fairseq.patches import checkpoint_loading
from k2ssl_fairseq.testing import hydra_train, stock_hubert_tiny_overrides

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("spec, expected", [
    ("", ["checkpoint_loading", "atomic_checkpoints", "nonfinite_skips"]),
    ("-nonfinite_skips", ["checkpoint_loading", "atomic_checkpoints"]),
    ("-atomic_checkpoints, -nonfinite_skips", ["checkpoint_loading"]),
    ("none", []),
    ("-all,+nonfinite_skips", ["nonfinite_skips"]),
    ("-all,atomic_checkpoints", ["atomic_checkpoints"]),
])
def test_the_switch_selects_patches(spec, expected):
    assert patches.selected(spec) == expected


def test_an_unknown_patch_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"K2SSL_PATCHES='-nonfinite': unknown patch 'nonfinite'; patches are "
                                         r"checkpoint_loading, atomic_checkpoints, nonfinite_skips"):
        patches.selected("-nonfinite")


def test_every_patch_is_in_the_readme_table():
    table = README.read_text().split("## fairseq patches", 1)[1].split("\n## ", 1)[0]
    for name in patches.PATCHES:
        assert re.search(rf"^\| `{name}` \|", table, re.MULTILINE), name
    assert "K2SSL_PATCHES" in table


def test_without_checkpoint_loading_fairseq_cannot_read_its_checkpoints_on_this_torch(stock_hubert_run):
    path = stock_hubert_run / "ckpt" / "checkpoint_last.pt"
    try:
        patches.apply(f"-{checkpoint_loading.NAME}")
        assert checkpoint_utils.torch is torch
        with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
            checkpoint_utils.load_checkpoint_to_cpu(str(path))
    finally:
        patches.apply("")
    assert checkpoints.load_checkpoint(path)["cfg"].model._name == "hubert"


@pytest.mark.parametrize("spec", ["", "-all"])
def test_training_announces_the_active_patches_and_runs_with_all_off(tiny_corpus, tmp_path, spec):
    proc = hydra_train(stock_hubert_tiny_overrides(tiny_corpus, max_update=2), tmp_path / "run",
                       env={patches.PATCHES_ENV: spec})
    log = proc.stdout + proc.stderr
    line = next(line for line in log.splitlines() if "k2ssl_fairseq patches fairseq:" in line)
    if spec:
        assert "patches fairseq: nothing (off: checkpoint_loading, atomic_checkpoints, nonfinite_skips)" in line
    else:
        assert "patches fairseq: checkpoint_loading, atomic_checkpoints, nonfinite_skips;" in line
    assert '"num_updates": "2"' in log
