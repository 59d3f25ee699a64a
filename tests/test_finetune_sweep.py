"""The fine-tuning sweep: settings grouped by name, the choice made on valid, test decoded for the choice only."""
from __future__ import annotations

import importlib.util
import json
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



def _run(setting, cer, **extra):
    return {"setting": setting, "overrides": [f"x={setting}"], "valid": {"cer": cer, "wer": 90.0},
            "valid_cer_curve": [{"updates": 500, "cer": cer + 10}, {"updates": 1000, "cer": cer}], **extra}


def test_the_lowest_final_valid_cer_is_chosen_and_failures_are_passed_over():
    runs = [_run("a", 60.0), {"setting": "broken", "overrides": [], "error": "boom"}, _run("b", 55.5), _run("c", 55.5)]
    assert sweep.chosen(runs)["setting"] == "b"
    assert sweep.chosen([{"setting": "broken", "overrides": [], "error": "boom"}]) is None


def _payload(runs):
    return {"name": "n", "command": "cmd", "git_commit": "abc", "machine": "m", "load_average": 1.0,
            "checkpoint": "pt.pt", "preset": "zipformer_small", "updates": 1000, "train_subset": "train_10min",
            "parallel": 2, "runs": runs}


def test_markdown_names_the_choice_and_reports_test_only_for_it():
    without_test = sweep.markdown(_payload([_run("a", 60.0), _run("b", 55.5)]))
    assert "Lowest valid CER: **b** (55.50)." in without_test
    assert "| a | `x=a` | 60.00 | 90.00 | 500: 70.0, 1000: 60.0 |" in without_test
    assert "on `test`" not in without_test
    with_test = sweep.markdown(_payload([_run("a", 60.0), _run("b", 55.5, test={"cer": 61.25, "wer": 99.0})]))
    assert "CER 61.25, WER 99.00" in with_test


def test_only_the_setting_chosen_on_valid_is_decoded_on_test(tmp_path, monkeypatch):
    checkpoint = tmp_path / "pt.pt"
    checkpoint.write_bytes(b"")
    final_cer = {"lr01": 62.0, "lr02": 58.0, "lr04": 70.0}
    trained, decoded = [], []

    def fake_finetune(corpus, pretrained, preset, updates, run_dir, overrides, save_every, subset):
        trained.append((run_dir.name, save_every, list(overrides)))
        curve = [{"updates": updates, "cer": final_cer[run_dir.name], "wer": 95.0}]
        return {"updates": updates, "valid_cer_curve": curve, "valid": curve[-1]}

    def fake_decode(path, corpus, subset, out):
        decoded.append((path, subset))
        return {"cer": 61.0, "wer": 97.0}

    monkeypatch.setattr(sweep, "finetune_decoding_saves", fake_finetune)
    monkeypatch.setattr(sweep, "decode", fake_decode)
    argv = ["--name", "t", "--corpus", str(tmp_path), "--checkpoint", str(checkpoint), "--work", str(tmp_path / "w"),
            "--results", str(tmp_path / "r"), "--updates", "40", "--validate-every", "20", "--parallel", "1",
            "--test-chosen"]
    for name in final_cer:
        argv += ["--setting", name, f"optimization.lr=[{name[2:]}]"]
    assert sweep.main(argv) == 0
    assert [name for name, _, _ in trained] == ["lr01", "lr02", "lr04"]
    assert all(every == 20 and extra == [f"optimization.lr=[{name[2:]}]"] for name, every, extra in trained)
    assert decoded == [(tmp_path / "w" / "lr02" / "ckpt" / "checkpoint_last.pt", "test")]
    payload = json.loads((tmp_path / "r" / "finetune_sweep_t.json").read_text())
    assert payload["chosen"] == "lr02"
    assert [("test" in r) for r in payload["runs"]] == [False, True, False]
