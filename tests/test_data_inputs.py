"""Manifest, audio windows, label cache and start-up validation: each bad input gets a clear error."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from k2ssl_fairseq.data.audio import AudioReadError, read_audio
from k2ssl_fairseq.data.bucketing import BatchingSettings
from k2ssl_fairseq.data.dataset import BucketedAudioDataset, LabelSettings
from k2ssl_fairseq.data.index import IndexSettings, InvalidInputError, LabelSource, build_index
from k2ssl_fairseq.data.labels import load_labels, parse_labels
from k2ssl_fairseq.data.manifest import ManifestError, read_manifest
from k2ssl_fairseq.data.synthetic import make_tiny_corpus

KM_SYMBOLS = ["<s>", "<pad>", "</s>", "<unk>"] + [str(k) for k in range(20)]


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    """A private corpus each test may damage."""
    return make_tiny_corpus(tmp_path / "corpus", splits={"train": 6})


def _index(corpus: Path, **settings) -> object:
    source = LabelSource(corpus / "train.km", KM_SYMBOLS, 50.0)
    return build_index(corpus / "train.tsv", [source], IndexSettings(**settings))


def _lines(path: Path) -> list:
    return path.read_text().splitlines()


def _write_lines(path: Path, lines: list) -> None:
    path.write_text("\n".join(lines) + "\n")


def test_manifest_reads_root_names_and_counts(corpus: Path):
    manifest = read_manifest(corpus / "train.tsv")
    assert manifest.root == corpus and len(manifest) == 6
    assert manifest.num_samples.dtype == np.int64
    assert manifest.num_samples[0] == sf.info(str(manifest.audio_path(0))).frames


@pytest.mark.parametrize("bad_line, problem", [
    ("", "empty line"),
    ("wav/x.wav", "expected 'path<TAB>num_samples'"),
    ("wav/x.wav\tlots", "sample count 'lots' is not a non-negative integer"),
    ("wav/x.wav\t0", "sample count 0: empty audio"),
])
def test_malformed_manifest_line_names_file_and_line(corpus: Path, bad_line: str, problem: str):
    lines = _lines(corpus / "train.tsv")
    lines[3] = bad_line
    _write_lines(corpus / "train.tsv", lines)
    with pytest.raises(ManifestError, match=rf"train\.tsv:4: {problem}"):
        read_manifest(corpus / "train.tsv")
    with pytest.raises(InvalidInputError, match=rf"train\.tsv:4: {problem}"):
        _index(corpus)


def test_window_read_equals_whole_file_cropped(corpus: Path):
    path = corpus / "wav" / "train_0002.wav"
    whole = read_audio(path)
    assert whole.dtype == np.float32 and whole.ndim == 1
    np.testing.assert_array_equal(whole, sf.read(str(path), dtype="float32")[0])
    for start, count in [(0, 400), (1234, 5000), (len(whole) - 321, 321)]:
        np.testing.assert_array_equal(read_audio(path, start, count), whole[start:start + count])


def test_audio_errors_name_the_file(tmp_path: Path):
    with pytest.raises(AudioReadError, match="missing.wav"):
        read_audio(tmp_path / "missing.wav")
    sf.write(tmp_path / "8k.wav", np.zeros(800, np.float32), 8000)
    with pytest.raises(AudioReadError, match=r"8k\.wav: sample rate 8000 Hz, expected 16000 Hz"):
        read_audio(tmp_path / "8k.wav")
    with pytest.raises(AudioReadError, match=r"8k\.wav: cannot read samples \[700, 900\)"):
        read_audio(tmp_path / "8k.wav", 700, 200, expected_sample_rate=8000)


def test_label_cache_round_trip_and_rebuild(corpus: Path):
    path = corpus / "train.km"
    parsed = parse_labels(path, KM_SYMBOLS)
    first = load_labels(path, KM_SYMBOLS)
    cache = path.with_name("train.km.k2ssl.npz")
    assert cache.is_file()
    cached = load_labels(path, KM_SYMBOLS)
    for labels in (first, cached):
        np.testing.assert_array_equal(labels.values, parsed.values)
        np.testing.assert_array_equal(labels.offsets, parsed.offsets)
    assert cached.values.dtype == np.int16 and isinstance(cached.values, np.memmap) and len(cached) == 6
    # Line 0 through the dictionary: k-means id k is index k + 4.
    np.testing.assert_array_equal(cached.line(0), [int(t) + 4 for t in _lines(path)[0].split()])

    # Editing the label file (new size and mtime) rebuilds the cache.
    lines = _lines(path)
    lines[1] = " ".join(["7"] * len(lines[1].split()))
    _write_lines(path, lines)
    os.utime(path, ns=(cache.stat().st_mtime_ns + 10**9,) * 2)
    rebuilt = load_labels(path, KM_SYMBOLS)
    np.testing.assert_array_equal(rebuilt.line(1), np.full(len(lines[1].split()), 11))
    # A different dictionary is a different cache key as well.
    shifted = load_labels(path, KM_SYMBOLS[:4] + ["extra"] + KM_SYMBOLS[4:])
    np.testing.assert_array_equal(shifted.line(1), np.full(len(lines[1].split()), 12))


def test_label_cache_dir_and_transcripts(corpus: Path, tmp_path: Path):
    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [l.split()[0] for l in _lines(corpus / "dict.ltr.txt")]
    labels = load_labels(corpus / "train.ltr", symbols, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("train.ltr.*.k2ssl.npz"))) == 1
    first_line = _lines(corpus / "train.ltr")[0].split()
    assert [symbols[i] for i in labels.line(0)] == first_line


def test_valid_corpus_passes(corpus: Path):
    index = _index(corpus)
    assert len(index) == 6 and index.labels[0].values.size > 0


def _damage_audio(corpus: Path, kind: str) -> str:
    """Damage utterance 2 (manifest line 4) and return the problem text expected."""
    wav = corpus / "wav" / "train_0002.wav"
    if kind == "missing":
        wav.unlink()
        return "audio file does not exist"
    if kind == "unreadable":
        wav.write_bytes(b"RIFF not really a wav file")
        return "unreadable audio"
    if kind == "sample_rate":
        audio, _ = sf.read(str(wav))
        sf.write(str(wav), audio, 8000)
        return "sample rate 8000 Hz, expected 16000 Hz"
    if kind == "stereo":
        audio, _ = sf.read(str(wav))
        sf.write(str(wav), np.stack([audio, audio], 1), 16000)
        return "2 channels, expected mono"
    lines = _lines(corpus / "train.tsv")
    name, count = lines[3].split("\t")
    lines[3] = f"{name}\t{int(count) + 5}"
    _write_lines(corpus / "train.tsv", lines)
    return f"manifest says {int(count) + 5} samples, file has {count}"


@pytest.mark.parametrize("kind", ["missing", "unreadable", "sample_rate", "stereo", "count"])
def test_bad_audio_fails_with_file_and_line(corpus: Path, kind: str):
    problem = _damage_audio(corpus, kind)
    with pytest.raises(InvalidInputError) as raised:
        _index(corpus)
    message = str(raised.value)
    assert f"train.tsv:4: {corpus / 'wav' / 'train_0002.wav'}: {problem}" in message
    assert "skip_invalid=true" in message


def test_skip_invalid_skips_and_logs(corpus: Path, caplog: pytest.LogCaptureFixture):
    _damage_audio(corpus, "missing")
    lines = _lines(corpus / "train.km")
    lines[4] = ""
    _write_lines(corpus / "train.km", lines)
    with caplog.at_level(logging.WARNING):
        index = _index(corpus, skip_invalid=True)
    assert len(index) == 4
    assert [index.audio_path(i).name for i in range(4)] == [f"train_000{i}.wav" for i in (0, 1, 3, 5)]
    assert "2 invalid input(s)" in caplog.text and "train.km:5: empty label line" in caplog.text


def test_audio_checks_can_be_turned_off(corpus: Path):
    _damage_audio(corpus, "missing")
    assert len(_index(corpus, check_audio=False)) == 6


@pytest.mark.parametrize("edit, problem", [
    (lambda ls: ls.__setitem__(2, ""), r"train\.km:3: empty label line"),
    (lambda ls: ls.__setitem__(2, ls[2] + " 99"), r"train\.km:3: unknown symbol\(s\) \['99'\]"),
    (lambda ls: ls.__setitem__(2, ls[2] + " x"), r"train\.km:3: unknown symbol\(s\) \['x'\]"),
    (lambda ls: ls.__setitem__(2, " ".join(ls[2].split()[:-10])), r"train\.km:3: \d+ labels but the audio"),
])
def test_bad_label_lines_fail_with_file_and_line(corpus: Path, edit, problem: str):
    lines = _lines(corpus / "train.km")
    edit(lines)
    _write_lines(corpus / "train.km", lines)
    with pytest.raises(InvalidInputError, match=problem):
        _index(corpus)


def test_label_length_within_tolerance_passes(corpus: Path):
    lines = _lines(corpus / "train.km")
    lines[2] = " ".join(lines[2].split()[:-4])  # 4 frames = 0.08 s < 0.1 s tolerance
    _write_lines(corpus / "train.km", lines)
    assert len(_index(corpus)) == 6


def test_label_line_count_mismatch_is_always_fatal(corpus: Path):
    _write_lines(corpus / "train.km", _lines(corpus / "train.km")[:-1])
    for skip in (False, True):
        with pytest.raises(InvalidInputError, match=r"train\.km: 5 label lines but .*train\.tsv has 6 data lines"):
            _index(corpus, skip_invalid=skip)


def test_decode_failure_mid_training_names_file(corpus: Path):
    index = _index(corpus)
    dataset = BucketedAudioDataset(index, BatchingSettings(max_duration=10.0), LabelSettings((1,), 50.0))
    (corpus / "wav" / "train_0003.wav").write_bytes(b"corrupted after start-up")
    row = np.array([3, 0, 8000, 0, 1])
    with pytest.raises(AudioReadError, match=r"train\.tsv:5: .*train_0003\.wav: cannot read audio"):
        dataset[row]
    shutil.rmtree(corpus / "wav")
    with pytest.raises(AudioReadError, match=r"train_0000\.wav"):
        dataset[np.array([0, 0, 8000, 0, 1])]


def test_decode_failure_mid_training_is_skipped_with_skip_invalid(corpus: Path, caplog):
    index = _index(corpus)
    dataset = BucketedAudioDataset(index, BatchingSettings(max_duration=10.0), LabelSettings((1,), 50.0),
                                   skip_unreadable=True)
    (corpus / "wav" / "train_0003.wav").write_bytes(b"corrupted after start-up")
    rows = [np.array([u, 0, 8000, 0, 1]) for u in (2, 3, 4)]
    with caplog.at_level(logging.WARNING):
        batch = dataset.collater([dataset[row] for row in rows])
    assert "train.tsv:5" in caplog.text and "train_0003.wav" in caplog.text
    assert batch["id"].tolist() == [2, 4]
    assert batch["net_input"]["source"].shape == (2, 8000)
    assert batch["audio_stats"]["skipped_utterances"] == 1
    assert dataset.collater([dataset[rows[1]]]) == {}


def test_skipped_manifest_line_keeps_labels_aligned(corpus: Path):
    lines = _lines(corpus / "train.tsv")
    lines[2] = "wav/train_0001.wav"  # data line 1 loses its sample count
    _write_lines(corpus / "train.tsv", lines)
    index = _index(corpus, skip_invalid=True)
    assert len(index) == 5
    km_lines = _lines(corpus / "train.km")
    for utterance in range(5):
        line = index.label_line(utterance)
        assert index.audio_path(utterance).name == f"train_{line:04d}.wav"
        np.testing.assert_array_equal(index.labels[0].line(line), [int(t) + 4 for t in km_lines[line].split()])
