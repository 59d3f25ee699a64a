"""Build the demo speech corpus in fairseq layout (16 kHz mono, manifests, letter transcripts).

Sources, all from Debian packages and the Python standard library (nothing is downloaded at run time):

* real speech: the Asterisk core prompts in English (package ``asterisk-core-sounds-en-wav``, one
  speaker, Allison Smith, 8 kHz, CC-BY-SA-3.0) with their transcripts from ``core-sounds-en.txt``
  (package ``asterisk-core-sounds-en``); non-speech entries such as ``[ascending tones]`` are dropped
  and digits are spelled out. With ``--extra-languages`` the es/fr/it/ru prompt packages are added
  to the unlabeled ``pretrain`` split as extra real speakers.
* synthetic speech with exact transcripts: ``espeak-ng`` (GPL-3; several voices, rates, pitches) and
  ``flite`` (BSD-style; its built-in voices) reading distinct sentences taken from the English text of
  the Python documentation and standard-library docstrings shipped with the interpreter
  (``pydoc_data.topics`` and module docstrings; Python Software Foundation License), cut into clauses
  of 3 to 6 words, upper-cased, letters and apostrophes only.

Splits: ``train`` (labeled: the real prompts and the training voices), ``valid`` and ``test`` (each
read by voices that appear in no other split, on sentences that appear in no other split), and
``pretrain`` (unlabeled use: all training audio plus extra sentences read by the training voices;
valid and test audio are kept out of it so that no evaluation audio is seen in pre-training).
Everything is a pure function of ``--seed`` and the installed packages.
"""
from __future__ import annotations

import argparse
import gzip
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
ASTERISK_DIR = Path("/usr/share/asterisk/sounds")
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
REQUIRED_PACKAGES = ["asterisk-core-sounds-en", "asterisk-core-sounds-en-wav", "espeak-ng", "flite"]
EXTRA_LANGUAGE_PACKAGES = [f"asterisk-core-sounds-{lang}-wav" for lang in ("es", "fr", "it", "ru")]

# Voice roles: valid and test voices never read in train or pretrain.
TRAIN_VOICES = [("espeak", v) for v in ("en-us+m1", "en-us+f2", "en-us+m3", "en-gb+m2", "en-gb+f1",
                                         "en-gb+m7", "en-us+f4")] + [("flite", v) for v in ("kal16", "awb")]
VALID_VOICES = [("espeak", "en-gb-x-rp+m4"), ("flite", "rms")]
TEST_VOICES = [("espeak", "en-gb-scotland+f3"), ("flite", "slt")]

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " \
        "sixteen seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
# Standard-library modules whose docstrings are read for sentences (importing them has no side effects).
_DOC_MODULES = ("argparse", "asyncio", "bisect", "calendar", "codecs", "collections", "configparser",
                "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum",
                "fractions", "ftplib", "functools", "gettext", "heapq", "http.client", "imaplib",
                "inspect", "io", "ipaddress", "itertools", "json", "locale", "logging", "mailbox",
                "multiprocessing", "optparse", "pathlib", "pdb", "pickle", "pickletools", "platform",
                "poplib", "pprint", "queue", "random", "sched", "secrets", "selectors", "shelve",
                "shutil", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics", "string",
                "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
                "trace", "traceback", "typing", "unittest", "urllib.request", "uuid",
                "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile", "zoneinfo")


def number_words(n: int) -> str:
    """Spell out 0..999999 the way the Asterisk prompts read digits and numbers."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10 - 2] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    rest = n % 1000
    return number_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_words(rest))


def normalize_text(text: str) -> Optional[str]:
    """Upper-case words of letters and apostrophes, digits spelled out; None for non-speech text."""
    if "[" in text:
        return None
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} ", text)
    text = text.replace("-", " ").replace("&", " and ")
    words = [re.sub(r"[^A-Za-z']", "", w).strip("'") for w in text.split()]
    words = [w.upper() for w in words if w]
    return " ".join(words) if words else None


def collect_sentences() -> List[str]:
    """Distinct 3-6 word clauses of English prose from the Python docs and stdlib docstrings."""
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    for name in _DOC_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        texts.append(module.__doc__ or "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            docs = [getattr(getattr(module, attr, None), "__doc__", None) for attr in sorted(vars(module))
                    if not attr.startswith("_")]
        texts.extend(doc for doc in docs if isinstance(doc, str))
    found = set()
    for sentence in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", " ".join(texts))):
        for clause in re.split(r"[,;:()]", sentence):
            clause = clause.strip().rstrip(".!?").strip()
            if clause and re.fullmatch(r"[A-Za-z][A-Za-z' \-]*", clause):
                words = clause.replace("-", " ").split()
                if 3 <= len(words) <= 6 and all(len(w) <= 14 for w in words):
                    found.add(" ".join(words).upper())
    return sorted(found)


def ensure_packages(packages: Sequence[str]) -> None:
    """Install missing Debian packages when root; otherwise stop with a message naming them."""
    missing = [p for p in packages
               if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                                 text=True).stdout.strip() != "install ok installed"]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"error: missing Debian packages: {' '.join(missing)}. Install them with\n"
                 f"  sudo apt-get install -y {' '.join(missing)}\nand run this command again.")
    print(f"installing Debian packages: {' '.join(missing)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", *missing]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        proc = subprocess.run(install, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"error: apt-get could not install {' '.join(missing)}:\n{proc.stderr[-2000:]}")


@dataclass
class Utterance:
    """One corpus entry; ``words`` is None for unlabeled audio."""

    path: Path
    num_samples: int
    words: Optional[str]
    source: str


def to_16k(wav: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz, peak-normalised to 0.7 so every source has a similar level."""
    import torch
    import torchaudio

    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    tensor = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
    if rate != SAMPLE_RATE:
        tensor = torchaudio.functional.resample(tensor, rate, SAMPLE_RATE)
    out = tensor.numpy()
    peak = float(np.abs(out).max()) if out.size else 0.0
    return (out * (0.7 / peak)).astype(np.float32) if peak > 0 else out


def synthesize(engine: str, voice: str, text: str, rng: np.random.Generator, tmp: Path) -> Tuple[np.ndarray, int]:
    """Run espeak-ng or flite with a random rate (and pitch) for this utterance."""
    out = tmp / f"{abs(hash((engine, voice, text)))}_{rng.integers(1 << 30)}.wav"
    if engine == "espeak":
        cmd = ["espeak-ng", "-v", voice, "-s", str(int(rng.integers(150, 210))),
               "-p", str(int(rng.integers(25, 75))), "-w", str(out), text.lower()]
    else:
        stretch = f"{rng.uniform(0.85, 1.1):.3f}"
        cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}", "-t", text.lower(), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{engine} failed for voice {voice!r} on {text!r}: {proc.stderr.strip()}")
    wav, rate = sf.read(out, dtype="float32")
    out.unlink()
    return wav, rate


def write_wav(out_dir: Path, rel: str, wav: np.ndarray) -> int:
    path = out_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, SAMPLE_RATE, subtype="PCM_16")
    return len(wav)


def asterisk_prompts(max_seconds: float) -> List[Tuple[Path, str]]:
    """English prompts with transcripts, in transcript order, up to ``max_seconds`` of audio."""
    chosen, total = [], 0.0
    with gzip.open(ASTERISK_TEXT, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if ":" not in line or line.startswith(";"):
                continue
            name, text = line.split(":", 1)
            words = normalize_text(text)
            wav = ASTERISK_DIR / "en_US_f_Allison" / f"{name.strip()}.wav"
            if words is None or not wav.is_file():
                continue
            seconds = sf.info(wav).duration
            if total + seconds > max_seconds:
                break
            chosen.append((wav, words))
            total += seconds
    return chosen


def build(out_dir: Path, minutes: float, seed: int, extra_languages: bool, jobs: int) -> Dict[str, object]:
    packages = REQUIRED_PACKAGES + (EXTRA_LANGUAGE_PACKAGES if extra_languages else [])
    ensure_packages(packages)
    rng = np.random.default_rng(seed)
    out_dir = out_dir.resolve()
    budget = minutes * 60.0
    real = asterisk_prompts(max_seconds=0.25 * budget)
    sentences = collect_sentences()
    rng.shuffle(sentences)
    # Sentence pools are disjoint across splits; the synthetic budget (seconds, ~1.75 s each, measured) sets counts.
    synth_seconds = budget - sum(sf.info(p).duration for p, _ in real)
    n_synth = max(int(synth_seconds / 1.75), 8)
    n_eval = max(n_synth // 10, 2)
    n_pretrain_only = max(n_synth // 5, 2)
    n_train = n_synth - 2 * n_eval - n_pretrain_only
    if n_synth > len(sentences):
        sys.exit(f"error: --minutes {minutes} needs {n_synth} sentences but only {len(sentences)} are available")
    pools = {"test": sentences[:n_eval], "valid": sentences[n_eval:2 * n_eval],
             "train": sentences[2 * n_eval:2 * n_eval + n_train],
             "pretrain_only": sentences[2 * n_eval + n_train:n_synth]}
    voices = {"test": TEST_VOICES, "valid": VALID_VOICES, "train": TRAIN_VOICES, "pretrain_only": TRAIN_VOICES}

    jobs_list = []
    for split, pool in pools.items():
        for i, text in enumerate(pool):
            engine, voice = voices[split][int(rng.integers(len(voices[split])))]
            jobs_list.append((split, i, engine, voice, text, int(rng.integers(1 << 31))))

    utts: Dict[str, List[Utterance]] = {k: [] for k in pools}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)

        def run(job):
            split, i, engine, voice, text, job_seed = job
            wav, rate = synthesize(engine, voice, text, np.random.default_rng(job_seed), tmp)
            rel = f"wav/{split}/{engine}_{voice.replace('+', '_')}_{i:05d}.wav"
            return split, Utterance(Path(rel), write_wav(out_dir, rel, to_16k(wav, rate)), text, f"{engine}:{voice}")

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for done, (split, utt) in enumerate(pool.map(run, jobs_list), 1):
                utts[split].append(utt)
                if done % 200 == 0 or done == len(jobs_list):
                    print(f"  synthesized {done}/{len(jobs_list)} utterances", flush=True)

    for i, (wav_path, words) in enumerate(real):
        wav, rate = sf.read(wav_path, dtype="float32")
        rel = f"wav/train/asterisk_en_{i:04d}_{wav_path.stem}.wav"
        utts["train"].append(Utterance(Path(rel), write_wav(out_dir, rel, to_16k(wav, rate)), words, "asterisk:en"))
    extra: List[Utterance] = []
    if extra_languages:
        for lang_dir in sorted(p for p in ASTERISK_DIR.iterdir() if p.is_dir() and not p.name.startswith("en")):
            for i, wav_path in enumerate(sorted(lang_dir.rglob("*.wav"))):
                wav, rate = sf.read(wav_path, dtype="float32")
                rel = f"wav/pretrain/asterisk_{lang_dir.name}_{i:05d}.wav"
                extra.append(Utterance(Path(rel), write_wav(out_dir, rel, to_16k(wav, rate)), None,
                                       f"asterisk:{lang_dir.name}"))

    splits = {"train": utts["train"], "valid": utts["valid"], "test": utts["test"],
              "pretrain": utts["train"] + utts["pretrain_only"] + extra}
    write_split_files(out_dir, splits)
    return summarize(out_dir, splits, seed, minutes)


def letters(words: str) -> str:
    return " ".join(" ".join(w) + " |" for w in words.split())


def write_split_files(out_dir: Path, splits: Dict[str, List[Utterance]]) -> None:
    counts: Dict[str, int] = {}
    for split, items in splits.items():
        (out_dir / f"{split}.tsv").write_text(
            str(out_dir) + "\n" + "".join(f"{u.path}\t{u.num_samples}\n" for u in items))
        if split == "pretrain":
            continue
        (out_dir / f"{split}.wrd").write_text("".join(f"{u.words}\n" for u in items))
        (out_dir / f"{split}.ltr").write_text("".join(f"{letters(u.words)}\n" for u in items))
        for u in items:
            for symbol in letters(u.words).split():
                counts[symbol] = counts.get(symbol, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    (out_dir / "dict.ltr.txt").write_text("".join(f"{s} {n}\n" for s, n in ordered))


def summarize(out_dir: Path, splits: Dict[str, List[Utterance]], seed: int, minutes: float) -> Dict[str, object]:
    summary = {
        "seed": seed, "minutes_requested": minutes, "sample_rate": SAMPLE_RATE,
        "splits": {
            split: {
                "utterances": len(items),
                "hours": round(sum(u.num_samples for u in items) / SAMPLE_RATE / 3600, 4),
                "sources": sorted({u.source for u in items}),
                "distinct_sentences": len({u.words for u in items if u.words}),
            } for split, items in splits.items()
        },
        "synthetic_distinct_sentences": len({u.words for items in splits.values() for u in items
                                             if u.words and not u.source.startswith("asterisk")}),
        "licences": {"asterisk-core-sounds": "CC-BY-SA-3.0", "espeak-ng": "GPL-3.0",
                     "flite": "BSD-style (CMU)", "sentences": "Python documentation/docstrings, PSF License"},
    }
    (out_dir / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--minutes", type=float, default=80.0,
                        help="total audio to produce (real prompts take at most 25%% of it)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--extra-languages", action="store_true",
                        help="add the es/fr/it/ru Asterisk prompts to the unlabeled pretrain split")
    parser.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    args = parser.parse_args(argv)
    if shutil.which("dpkg-query") is None:
        sys.exit("error: this builder needs a Debian-based system (dpkg) for its audio sources")
    summary = build(args.out_dir, args.minutes, args.seed, args.extra_languages, args.jobs)
    print(json.dumps(summary["splits"], indent=1))
    print(f"wrote {args.out_dir}; synthetic distinct sentences: {summary['synthetic_distinct_sentences']}")


if __name__ == "__main__":
    main()
