"""The fine-tuning sweep's argument grouping."""
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

