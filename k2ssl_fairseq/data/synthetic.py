"""A small synthetic speech-like corpus in fairseq's layout, for smoke runs, benchmarks and tests.

It is synthetic but learnable: every letter is a distinct two-tone chord, words are separated by
short silences, and the 50 Hz k-means-style labels are the letter under each CNN frame, so models
trained on it must reduce their loss and CTC can learn to read it. Everything is a pure function of
the seed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping

import numpy as np
import soundfile as sf

from .frames import conv_frames

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _letter_chord(letter_id: int, num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(num_samples) / sample_rate
    f1 = 180.0 + 37.0 * letter_id
    f2 = 900.0 + 113.0 * ((letter_id * 7) % 26)
    envelope = np.clip(np.sin(np.pi * np.arange(num_samples) / max(num_samples - 1, 1)), 0, None) ** 0.5
    tone = 0.5 * np.sin(2 * np.pi * f1 * t) + 0.3 * np.sin(2 * np.pi * f2 * t)
    return envelope * tone + 0.01 * rng.standard_normal(num_samples)


def synth_utterance(rng: np.random.Generator, seconds: float, sample_rate: int = 16000):
    """One utterance of random 'words' made of letter chords.

    Returns:
        (waveform float32 (samples,), words list, per-sample letter id (0 = silence, k+1 = letter k)).
    """
    pieces: List[np.ndarray] = []
    ids: List[np.ndarray] = []
    words: List[str] = []
    total = int(seconds * sample_rate)
    used = 0
    while True:
        word = "".join(LETTERS[i] for i in rng.integers(0, len(LETTERS), rng.integers(2, 6)))
        seg = [(LETTERS.index(c), int(rng.uniform(0.06, 0.12) * sample_rate)) for c in word]
        gap = int(0.05 * sample_rate)
        need = sum(n for _, n in seg) + gap
        if words and used + need > total:
            break
        for letter, n in seg:
            pieces.append(_letter_chord(letter, n, sample_rate, rng))
            ids.append(np.full(n, letter + 1, dtype=np.int64))
        pieces.append(0.01 * rng.standard_normal(gap))
        ids.append(np.zeros(gap, dtype=np.int64))
        words.append(word)
        used += need
    wav = np.concatenate(pieces).astype(np.float32)
    return wav, words, np.concatenate(ids)


def make_tiny_corpus(
    root: Path,
    splits: Mapping[str, int] = None,
    min_seconds: float = 1.0,
    max_seconds: float = 3.0,
    num_clusters: int = 20,
    seed: int = 0,
    sample_rate: int = 16000,
) -> Path:
    """Write a fairseq-layout corpus: wav/, {split}.tsv/.km/.ltr/.wrd, dict.km.txt, dict.ltr.txt.

    Args:
        root: output directory (created).
        splits: utterances per split; default ``{"train": 12, "valid": 4}``.
        min_seconds, max_seconds: utterance duration range (uniform).
        num_clusters: size of the ``km`` label set (labels are letter ids modulo this).
        seed: everything is a pure function of it.

    Returns:
        ``root`` as an absolute path.
    """
    root = Path(root).resolve()
    (root / "wav").mkdir(parents=True, exist_ok=True)
    splits = dict(splits or {"train": 12, "valid": 4})
    rng = np.random.default_rng(seed)
    letter_counts: Dict[str, int] = {}
    for split, count in splits.items():
        tsv = [str(root)]
        km, ltr, wrd = [], [], []
        for i in range(count):
            wav, words, ids = synth_utterance(rng, rng.uniform(min_seconds, max_seconds), sample_rate)
            name = f"wav/{split}_{i:04d}.wav"
            sf.write(root / name, wav, sample_rate, subtype="PCM_16")
            tsv.append(f"{name}\t{len(wav)}")
            frames = conv_frames(len(wav))
            centers = np.arange(frames) * 320 + 200
            km.append(" ".join(str(int(v) % num_clusters) for v in ids[centers]))
            wrd.append(" ".join(words))
            ltr.append(" ".join(" ".join(w) + " |" for w in words))
            for c in "".join(words) + "|" * len(words):
                letter_counts[c] = letter_counts.get(c, 0) + 1
        for ext, lines in (("tsv", tsv), ("km", km), ("ltr", ltr), ("wrd", wrd)):
            (root / f"{split}.{ext}").write_text("\n".join(lines) + "\n")
    (root / "dict.km.txt").write_text("".join(f"{k} 1\n" for k in range(num_clusters)))
    ordered = sorted(letter_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    (root / "dict.ltr.txt").write_text("".join(f"{c} {n}\n" for c, n in ordered))
    return root
