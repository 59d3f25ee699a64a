"""The plugin's changes to fairseq: listed in one place, announced at start-up, each switchable off."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils

from k2ssl_fairseq import checkpoints, patches
from k2ssl_fairseq.bench.common import hydra_train
from k2ssl_fairseq.bench.stock import stock_hubert_tiny_overrides
from k2ssl_fairseq.patches import checkpoint_loading

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


@pytest.mark.e2e
def test_without_checkpoint_loading_configs_reach_fairseq_unchecked(stock_hubert_run, tmp_path):
    """What the patch adds: with it off, fairseq still reads its checkpoints (the allowlist is not a
    patch), but a config string meant for ``eval`` comes back unchecked."""
    state = torch.load(stock_hubert_run / "ckpt" / "checkpoint_last.pt", weights_only=True)
    state["cfg"]["model"]["conv_feature_layers"] = "__import__('os').getpid() and [(64, 10, 5)]"
    path = tmp_path / "code_in_config.pt"
    torch.save(state, path)
    try:
        patches.apply(f"-{checkpoint_loading.NAME}")
        assert checkpoint_utils.torch is torch
        loaded = checkpoint_utils.load_checkpoint_to_cpu(str(path))
        assert loaded["cfg"]["model"]["conv_feature_layers"].startswith("__import__")
    finally:
        patches.apply("")
    with pytest.raises(checkpoints.UntrustedCheckpointError, match="cfg.model.conv_feature_layers"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))


@pytest.mark.e2e
def test_a_run_announces_its_patches_and_clears_stale_checkpoint_temporaries(tiny_corpus, tmp_path):
    save_dir = tmp_path / "run" / "ckpt"
    save_dir.mkdir(parents=True)
    stale = save_dir / ".checkpoint_last.pt.k2j_8x0q.tmp"  # what a SIGKILL during a save leaves
    stale.write_bytes(b"\0" * 4096)
    unrelated = [save_dir / "notes.tmp", save_dir / ".checkpoint_last.pt.tmp.keep", save_dir / "checkpoint.pt.x.tmp"]
    for path in unrelated:
        path.write_text("not ours")
    proc = hydra_train(stock_hubert_tiny_overrides(tiny_corpus, max_update=2), tmp_path / "run")
    log = proc.stdout + proc.stderr
    assert "k2ssl_fairseq patches fairseq: checkpoint_loading, atomic_checkpoints, nonfinite_skips;" in log
    assert not stale.exists() and f"removed {stale}" in log
    assert all(path.exists() for path in unrelated)
    assert '"num_updates": "2"' in log


@pytest.mark.e2e
def test_a_run_with_every_patch_off_trains_and_says_so(tiny_corpus, tmp_path):
    proc = hydra_train(stock_hubert_tiny_overrides(tiny_corpus, max_update=2), tmp_path / "run",
                       env={patches.PATCHES_ENV: "none"})
    log = proc.stdout + proc.stderr
    assert "patches fairseq: nothing (off: checkpoint_loading, atomic_checkpoints, nonfinite_skips)" in log
    assert '"num_updates": "2"' in log
