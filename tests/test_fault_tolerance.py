"""Faults during a run: SIGKILL and restart, corrupt audio in the corpus.

Kill-and-resume trains zipformer_tiny with ScaledAdam + Eden, input dropout and the data path's
random crops and masks, kills the process in the update after each checkpoint (so it resumes from each),
restarts the same command, and demands the data, the final parameters and the optimizer state of
an uninterrupted run, bit for bit, with the Zipformer in full training mode (dropout, layer and
module skips, feature masks, Balancer/Whiten draws): the task seeds the model's randomness from
(seed, update, the batch's utterances), the bucketed plan is a pure function of (seed, epoch), the
schedules' batch count is a function of the update count, and the checkpoint carries the iterator
position, the optimizer and scheduler states and the Whiten modules' adaptive state.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf
import torch
from test_distributed import PRESET_DIR, RECORD_IDS_ENV, REPO, compiled_overrides, train
from test_distributed import THIS_FILE as LAUNCHER

from k2ssl_fairseq import checkpoints
from k2ssl_fairseq.data.audio import AudioReadError

pytestmark = pytest.mark.e2e

MAX_UPDATE = 7
SAVE_EVERY = 2


def resume_overrides(corpus: Path) -> List[str]:
    """The preset's ScaledAdam + Eden with a small batch budget, so the epoch has several batches."""
    return [f"task.data={corpus}", f"task.label_dir={corpus}", "task.max_duration=3.0",
            f"optimization.max_update={MAX_UPDATE}", f"checkpoint.save_interval_updates={SAVE_EVERY}",
            "optimization.lr=[0.01]"]


def train_until_killed(run_dir: Path, overrides: List[str], kill_after_update: int) -> str:
    """Start the run and SIGKILL it as soon as it logs ``kill_after_update`` (mid next update)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "killed.log"
    cmd = [sys.executable, str(LAUNCHER), "--config-dir", str(PRESET_DIR), "--config-name", "zipformer_tiny",
           f"hydra.run.dir={run_dir}", f"checkpoint.save_dir={run_dir / 'ckpt'}",
           f"common.user_dir={REPO / 'k2ssl_fairseq'}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), RECORD_IDS_ENV: str(run_dir)}
    marker = f'"num_updates": "{kill_after_update}"'
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        while marker not in log_path.read_text():
            assert proc.poll() is None, \
                f"run ended before update {kill_after_update}:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "run too slow to reach the kill point"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return log_path.read_text()


def updates_to_ids(run_dir: Path) -> Dict[int, List[List[int]]]:
    """Every recorded training batch, grouped by update index (a resumed update appears twice)."""
    seen: Dict[int, List[List[int]]] = {}
    for line in (run_dir / "ids_rank0.jsonl").read_text().splitlines():
        record = json.loads(line)
        seen.setdefault(record["update"], []).append(record["ids"])
    return seen


def model_and_optimizer(run_dir: Path):
    state = checkpoints.load_checkpoint(run_dir / "ckpt" / "checkpoint_last.pt")
    assert state["optimizer_history"][-1]["num_updates"] == MAX_UPDATE
    return state["model"], state["last_optimizer_state"]


def assert_same_tensors(a, b, path: str = "") -> None:
    if torch.is_tensor(a):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_tensors(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a} != {b}"


def assert_resumes_exactly(overrides: List[str], tmp_path: Path, kill_points: List[int]) -> None:
    """An uninterrupted run, then one run killed after each of ``kill_points`` and restarted: the
    same data per update and, at the end, the same parameters and optimizer state, bit for bit."""
    reference_dir = tmp_path / "uninterrupted"
    train(reference_dir, overrides, env={RECORD_IDS_ENV: str(reference_dir)})
    reference_ids = updates_to_ids(reference_dir)
    reference_model, reference_optimizer = model_and_optimizer(reference_dir)
    for kill_after in kill_points:
        resumed_dir = tmp_path / f"killed_after_{kill_after}"
        train_until_killed(resumed_dir, overrides, kill_after)
        resumed_log = train(resumed_dir, overrides, env={RECORD_IDS_ENV: str(resumed_dir)})
        loaded = re.search(r"Loaded checkpoint \S+checkpoint_last\.pt \(epoch (\d+) @ (\d+) updates\)", resumed_log)
        assert loaded, "the restart did not resume from checkpoint_last.pt"
        resumed_from = int(loaded.group(2))
        assert SAVE_EVERY <= resumed_from <= kill_after

        resumed_ids = updates_to_ids(resumed_dir)
        assert sorted(resumed_ids) == sorted(reference_ids) == list(range(MAX_UPDATE))
        for update, batches in resumed_ids.items():
            # the update running when the process was killed may not have reached the task yet
            replays = {2} if resumed_from <= update < kill_after else {1, 2} if update == kill_after else {1}
            assert len(batches) in replays, f"killed after {kill_after}: update {update} ran {len(batches)} times"
            assert all(batch == reference_ids[update][0] for batch in batches), \
                f"killed after {kill_after}: update {update} saw other data"

        resumed_model, resumed_optimizer = model_and_optimizer(resumed_dir)
        assert_same_tensors(resumed_model, reference_model, f"killed after {kill_after} (resumed at {resumed_from}): model")
        assert_same_tensors(resumed_optimizer, reference_optimizer, f"killed after {kill_after}: optimizer")


def test_sigkill_and_restart_equals_an_uninterrupted_run(tiny_corpus: Path, tmp_path: Path):
    # killed in the update after each save (its log line comes after checkpoint_1_<n>.pt is written):
    # resumed at 2 and at 4, in different optimizer and regulariser phases
    assert_resumes_exactly(resume_overrides(tiny_corpus), tmp_path, list(range(SAVE_EVERY + 1, MAX_UPDATE - 1, SAVE_EVERY)))


def test_compiled_sigkill_and_restart_equals_an_uninterrupted_compiled_run(tiny_corpus: Path, tmp_path: Path):
    """``model.compile=true`` (aot_eager: traced, no code generation; two small stacks): the compiled
    step takes the same draws from the same seeds, so a restarted compiled run continues exactly."""
    kill_after = 2 * SAVE_EVERY + 1  # resumed at the second checkpoint
    assert_resumes_exactly([*resume_overrides(tiny_corpus), *compiled_overrides()], tmp_path, [kill_after])
    for run in ("uninterrupted", f"killed_after_{kill_after}"):
        assert "compiled zipformer_ssl graph 1 of at most" in (tmp_path / run / "train.log").read_text(), run


@pytest.fixture
def corpus_with_corrupt_file(tiny_corpus: Path, tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    manifest = (corpus / "train.tsv").read_text().splitlines()
    manifest[0] = str(corpus)
    (corpus / "train.tsv").write_text("\n".join(manifest) + "\n")
    valid = (corpus / "valid.tsv").read_text().splitlines()
    (corpus / "valid.tsv").write_text("\n".join([str(corpus)] + valid[1:]) + "\n")
    (corpus / "wav" / "train_0003.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    return corpus


def test_corrupt_audio_fails_before_training_by_default(corpus_with_corrupt_file: Path, tmp_path: Path):
    corpus = corpus_with_corrupt_file
    with pytest.raises(AssertionError) as failure:
        train(tmp_path / "run", [f"task.data={corpus}", f"task.label_dir={corpus}",
                                 "optimization.max_update=2"])
    log = (tmp_path / "run" / "train.log").read_text()
    assert "train_0003.wav" in log and "skip_invalid" in log, str(failure.value)[-3000:]
    assert "train_inner" not in log


def test_corrupt_audio_is_skipped_and_counted_with_skip_invalid(corpus_with_corrupt_file: Path, tmp_path: Path):
    corpus = corpus_with_corrupt_file
    log = train(tmp_path / "run", [f"task.data={corpus}", f"task.label_dir={corpus}",
                                   "++task.skip_invalid=true",
                                   "optimization.max_update=2"])
    assert re.search(r"train\.tsv: 11 utterances used, 1 invalid skipped", log)
    assert "train_0003.wav" in log
    assert '"num_updates": "2"' in log


def test_audio_that_breaks_after_startup_is_named(tiny_corpus: Path, tmp_path: Path):
    """Mid-run decode failures fail fast, naming the manifest line and the file."""
    from k2ssl_fairseq.data.bucketing import BatchingSettings
    from k2ssl_fairseq.data.dataset import BucketedAudioDataset, LabelSettings
    from k2ssl_fairseq.data.index import IndexSettings, build_index

    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    (corpus / "train.tsv").write_text(
        "\n".join([str(corpus)] + (corpus / "train.tsv").read_text().splitlines()[1:]) + "\n")
    index = build_index(corpus / "train.tsv", [], IndexSettings(sample_rate=16000))
    dataset = BucketedAudioDataset(index, BatchingSettings(max_duration=4.0), LabelSettings((), 50.0))
    (corpus / "wav" / "train_0005.wav").write_bytes(b"garbage")
    with pytest.raises(AudioReadError, match=r"train\.tsv.*train_0005\.wav"):
        dataset[(5, 0, 16000, 0, 1)]


def test_nan_audio_skips_its_update_and_the_run_goes_on(tiny_corpus: Path, tmp_path: Path):
    """A file of NaN samples passes start-up checks (its header is fine) and poisons its batch's
    loss: that update is skipped with a warning, counted in the epoch summary
    (``train_nonfinite_skips``), and the epoch finishes with finite weights."""
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    for split in ("train", "valid"):
        lines = (corpus / f"{split}.tsv").read_text().splitlines()
        (corpus / f"{split}.tsv").write_text("\n".join([str(corpus)] + lines[1:]) + "\n")
    poisoned = corpus / "wav" / "train_0004.wav"
    audio, rate = sf.read(poisoned, dtype="float32")
    sf.write(poisoned, np.full_like(audio, np.nan), rate, subtype="FLOAT")

    log = train(tmp_path / "run", [f"task.data={corpus}", f"task.label_dir={corpus}",
                                   "optimization.max_epoch=1", "optimization.max_update=0",
                                   "task.max_duration=3.0"])
    assert "update skipped, weights unchanged (1 skipped so far)" in log
    epoch_summary = [line for line in log.splitlines() if "][train][INFO] - {" in line]
    assert epoch_summary and json.loads(epoch_summary[-1].split(" - ", 1)[1])["train_nonfinite_skips"] == "1"
    state = checkpoints.load_checkpoint(tmp_path / "run" / "ckpt" / "checkpoint_last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
