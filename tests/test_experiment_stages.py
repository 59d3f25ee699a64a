"""The experiments' shared stages reuse a finished run only when its exact command ran, and fail loudly."""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from k2ssl_fairseq import presets
from k2ssl_fairseq.bench import experiment
from k2ssl_fairseq.bench.common import hydra_train_command


def _finished_run(run_dir: Path, overrides: list) -> None:
    (run_dir / "ckpt").mkdir(parents=True)
    (run_dir / "ckpt" / "checkpoint_last.pt").write_bytes(b"")
    command = shlex.join(hydra_train_command(overrides, run_dir, presets.config_dir("finetune"), "zipformer_small"))
    (run_dir / "record.json").write_text(json.dumps({"command": command, "updates": 7}))


def test_a_run_with_the_same_command_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(experiment, "hydra_train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    _finished_run(tmp_path / "run", ["optimization.max_update=7"])
    record = experiment.train_once(["optimization.max_update=7"], tmp_path / "run", presets.config_dir("finetune"),
                                   "zipformer_small")
    assert record == {"command": record["command"], "updates": 7, "reused": True}


def test_a_run_with_another_command_trains_again_from_its_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []

    def fake_train(overrides, run_dir, **kwargs):
        calls.append(list(overrides))
        assert not (run_dir / "ckpt").exists(), "fairseq would resume from the other command's checkpoint"
        raise RuntimeError("stop here")

    monkeypatch.setattr(experiment, "hydra_train", fake_train)
    _finished_run(tmp_path / "run", ["optimization.max_update=7"])
    with pytest.raises(RuntimeError, match="stop here"):
        experiment.train_once(["optimization.max_update=8"], tmp_path / "run", presets.config_dir("finetune"),
                              "zipformer_small")
    assert calls == [["optimization.max_update=8"]]


def _later(path: Path, than: Path) -> None:
    """Give ``path`` a modification time one second after ``than``'s (file systems round times)."""
    stamp = than.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


def test_a_run_trains_again_when_its_pretrained_checkpoint_was_rewritten_after_it(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch):
    calls = []
    monkeypatch.setattr(experiment, "hydra_train", lambda overrides, run_dir, **k: calls.append(run_dir) or 1 / 0)
    _finished_run(tmp_path / "run", ["optimization.max_update=7"])
    pretrained = tmp_path / "pt.pt"
    pretrained.write_bytes(b"older")
    _later(tmp_path / "run" / "record.json", pretrained)
    args = (["optimization.max_update=7"], tmp_path / "run", presets.config_dir("finetune"), "zipformer_small")
    assert experiment.train_once(*args, inputs=[pretrained])["reused"]
    _later(pretrained, tmp_path / "run" / "record.json")  # the pre-training was rerun in the same place
    with pytest.raises(ZeroDivisionError):
        experiment.train_once(*args, inputs=[pretrained])
    assert calls == [tmp_path / "run"]


def test_a_decoding_is_reused_only_if_written_after_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ran = []

    def fake_run(cmd, log):
        ran.append(cmd)
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "wer.json").write_text(json.dumps(
            {"wer": 50.0, "cer": 20.0 + len(ran), "word_errors": 1, "ref_words": 2, "utterances": 1}))
        return shlex.join(cmd)

    monkeypatch.setattr(experiment, "run", fake_run)
    checkpoint = tmp_path / "checkpoint_last.pt"
    checkpoint.write_bytes(b"")
    first = experiment.decode(checkpoint, tmp_path, "valid", tmp_path / "out")
    _later(tmp_path / "out" / "wer.json", checkpoint)
    again = experiment.decode(checkpoint, tmp_path, "valid", tmp_path / "out")
    assert len(ran) == 1 and again == first and first["cer"] == 21.0
    _later(checkpoint, tmp_path / "out" / "wer.json")
    assert experiment.decode(checkpoint, tmp_path, "valid", tmp_path / "out")["cer"] == 22.0
    assert len(ran) == 2 and again["command"] == shlex.join(ran[0])


def test_second_iteration_labels_come_from_the_checkpoint_and_are_remade_when_it_was_rewritten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ran = []

    def fake_run(cmd, log):
        ran.append(cmd)
        assert log == tmp_path / "labels_it2.log", "each label set keeps its own log"
        for name in ("dict.km.txt", "pretrain.km"):
            (tmp_path / "labels_it2" / name).write_text("")
        return shlex.join(cmd)

    monkeypatch.setattr(experiment, "run", fake_run)
    checkpoint = tmp_path / "checkpoint_last.pt"
    checkpoint.write_bytes(b"")
    command = experiment.make_labels(tmp_path, tmp_path / "labels_it2", 100, from_checkpoint=(checkpoint, 4))
    assert command.endswith(f"--feature checkpoint --checkpoint {checkpoint} --layer 4") and len(ran) == 1
    _later(tmp_path / "labels_it2" / "pretrain.km", checkpoint)
    assert experiment.make_labels(tmp_path, tmp_path / "labels_it2", 100, from_checkpoint=(checkpoint, 4)).endswith(
        "(reused existing output)") and len(ran) == 1
    _later(checkpoint, tmp_path / "labels_it2" / "pretrain.km")
    experiment.make_labels(tmp_path, tmp_path / "labels_it2", 100, from_checkpoint=(checkpoint, 4))
    assert len(ran) == 2
    assert "--feature" not in experiment.make_labels(tmp_path, tmp_path / "labels_it2", 100), "iteration 1 is MFCC"


def test_a_failing_stage_names_its_command_and_keeps_its_log(tmp_path: Path):
    with pytest.raises(RuntimeError, match=r"command failed \(3\).*-c.*boom"):
        experiment.run([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "stage.log")
    assert (tmp_path / "stage.log").read_text() == "boom\n"


@pytest.mark.parametrize("validate, expected", [
    (True, ["dataset.disable_validation=false", "dataset.validate_interval=1"]),
    (False, ["dataset.disable_validation=true"])])
def test_finetune_trains_on_its_subset_with_or_without_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   validate, expected):
    seen = {}

    def fake_train_once(overrides, run_dir, config_dir, config_name, env=None, inputs=()):
        seen.update(overrides=list(overrides), config_name=config_name, env=env)
        (run_dir / "train.log").write_text("")
        return {"command": "x", "updates": 3}

    monkeypatch.setattr(experiment, "train_once", fake_train_once)
    record = experiment.finetune(tmp_path / "corpus", tmp_path / "pt.pt", "zipformer_small", 3, tmp_path, ["a.b=1"],
                                 threads=1, subset="train_10min", validate=validate)
    assert record["valid_curve"] == [] and seen["config_name"] == "zipformer_small"
    assert seen["env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert "dataset.train_subset=train_10min" in seen["overrides"] and seen["overrides"][-1] == "a.b=1"
    assert [o for o in seen["overrides"] if "validat" in o] == expected


def test_finetune_decoding_saves_keeps_checkpoints_instead_of_validating(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    seen = {}

    def fake_finetune(corpus, pretrained, preset, updates, run_dir, extra, threads, subset, validate):
        seen.update(extra=list(extra), threads=threads, subset=subset, validate=validate)
        return {"updates": updates}

    def fake_curve(run_dir, corpus, final_updates):
        return [{"updates": 250, "cer": 90.0}, {"updates": final_updates, "cer": 70.0}]

    monkeypatch.setattr(experiment, "finetune", fake_finetune)
    monkeypatch.setattr(experiment, "valid_cer_curve", fake_curve)
    record = experiment.finetune_decoding_saves(tmp_path, tmp_path / "pt.pt", "zipformer_small", 400, tmp_path,
                                                ["optimization.lr=[0.01]"], 250, "train_1h")
    assert seen == {"extra": ["dataset.valid_subset=valid", "optimization.max_epoch=100000",
                              "checkpoint.save_interval_updates=250", "checkpoint.keep_interval_updates=-1",
                              "optimization.lr=[0.01]"], "threads": 1, "subset": "train_1h", "validate": False}
    assert record["valid"] == {"updates": 400, "cer": 70.0} and len(record["valid_cer_curve"]) == 2


def test_checkpoints_are_decoded_in_update_order_ending_with_the_final_model(tmp_path: Path):
    for name in ("checkpoint_3_1500.pt", "checkpoint_1_500.pt", "checkpoint_2_1000.pt", "checkpoint_best.pt"):
        (tmp_path / name).write_bytes(b"")
    assert experiment.saved_by_updates(tmp_path, 1200) == [
        (500, tmp_path / "checkpoint_1_500.pt"), (1000, tmp_path / "checkpoint_2_1000.pt"),
        (1200, tmp_path / "checkpoint_last.pt")]
