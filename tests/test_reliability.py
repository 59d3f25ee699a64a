"""Reliability patches inside a real fairseq Trainer: non-finite updates are skipped, and a crash
while a checkpoint is written never damages ``checkpoint_last.pt``; with a patch off, fairseq's own
behaviour comes back."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from fairseq import checkpoint_utils, tasks, utils
from fairseq.trainer import Trainer
from omegaconf import open_dict

import k2ssl_fairseq
from helpers import compose_config
from k2ssl_fairseq import checkpoints, patches
from k2ssl_fairseq.bench.common import PLUGIN_DIR
from k2ssl_fairseq.patches import atomic_checkpoints, nonfinite_skips, wrapping

PRESET_DIR = Path(__file__).resolve().parent.parent / "config" / "pretrain"


@pytest.fixture(scope="module")
def trainer_and_batches(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    """A zipformer_tiny Trainer on the bucketed task, and the first epoch's batches."""
    save_dir = tmp_path_factory.mktemp("reliability_ckpt")
    cfg = compose_config(PRESET_DIR, "zipformer_tiny", [
        f"task.data={tiny_corpus}", f"task.label_dir={tiny_corpus}", "task.max_duration=2.0",
        f"checkpoint.save_dir={save_dir}", f"common.user_dir={PLUGIN_DIR}",
        "hydra.run.dir=unused"])
    utils.import_user_module(cfg.common)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    trainer = Trainer(cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion))
    epoch_itr = trainer.get_train_iterator(epoch=1, load_dataset=False)
    batches = list(epoch_itr.next_epoch_itr(shuffle=False))
    assert len(batches) >= 3, "the tiny corpus must give at least three batches"
    return trainer, epoch_itr, batches


def snapshot(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The weights (the regularisers' adaptive state in the state dict follows updates lazily)."""
    return {name: value.detach().clone() for name, value in module.named_parameters()}


def nan_batch(batch: Dict) -> Dict:
    poisoned = dict(batch, net_input=dict(batch["net_input"]))
    poisoned["net_input"]["source"] = batch["net_input"]["source"].clone()
    poisoned["net_input"]["source"][0, :400] = float("nan")
    return poisoned


def optimizer_state_tensors(trainer: Trainer) -> List[torch.Tensor]:
    state = trainer.optimizer.state_dict()["state"]
    return [value.clone() for entry in state.values() for value in entry.values() if torch.is_tensor(value)]


def test_plugin_import_installs_the_patches():
    assert k2ssl_fairseq.patches.active() == list(patches.PATCHES)
    assert wrapping.is_replaced(checkpoint_utils, "torch_persistent_save")
    assert wrapping.is_replaced(Trainer, "train_step") and wrapping.is_replaced(Trainer, "clip_grad_norm")


@pytest.fixture()
def patch_off():
    """Turn one patch off for a test, and every patch back on after it."""
    def turn_off(name: str) -> None:
        patches.apply(f"-{name}")
    yield turn_off
    patches.apply("")


def test_without_nonfinite_skips_fairseq_stops_at_the_first_nan(trainer_and_batches, patch_off):
    trainer, _, batches = trainer_and_batches
    patch_off(nonfinite_skips.NAME)
    assert not wrapping.is_replaced(Trainer, "train_step")
    with pytest.raises(FloatingPointError):
        trainer.train_step([nan_batch(batches[0])])
    trainer.zero_grad()


def test_nonfinite_loss_skips_the_update_and_counts_it(trainer_and_batches, caplog):
    trainer, _, batches = trainer_and_batches
    model = trainer.get_model()
    before_first = snapshot(model)
    assert trainer.train_step([batches[0]]) is not None
    updates = trainer.get_num_updates()
    after_first = snapshot(model)
    assert any(not torch.equal(before_first[k], after_first[k]) for k in after_first), "a good batch must train"
    moments = optimizer_state_tensors(trainer)
    skips_before = nonfinite_skips.nonfinite_skips(trainer)

    with caplog.at_level(logging.WARNING, logger="k2ssl_fairseq.patches.nonfinite_skips"):
        assert trainer.train_step([nan_batch(batches[1])]) is None

    assert nonfinite_skips.nonfinite_skips(trainer) == skips_before + 1
    assert trainer.get_num_updates() == updates
    assert "update skipped" in caplog.text and f"at update {updates + 1}" in caplog.text
    after_skip = snapshot(model)
    changed = [k for k in after_skip if not torch.equal(after_first[k], after_skip[k])]
    assert not changed, f"skipped update changed {changed[:5]}"
    assert all(torch.equal(a, b) for a, b in zip(moments, optimizer_state_tensors(trainer)))
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())

    assert trainer.train_step([batches[2]]) is not None, "training continues after a skipped update"
    assert trainer.get_num_updates() == updates + 1
    assert all(torch.isfinite(v).all() for v in snapshot(model).values() if v.is_floating_point())


def test_a_diverged_run_still_fails(trainer_and_batches, monkeypatch):
    trainer, _, batches = trainer_and_batches
    monkeypatch.setenv(nonfinite_skips.MAX_SKIPS_ENV, "1")
    assert trainer.train_step([nan_batch(batches[0])]) is None
    with pytest.raises(FloatingPointError, match="2 consecutive updates had non-finite gradients"):
        trainer.train_step([nan_batch(batches[1])])
    trainer.zero_grad()
    monkeypatch.setenv(nonfinite_skips.MAX_SKIPS_ENV, "many")
    with pytest.raises(ValueError, match=nonfinite_skips.MAX_SKIPS_ENV):
        nonfinite_skips.max_consecutive_skips()


def crash_halfway(payload, handle, *args, **kwargs):
    """Stands in for ``torch.save(obj, f)`` / ``shutil.copyfileobj(src, dst)``: writes a few bytes,
    then dies like a full disk or a killed process."""
    handle.write(b"PK\x03\x04 partial checkpoint")
    raise OSError("simulated crash during checkpoint write")


def copy_crashing_halfway(src: str, dst: str, **kwargs) -> None:
    """Stands in for fairseq's in-place ``shutil.copyfile``: the destination is opened and truncated,
    a few bytes land, then the process dies."""
    with open(dst, "wb") as handle:
        crash_halfway(None, handle)


@pytest.mark.parametrize("crash_in", ["torch_save", "copy"])
def test_crash_during_save_keeps_the_previous_checkpoint_last(trainer_and_batches, monkeypatch, crash_in):
    """``torch_save``: checkpoint_last.pt is written directly; ``copy``: fairseq writes the epoch
    checkpoint (the fixture's iterator is at the end of epoch 1) and copies it onto checkpoint_last.pt."""
    trainer, epoch_itr, batches = trainer_and_batches
    cfg = trainer.cfg.checkpoint
    with open_dict(cfg):
        cfg.no_epoch_checkpoints = crash_in != "copy"
    last = Path(cfg.save_dir) / "checkpoint_last.pt"
    trainer.train_step([batches[0]])
    checkpoint_utils.save_checkpoint(cfg, trainer, epoch_itr, None)
    saved_updates = trainer.get_num_updates()
    assert checkpoints.load_checkpoint(last)["optimizer_history"][-1]["num_updates"] == saved_updates

    trainer.train_step([batches[1]])
    if crash_in == "copy":
        monkeypatch.setattr(shutil, "copyfileobj", crash_halfway)
    else:
        monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(OSError, match="simulated crash"):
        checkpoint_utils.save_checkpoint(cfg, trainer, epoch_itr, None)
    monkeypatch.undo()

    state = checkpoints.load_checkpoint(last)
    assert state["optimizer_history"][-1]["num_updates"] == saved_updates
    assert set(state["model"]) == set(trainer.get_model().state_dict())
    assert not list(Path(cfg.save_dir).glob("*.tmp")), "a failed write must not leave temporary files"


def test_without_atomic_checkpoints_a_crash_truncates_checkpoint_last(trainer_and_batches, monkeypatch, patch_off):
    """What the patch prevents: fairseq's own copy onto checkpoint_last.pt, interrupted, leaves it broken."""
    trainer, epoch_itr, batches = trainer_and_batches
    patch_off(atomic_checkpoints.NAME)
    assert not wrapping.is_replaced(checkpoint_utils, "torch_persistent_save")
    cfg = trainer.cfg.checkpoint
    with open_dict(cfg):
        cfg.no_epoch_checkpoints = False
    last = Path(cfg.save_dir) / "checkpoint_last.pt"
    trainer.train_step([batches[0]])
    checkpoint_utils.save_checkpoint(cfg, trainer, epoch_itr, None)
    monkeypatch.setattr(shutil, "copyfile", copy_crashing_halfway)
    with pytest.raises(OSError, match="simulated crash"):
        checkpoint_utils.save_checkpoint(cfg, trainer, epoch_itr, None)
    monkeypatch.undo()
    with pytest.raises(checkpoints.CheckpointReadError):
        checkpoints.load_checkpoint(last)


def test_atomic_copy_and_save_replace_the_destination(tmp_path: Path):
    source = tmp_path / "new.pt"
    atomic_checkpoints.atomic_torch_save({"value": torch.arange(3)}, str(source))
    destination = tmp_path / "checkpoint_last.pt"
    destination.write_bytes(b"old")
    atomic_checkpoints.atomic_copy(str(source), str(destination))
    assert destination.read_bytes() == source.read_bytes()
    assert torch.equal(torch.load(destination, weights_only=True)["value"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt", "new.pt"]
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert destination.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777, "permissions of a normal write"
