"""Build the demo speech corpus in fairseq layout (16 kHz mono, manifests, letter transcripts).

Sources, all from Debian packages and the Python standard library (nothing is downloaded at run time):

* real speech: the Asterisk core prompts in English (package ``asterisk-core-sounds-en-wav``, one
  speaker, Allison Smith, 8 kHz, CC-BY-SA-3.0) with their transcripts from ``core-sounds-en.txt``
  (package ``asterisk-core-sounds-en``); non-speech entries such as ``[ascending tones]`` are dropped
  and digits are spelled out. With ``--pool-hours`` every other Asterisk prompt package (es, fr, it, ru
  core sounds; the es-co, fr-armelle and it-menardi prompts, GSM ones decoded with ``sox``) joins the
  unlabelled ``pretrain`` split as extra real speakers.
* synthetic speech with exact transcripts: ``espeak-ng`` (GPL-3; many voices and variants, random rate
  and pitch) and ``flite`` (BSD-style; its built-in voices, random duration stretch) reading distinct
  clauses of English prose from the Python documentation and the standard library's docstrings
  (``pydoc_data.topics`` and module, class and method docstrings; Python Software Foundation License),
  upper-cased, letters and apostrophes only. Labelled and evaluation utterances read 3-6 word
  clauses; the unlabelled pool reads the remaining clauses of up to 30 words.

Splits: ``train`` (labelled: the real English prompts and the training voices), ``valid`` and ``test``
(each read by voices that appear in no other split, on clauses that appear in no other split), and
``pretrain`` (unlabelled use: all training audio plus the pool; valid and test audio are kept out of
it so that no evaluation audio is seen in pre-training). ``train_10min`` and ``train_1h`` are nested
labelled subsets of ``train`` (10 min inside 1 h) written when ``train`` holds that much.
festival voices and pocketsphinx data are never used: they are reserved for held-out evaluation.
Synthesised files are written atomically and reused on a rerun, so an interrupted build resumes.
Everything is a pure function of ``--seed`` and the installed packages.
"""
from __future__ import annotations

import argparse
import gzip
import importlib
import io
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
T = TypeVar("T")
ASTERISK_DIR = Path("/usr/share/asterisk/sounds")
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ENGLISH_PROMPTS = "asterisk-core-sounds-en-wav"
REQUIRED_PACKAGES = ["asterisk-core-sounds-en", ENGLISH_PROMPTS, "espeak-ng", "flite"]
# Every other real-speech package in Debian's archive (measured minutes: es 31.0, fr 26.0, it 23.8,
# ru 24.8, it-menardi 24.8, es-co 10.2, fr-armelle 15.1; en holds 25.5).
POOL_SPEECH_PACKAGES = ["asterisk-core-sounds-es-wav", "asterisk-core-sounds-fr-wav", "asterisk-core-sounds-it-wav",
                        "asterisk-core-sounds-ru-wav", "asterisk-prompt-es-co", "asterisk-prompt-fr-armelle",
                        "asterisk-prompt-it-menardi-wav"]
POOL_PACKAGES = POOL_SPEECH_PACKAGES + ["sox"]  # sox decodes the GSM-only prompt packages

# Voice roles: valid and test voices never read in train or pretrain; their espeak base voices
# (en-gb-x-rp, en-gb-scotland) are kept out of the pool entirely, not only the exact variant.
TRAIN_VOICES = [("espeak", v) for v in ("en-us+m1", "en-us+f2", "en-us+m3", "en-gb+m2", "en-gb+f1",
                                         "en-gb+m7", "en-us+f4")] + [("flite", v) for v in ("kal16", "awb")]
VALID_VOICES = [("espeak", "en-gb-x-rp+m4"), ("flite", "rms")]
TEST_VOICES = [("espeak", "en-gb-scotland+f3"), ("flite", "slt")]
POOL_VOICES = [("espeak", f"{base}+{variant}")
               for base in ("en-us", "en-gb", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
               for variant in ("m1", "m2", "m3", "m5", "m6", "m7", "f1", "f2", "f4", "f5", "klatt", "klatt2",
                               "croak")] + [("flite", v) for v in ("kal16", "awb", "kal")]
LABELLED_SUBSETS = {"train_10min": 600.0, "train_1h": 3600.0}
SHORT_CLAUSE_WORDS = (3, 6)
MIN_POOL_SECONDS = 0.5  # shorter prompts (a few are empty) teach nothing and cannot be cropped
LONG_CLAUSE_WORDS = 30

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " \
        "sixteen seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
# Standard-library modules not imported for their docstrings: side effects on import, or no prose.
_SKIP_MODULES = {"antigravity", "this", "idlelib", "turtledemo", "tkinter", "turtle", "pydoc_data", "lib2to3",
                 "ensurepip", "venv", "test", "pip", "setuptools", "pkg_resources"}


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


def _stdlib_module_names() -> List[str]:
    stdlib = Path(os.__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(stdlib)])
                  if not m.name.startswith("_") and m.name not in _SKIP_MODULES)


def _docstrings(module: object) -> List[str]:
    """The module's docstring and those of its public functions, classes and their public methods."""
    texts = [getattr(module, "__doc__", None)]
    for name, value in sorted(vars(module).items()):
        if name.startswith("_"):
            continue
        texts.append(getattr(value, "__doc__", None))
        if isinstance(value, type) and value.__module__ == module.__name__:
            texts.extend(getattr(member, "__doc__", None) for member_name, member in sorted(vars(value).items())
                         if not member_name.startswith("_"))
    return [t for t in texts if isinstance(t, str)]


def collect_sentences() -> List[str]:
    """Distinct 3-30 word clauses of English prose from the Python docs and stdlib docstrings, sorted."""
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    for name in _stdlib_module_names():
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                texts.extend(_docstrings(importlib.import_module(name)))
        except Exception:  # a module this interpreter cannot import simply contributes no text
            continue
    found = set()
    prose = re.sub(r"\s+", " ", " ".join(dict.fromkeys(texts)))
    for sentence in re.split(r"(?<=[.!?])\s+", prose):
        for clause in re.split(r"[,;:()]", sentence):
            clause = clause.strip().rstrip(".!?").strip()
            if clause and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9' \-]*", clause):
                words = (normalize_text(clause) or "").split()
                if SHORT_CLAUSE_WORDS[0] <= len(words) <= LONG_CLAUSE_WORDS and all(len(w) <= 14 for w in words):
                    found.add(" ".join(words))
    return sorted(found)


def _is_short(clause: str) -> bool:
    return len(clause.split()) <= SHORT_CLAUSE_WORDS[1]


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


def package_audio(package: str) -> List[Path]:
    """The package's own audio files (wav and GSM), from its dpkg file list, so aliases count once."""
    listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout
    return sorted(Path(line) for line in listing.splitlines()
                  if line.endswith((".wav", ".gsm")) and Path(line).is_file())


@dataclass
class RealPrompt:
    """A packaged prompt to convert; ``seconds`` is read once, from its header, to size the pool."""

    path: Path
    words: Optional[str]
    source: str
    rel: str
    seconds: float


@dataclass
class SynthesisJob:
    """One clause for one voice; ``seed`` fixes its random rate and pitch."""

    split: str
    index: int
    engine: str
    voice: str
    text: str
    seed: int


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


def read_real(path: Path) -> Tuple[np.ndarray, int]:
    """A packaged prompt; headerless GSM 6.10 (8 kHz) goes through sox."""
    if path.suffix != ".gsm":
        return sf.read(path, dtype="float32")
    proc = subprocess.run(["sox", "-t", "gsm", "-r", "8000", "-c", "1", str(path), "-t", "wav", "-"],
                          capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sox could not decode {path}: {proc.stderr.decode(errors='replace').strip()}")
    return sf.read(io.BytesIO(proc.stdout), dtype="float32")


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


def write_once(out_dir: Path, rel: str, make: Callable[[], np.ndarray]) -> int:
    """Write ``rel`` atomically unless a previous run already did; return its length in samples."""
    path = out_dir / rel
    if path.is_file():
        return sf.info(path).frames
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = make()
    partial = path.with_name(path.stem + ".partial.wav")
    sf.write(partial, wav, SAMPLE_RATE, subtype="PCM_16")
    os.replace(partial, path)
    return len(wav)


def asterisk_prompts(max_seconds: float) -> List[RealPrompt]:
    """English prompts with transcripts, in transcript order, up to ``max_seconds`` of audio."""
    chosen: List[RealPrompt] = []
    total = 0.0
    with gzip.open(ASTERISK_TEXT, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if ":" not in line or line.startswith(";"):
                continue
            name, text = line.split(":", 1)
            words = normalize_text(text)
            wav = ASTERISK_DIR / "en_US_f_Allison" / f"{name.strip()}.wav"
            if words is None or not wav.is_file():
                continue
            seconds = _real_seconds(wav)
            if total + seconds > max_seconds:
                break
            rel = f"wav/train/asterisk_en_{len(chosen):04d}_{wav.stem}.wav"
            chosen.append(RealPrompt(wav, words, "asterisk:en", rel, seconds))
            total += seconds
    return chosen


class Progress:
    """Prints done/total, audio hours and an ETA every few percent, so a long build shows where it is."""

    def __init__(self, what: str, total: int):
        self.what, self.total, self.start, self.seconds = what, total, time.time(), 0.0
        self.every = max(1, min(500, total // 20))

    def step(self, done: int, samples: int) -> None:
        self.seconds += samples / SAMPLE_RATE
        if done % self.every == 0 or done == self.total:
            elapsed = time.time() - self.start
            eta = elapsed / done * (self.total - done)
            print(f"  {self.what} {done}/{self.total} utterances ({self.seconds / 3600:.2f} h of audio), "
                  f"{elapsed:.0f} s elapsed, ETA {eta:.0f} s", flush=True)


def estimated_seconds(clause: str) -> float:
    """Spoken length of a clause at the mean synthesis rate (measured: ~0.3 s per word plus ~0.3 s)."""
    return 0.3 + 0.3 * len(clause.split())


def plan_pools(sentences: List[str], rng: np.random.Generator, synth_seconds: float,
               pretrain_seconds: float) -> Dict[str, List[str]]:
    """Disjoint clause pools per split: short clauses for labelled and evaluation use, the rest for the pool.

    ``pretrain_seconds`` is the synthetic audio the ``pretrain`` split should hold; the planned ``train``
    and ``pretrain_only`` clauses count towards it, and the pool reads the rest."""
    short = [c for c in sentences if _is_short(c)]
    long = [c for c in sentences if not _is_short(c)]
    rng.shuffle(short)
    rng.shuffle(long)
    n_synth = max(int(synth_seconds / 1.75), 8)  # ~1.75 s per short clause, measured
    n_eval = max(n_synth // 10, 2)
    n_pretrain_only = max(n_synth // 5, 2)
    n_train = n_synth - 2 * n_eval - n_pretrain_only
    if n_synth > len(short):
        sys.exit(f"error: the labelled corpus needs {n_synth} short clauses but only {len(short)} are available; "
                 "ask for fewer --minutes")
    pools = {"test": short[:n_eval], "valid": short[n_eval:2 * n_eval],
             "train": short[2 * n_eval:2 * n_eval + n_train],
             "pretrain_only": short[2 * n_eval + n_train:n_synth], "pool": []}
    remaining = long + short[n_synth:]
    total = sum(estimated_seconds(c) for c in pools["train"] + pools["pretrain_only"])
    for clause in remaining:
        if total >= pretrain_seconds:
            break
        pools["pool"].append(clause)
        total += estimated_seconds(clause)
    if total < pretrain_seconds:
        sys.exit(f"error: the pretrain split needs ~{pretrain_seconds / 3600:.1f} h of synthetic speech but the "
                 f"{len(remaining)} unused clauses give ~{total / 3600:.1f} h; ask for fewer --pool-hours")
    return pools


def produce_all(items: Sequence[T], make: Callable[[T], Utterance], what: str, jobs: int) -> List[Utterance]:
    """``make`` on every item in a thread pool (the work is in subprocesses and numpy), in order, with progress."""
    progress = Progress(what, len(items))
    out = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for done, utt in enumerate(pool.map(make, items), 1):
            out.append(utt)
            progress.step(done, utt.num_samples)
    return out


def synthesize_all(out_dir: Path, jobs_list: List[SynthesisJob], jobs: int) -> Dict[str, List[Utterance]]:
    """Every planned clause spoken by its voice, grouped by split."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)

        def make(job: SynthesisJob) -> Utterance:
            rel = f"wav/{job.split}/{job.engine}_{job.voice.replace('+', '_')}_{job.index:05d}.wav"
            samples = write_once(out_dir, rel, lambda: to_16k(
                *synthesize(job.engine, job.voice, job.text, np.random.default_rng(job.seed), tmp)))
            return Utterance(Path(rel), samples, job.text, f"{job.engine}:{job.voice}")

        utts = produce_all(jobs_list, make, "synthesized", jobs)
    by_split: Dict[str, List[Utterance]] = {}
    for job, utt in zip(jobs_list, utts):
        by_split.setdefault(job.split, []).append(utt)
    return by_split


def convert_real(out_dir: Path, prompts: List[RealPrompt], jobs: int) -> List[Utterance]:
    """Packaged prompts to 16 kHz files at their ``rel`` paths."""
    def make(prompt: RealPrompt) -> Utterance:
        samples = write_once(out_dir, prompt.rel, lambda: to_16k(*read_real(prompt.path)))
        return Utterance(Path(prompt.rel), samples, prompt.words, prompt.source)

    return produce_all(prompts, make, "converted", jobs)


def pool_speech(english_used: set) -> List[RealPrompt]:
    """Every packaged prompt not already in ``train`` and at least 0.5 s long, as unlabelled pool entries."""
    entries, too_short = [], 0
    for package in [ENGLISH_PROMPTS] + POOL_SPEECH_PACKAGES:
        source = "asterisk:" + package.replace("asterisk-core-sounds-", "").replace("asterisk-prompt-", "prompt-") \
            .removesuffix("-wav")
        for i, path in enumerate(package_audio(package)):
            if path.resolve() in english_used:
                continue
            seconds = _real_seconds(path)
            if seconds < MIN_POOL_SECONDS:
                too_short += 1
                continue
            entries.append(RealPrompt(path, None, source, f"wav/pretrain/{source.replace(':', '_')}_{i:05d}.wav",
                                      seconds))
    print(f"  real pool: {len(entries)} packaged prompts ({too_short} shorter than {MIN_POOL_SECONDS} s left out)",
          flush=True)
    return entries


def build(out_dir: Path, minutes: float, seed: int, pool_hours: float, jobs: int) -> Dict[str, object]:
    import torch

    torch.set_num_threads(1)  # the thread pool is the parallelism; resampling threads would oversubscribe
    ensure_packages(REQUIRED_PACKAGES + (POOL_PACKAGES if pool_hours > 0 else []))
    rng = np.random.default_rng(seed)
    out_dir = out_dir.resolve()
    budget = minutes * 60.0
    real = asterisk_prompts(max_seconds=0.25 * budget)
    real_pool = pool_speech({p.path.resolve() for p in real}) if pool_hours > 0 else []
    real_seconds = sum(p.seconds for p in real + real_pool)
    pools = plan_pools(collect_sentences(), rng, budget - sum(p.seconds for p in real),
                       max(0.0, pool_hours * 3600 - real_seconds) if pool_hours > 0 else 0.0)
    voices = {"test": TEST_VOICES, "valid": VALID_VOICES, "train": TRAIN_VOICES, "pretrain_only": TRAIN_VOICES,
              "pool": POOL_VOICES}
    jobs_list = []
    for split, pool in pools.items():
        for i, text in enumerate(pool):
            engine, voice = voices[split][int(rng.integers(len(voices[split])))]
            jobs_list.append(SynthesisJob(split, i, engine, voice, text, int(rng.integers(1 << 31))))
    utts = synthesize_all(out_dir, jobs_list, jobs)
    train = utts.get("train", []) + convert_real(out_dir, real, jobs)
    extra = convert_real(out_dir, real_pool, jobs) if real_pool else []
    splits = {"train": train, "valid": utts.get("valid", []), "test": utts.get("test", []),
              "pretrain": train + utts.get("pretrain_only", []) + utts.get("pool", []) + extra}
    splits.update(labelled_subsets(train, seed))
    write_split_files(out_dir, splits)
    return summarize(out_dir, splits, seed, minutes, pool_hours)


def _real_seconds(path: Path) -> float:
    """Duration without decoding: GSM 6.10 stores 20 ms in each 33-byte frame."""
    return path.stat().st_size / 33 * 0.02 if path.suffix == ".gsm" else sf.info(path).duration


def labelled_subsets(train: List[Utterance], seed: int) -> Dict[str, List[Utterance]]:
    """Nested labelled subsets of ``train`` (10 min inside 1 h), each only when ``train`` is big enough."""
    order = np.random.default_rng(seed + 1).permutation(len(train))
    subsets: Dict[str, List[Utterance]] = {}
    for name, seconds in LABELLED_SUBSETS.items():
        chosen, total = [], 0.0
        for index in order:
            if total >= seconds:
                break
            chosen.append(train[index])
            total += train[index].num_samples / SAMPLE_RATE
        if total >= seconds:
            subsets[name] = chosen
    return subsets


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
        if split in ("train", "valid", "test"):
            for u in items:
                for symbol in letters(u.words).split():
                    counts[symbol] = counts.get(symbol, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    (out_dir / "dict.ltr.txt").write_text("".join(f"{s} {n}\n" for s, n in ordered))


def summarize(out_dir: Path, splits: Dict[str, List[Utterance]], seed: int, minutes: float,
              pool_hours: float) -> Dict[str, object]:
    summary = {
        "seed": seed, "minutes_requested": minutes, "pool_hours_requested": pool_hours, "sample_rate": SAMPLE_RATE,
        "splits": {
            split: {
                "utterances": len(items),
                "hours": round(sum(u.num_samples for u in items) / SAMPLE_RATE / 3600, 4),
                "hours_by_source": _hours_by_kind(items),
                "sources": sorted({u.source for u in items}),
                "distinct_sentences": len({u.words for u in items if u.words}),
            } for split, items in splits.items()
        },
        "synthetic_distinct_sentences": len({u.words for items in splits.values() for u in items
                                             if u.words and not u.source.startswith("asterisk")}),
        "excluded": "festival voices and pocketsphinx data (reserved for held-out evaluation) are in no split",
        "licences": {"asterisk-core-sounds / asterisk-prompt": "CC-BY-SA-3.0 (see each package's copyright)",
                     "espeak-ng": "GPL-3.0", "flite": "BSD-style (CMU)",
                     "sentences": "Python documentation/docstrings, PSF License"},
    }
    (out_dir / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _hours_by_kind(items: List[Utterance]) -> Dict[str, float]:
    hours: Dict[str, float] = {}
    for u in items:
        kind = u.source.split(":")[0] if not u.source.startswith("asterisk") else u.source
        hours[kind] = hours.get(kind, 0.0) + u.num_samples / SAMPLE_RATE / 3600
    return {k: round(v, 4) for k, v in sorted(hours.items())}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--minutes", type=float, default=80.0,
                        help="labelled English audio (train + valid + test + extra training-voice audio); "
                             "real prompts take at most 25%% of it")
    parser.add_argument("--pool-hours", type=float, default=0.0,
                        help="grow the unlabelled pretrain split to about this many hours with every packaged "
                             "Asterisk prompt (all languages) and synthetic speech from many voices (0: none)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="parallel synthesis/conversion workers")
    args = parser.parse_args(argv)
    if shutil.which("dpkg-query") is None:
        sys.exit("error: this builder needs a Debian-based system (dpkg) for its audio sources")
    summary = build(args.out_dir, args.minutes, args.seed, args.pool_hours, args.jobs)
    print(json.dumps({k: {"utterances": v["utterances"], "hours": v["hours"]} for k, v in summary["splits"].items()},
                     indent=1))
    print(f"wrote {args.out_dir}; synthetic distinct sentences: {summary['synthetic_distinct_sentences']}")


if __name__ == "__main__":
    main()
