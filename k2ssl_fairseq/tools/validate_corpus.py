"""Check a fairseq-layout speech corpus line by line; exit 1 with a report of what is wrong.

Checks every ``{split}.tsv`` line (root, path, sample count against the audio file, 16 kHz mono),
that ``{split}.ltr`` and ``{split}.wrd`` have one line per utterance, that each ``.ltr`` line is the
letter spelling of its ``.wrd`` line (``|`` after every word), and that every letter is in
``dict.ltr.txt`` (``symbol count`` lines). Splits without transcripts (``pretrain``) get the audio
checks only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import soundfile as sf

from ..data.manifest import Manifest, ManifestError, read_manifest


def audio_problems(manifest: Manifest, sample_rate: int) -> List[str]:
    problems: List[str] = []
    for i, name in enumerate(manifest.names):
        where = f"{manifest.path}:{int(manifest.lines[i]) + 2}"
        try:
            info = sf.info(str(manifest.audio_path(i)))
        except Exception as err:  # libsndfile raises several types for missing or corrupt files
            problems.append(f"{where}: cannot read {manifest.audio_path(i)} ({err})")
            continue
        if info.samplerate != sample_rate or info.channels != 1:
            problems.append(f"{where}: {name} is {info.samplerate} Hz, {info.channels} channel(s); "
                            f"expected {sample_rate} Hz mono")
        if info.frames != manifest.num_samples[i]:
            problems.append(f"{where}: manifest says {manifest.num_samples[i]} samples, {name} has {info.frames}")
    return problems


def read_dictionary(path: Path, problems: List[str]) -> set:
    symbols: set = set()
    if not path.is_file():
        problems.append(f"{path}: missing dictionary")
        return symbols
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            problems.append(f"{path}:{line_no}: expected 'symbol count', got {line!r}")
        elif fields[0] in symbols:
            problems.append(f"{path}:{line_no}: duplicate symbol {fields[0]!r}")
        else:
            symbols.add(fields[0])
    return symbols


def transcript_problems(corpus: Path, split: str, count: int, symbols: set) -> List[str]:
    problems: List[str] = []
    files = {ext: corpus / f"{split}.{ext}" for ext in ("ltr", "wrd")}
    lines = {}
    for ext, path in files.items():
        if not path.is_file():
            return [f"{path}: missing transcript file for split {split!r}"]
        lines[ext] = path.read_text(encoding="utf-8").splitlines()
        if len(lines[ext]) != count:
            problems.append(f"{path}: {len(lines[ext])} lines but {split}.tsv has {count} utterances")
    for line_no, (ltr, wrd) in enumerate(zip(lines["ltr"], lines["wrd"]), 1):
        expected = " ".join(" ".join(word) + " |" for word in wrd.split())
        if not wrd.strip():
            problems.append(f"{files['wrd']}:{line_no}: empty transcript")
        elif ltr != expected:
            problems.append(f"{files['ltr']}:{line_no}: letters {ltr!r} do not spell {files['wrd'].name} line {wrd!r}")
        unknown = sorted({s for s in ltr.split() if s not in symbols})
        if unknown:
            problems.append(f"{files['ltr']}:{line_no}: symbols {unknown} not in dict.ltr.txt")
    return problems


def validate(corpus: Path, splits: Sequence[str], sample_rate: int = 16000) -> List[str]:
    problems: List[str] = []
    symbols = read_dictionary(corpus / "dict.ltr.txt", problems)
    for split in splits:
        tsv = corpus / f"{split}.tsv"
        manifest_problems: List[str] = []
        try:
            manifest = read_manifest(tsv, problems=manifest_problems)
        except (FileNotFoundError, ManifestError) as err:
            problems.append(str(err))
            continue
        problems += manifest_problems
        problems += audio_problems(manifest, sample_rate)
        if (corpus / f"{split}.ltr").exists() or split != "pretrain":
            problems += transcript_problems(corpus, split, len(manifest) + len(manifest_problems), symbols)
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--splits", nargs="+", default=["pretrain", "train", "valid", "test"])
    parser.add_argument("--max-report", type=int, default=50, help="problems printed at most")
    args = parser.parse_args(argv)
    problems = validate(args.corpus.resolve(), args.splits)
    if problems:
        print(f"{len(problems)} problem(s) in {args.corpus}:", file=sys.stderr)
        for problem in problems[: args.max_report]:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{args.corpus}: OK ({', '.join(args.splits)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
