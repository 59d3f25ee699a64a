"""The demo corpus builder's planning parts: disjoint clause pools, nested labelled subsets, resumable writes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from k2ssl_fairseq.tools import make_demo_corpus as builder


def _clauses(short: int, long: int) -> list:
    return sorted([f"SHORT CLAUSE NUMBER {builder.number_words(i).upper()}" for i in range(short)] +
                  [f"A LONGER CLAUSE OF PROSE WITH MANY WORDS NUMBER {builder.number_words(i).upper()}"
                   for i in range(long)])


def test_pools_are_disjoint_and_the_pool_reads_what_labelled_splits_do_not():
    sentences = _clauses(400, 600)
    pools = builder.plan_pools(sentences, np.random.default_rng(0), synth_seconds=300.0, pretrain_seconds=1500.0)
    seen = [c for pool in pools.values() for c in pool]
    assert len(seen) == len(set(seen)), "a clause is read in two splits"
    for split in ("train", "valid", "test", "pretrain_only"):
        assert pools[split] and all(builder._is_short(c) for c in pools[split]), split
    pretrain = [builder.estimated_seconds(c) for c in pools["train"] + pools["pretrain_only"] + pools["pool"]]
    assert sum(pretrain) >= 1500.0 > sum(pretrain) - pretrain[-1], "the pool reads just what pretrain still needs"
    assert not set(pools["pool"]) & set(pools["valid"] + pools["test"])


def test_pool_larger_than_the_text_is_refused_with_what_is_available():
    with pytest.raises(SystemExit, match="ask for fewer --pool-hours"):
        builder.plan_pools(_clauses(200, 10), np.random.default_rng(0), synth_seconds=100.0, pretrain_seconds=36000.0)


def test_labelled_subsets_are_nested_and_at_least_their_size():
    rng = np.random.default_rng(1)
    train = [builder.Utterance(Path(f"wav/train/{i}.wav"), int(rng.uniform(1.0, 4.0) * 16000), "A B", "espeak:x")
             for i in range(2000)]
    subsets = builder.labelled_subsets(train, seed=1)
    ten, hour = subsets["train_10min"], subsets["train_1h"]
    seconds = [sum(u.num_samples for u in s) / 16000 for s in (ten, hour)]
    assert 600 <= seconds[0] < 604 and 3600 <= seconds[1] < 3604
    assert ten == hour[:len(ten)], "10 min must be the first part of the hour"
    assert builder.labelled_subsets(train[:100], seed=1) == {}, "too little train audio: no subsets"


def test_write_once_reuses_a_finished_file_and_leaves_no_partial(tmp_path: Path):
    calls = []

    def make() -> np.ndarray:
        calls.append(1)
        return np.zeros(1600, dtype=np.float32)

    assert builder.write_once(tmp_path, "wav/x/a.wav", make) == 1600
    assert builder.write_once(tmp_path, "wav/x/a.wav", make) == 1600
    assert len(calls) == 1
    assert sorted(p.name for p in (tmp_path / "wav" / "x").iterdir()) == ["a.wav"]
    assert sf.info(tmp_path / "wav" / "x" / "a.wav").samplerate == 16000


def test_write_once_failure_leaves_nothing_to_reuse(tmp_path: Path):
    def broken() -> np.ndarray:
        raise RuntimeError("synthesis failed")

    with pytest.raises(RuntimeError, match="synthesis failed"):
        builder.write_once(tmp_path, "wav/x/b.wav", broken)
    assert not (tmp_path / "wav" / "x" / "b.wav").exists()


def test_gsm_duration_is_read_from_its_frame_count(tmp_path: Path):
    gsm = tmp_path / "prompt.gsm"
    gsm.write_bytes(b"\0" * 33 * 150)  # 150 frames of 20 ms
    assert builder._real_seconds(gsm) == pytest.approx(3.0)


def test_progress_eta_extrapolates_the_rate_so_far(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    clock = iter([100.0, 110.0, 120.0, 150.0, 160.0])  # start, then one reading per printed step
    monkeypatch.setattr(builder.time, "time", lambda: next(clock))
    progress = builder.Progress("synthesized", 4)
    for done in range(1, 5):
        progress.step(done, 16000 * 900)
    lines = capsys.readouterr().out.splitlines()
    assert "synthesized 1/4 utterances (0.25 h of audio), 10 s elapsed, ETA 30 s" in lines[0]
    assert "synthesized 2/4 utterances (0.50 h of audio), 20 s elapsed, ETA 20 s" in lines[1]
    assert "synthesized 3/4 utterances (0.75 h of audio), 50 s elapsed, ETA 17 s" in lines[2]
    assert "synthesized 4/4 utterances (1.00 h of audio), 60 s elapsed, ETA 0 s" in lines[3]
