"""The fine-tuning sweep's argument grouping and its choice of checkpoints to decode."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "finetune_sweep.py"
spec = importlib.util.spec_from_file_location("finetune_sweep", SCRIPT)
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


def test_settings_are_grouped_by_name():
    settings = sweep.parse_settings([["a", "optimization.lr=[0.02]"], ["b", "optimization.lr=[0.05]", "x.y=1"]])
    assert settings == {"a": ["optimization.lr=[0.02]"], "b": ["optimization.lr=[0.05]", "x.y=1"]}


@pytest.mark.parametrize("raw, message", [([["a"], ["a", "x=1"]], "given twice"),
                                          ([["optimization.lr=[0.02]"]], "starts with its name")])
def test_bad_settings_are_refused(raw, message):
    with pytest.raises(SystemExit, match=message):
        sweep.parse_settings(raw)


def test_checkpoints_are_decoded_in_update_order_ending_with_the_final_model(tmp_path: Path):
    for name in ("checkpoint_3_1500.pt", "checkpoint_1_500.pt", "checkpoint_2_1000.pt", "checkpoint_best.pt"):
        (tmp_path / name).write_bytes(b"")
    assert sweep.saved_by_updates(tmp_path, 1200) == [
        (500, tmp_path / "checkpoint_1_500.pt"), (1000, tmp_path / "checkpoint_2_1000.pt"),
        (1200, tmp_path / "checkpoint_last.pt")]
