"""A checkpoint carrying a malicious pickle is refused by every loading path, and nothing runs."""
from __future__ import annotations

import fractions
import os
import shutil
from pathlib import Path

import pytest
import torch

import k2ssl_fairseq  # noqa: F401  (applies the compatibility layer)
from helpers import run_script_in_process
from k2ssl_fairseq import checkpoints
from k2ssl_fairseq.bench.common import hydra_train
from k2ssl_fairseq.bench.stock import stock_hubert_tiny_overrides

pytestmark = pytest.mark.e2e


class _RunsShellCommand:
    """Unpickling this object would run a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _poisoned_copy(clean: Path, out: Path, payload) -> Path:
    state = torch.load(clean, weights_only=True)
    state["extra_state"]["payload"] = payload
    torch.save(state, out)
    return out


@pytest.fixture()
def poisoned(stock_hubert_run: Path, tmp_path: Path):
    marker = tmp_path / "EXECUTED"
    path = _poisoned_copy(stock_hubert_run / "ckpt" / "checkpoint_last.pt", tmp_path / "poisoned.pt",
                          _RunsShellCommand(marker))
    return path, marker


def test_allowlist_is_exactly_what_fairseq_checkpoints_hold(stock_hubert_run: Path):
    needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(stock_hubert_run / "ckpt" / "checkpoint_last.pt"))
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in checkpoints.checkpoint_globals()}
    assert set(needed) <= allowed
    assert "posix.system" not in allowed and "builtins.eval" not in allowed


def test_load_model_ensemble_and_task_refuses(poisoned):
    from fairseq import checkpoint_utils

    path, marker = poisoned
    with pytest.raises(checkpoints.UntrustedCheckpointError, match=r"posix\.system") as err:
        checkpoint_utils.load_model_ensemble_and_task([str(path)])
    assert str(path) in str(err.value) and checkpoints.TRUSTED_ENV in str(err.value)
    assert not marker.exists()


def test_plugin_loaders_refuse(poisoned):
    path, marker = poisoned
    with pytest.raises(checkpoints.UntrustedCheckpointError, match=r"posix\.system"):
        checkpoints.load_checkpoint(path)
    with pytest.raises(checkpoints.UntrustedCheckpointError, match=r"posix\.system"):
        checkpoints.load_torch_file(path)
    assert not marker.exists()


def test_resume_refuses(poisoned, tiny_corpus: Path, tmp_path: Path):
    path, marker = poisoned
    run = tmp_path / "resume"
    (run / "ckpt").mkdir(parents=True)
    shutil.copy(path, run / "ckpt" / "checkpoint_last.pt")
    proc = hydra_train(stock_hubert_tiny_overrides(tiny_corpus, max_update=6), run, check=False)
    assert proc.returncode != 0
    assert "UntrustedCheckpointError" in proc.stdout + proc.stderr
    assert "posix.system" in proc.stdout + proc.stderr
    assert not marker.exists()


def test_trusted_opt_in_is_per_file(stock_hubert_run: Path, tmp_path: Path, monkeypatch):
    # A harmless global that is not on the allowlist stands in for "needs full unpickling".
    path = _poisoned_copy(stock_hubert_run / "ckpt" / "checkpoint_last.pt", tmp_path / "other.pt",
                          fractions.Fraction(1, 3))
    with pytest.raises(checkpoints.UntrustedCheckpointError, match=r"fractions\.Fraction"):
        checkpoints.load_checkpoint(path)
    monkeypatch.setenv(checkpoints.TRUSTED_ENV, str(path))
    assert checkpoints.load_checkpoint(path)["extra_state"]["payload"] == fractions.Fraction(1, 3)
    monkeypatch.delenv(checkpoints.TRUSTED_ENV)
    assert checkpoints.load_checkpoint(path, trusted=True)["extra_state"]["payload"] == fractions.Fraction(1, 3)


def test_not_a_checkpoint_gets_a_clear_error(tmp_path: Path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"this is not a torch file")
    for load in (checkpoints.load_checkpoint, checkpoints.load_torch_file):
        with pytest.raises(checkpoints.CheckpointReadError, match="bogus.pt: not a readable torch checkpoint"):
            load(bogus)


def _script_commands(path: Path, corpus: Path, out: Path) -> dict:
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    return {
        "migrate_checkpoint": [scripts / "migrate_checkpoint.py", path, out / "migrated.pt", "--to", "k2ssl_hubert"],
        "import_icefall_checkpoint": [scripts / "import_icefall_checkpoint.py", path, out / "imported.pt"],
        "export_icefall_checkpoint": [scripts / "export_icefall_checkpoint.py", path, out / "exported.pt"],
        "decode_ctc": [scripts / "decode_ctc.py", "--checkpoint", path, "--data", corpus, "--subset", "valid",
                       "--results-dir", out / "decode", "--device", "cpu"],
        "make_labels": [scripts / "make_labels.py", "--data", corpus, "--out", out / "labels", "--n-clusters", "4",
                        "--feature", "checkpoint", "--checkpoint", path, "--layer", "1", "--splits", "valid",
                        "--train-split", "valid"],
    }


@pytest.mark.parametrize("script", ["migrate_checkpoint", "import_icefall_checkpoint", "export_icefall_checkpoint",
                                    "decode_ctc", "make_labels"])
def test_plugin_scripts_refuse(poisoned, tiny_corpus: Path, tmp_path: Path, script: str):
    path, marker = poisoned
    proc = run_script_in_process(*_script_commands(path, tiny_corpus, tmp_path)[script])
    assert proc.returncode != 0
    assert "posix.system" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]
    assert not marker.exists()
