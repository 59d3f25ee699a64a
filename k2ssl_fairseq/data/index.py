"""A split's index: utterance lengths, audio paths and label caches, validated once at start-up.

Everything a batch plan or a DataLoader worker needs is in arrays here, so that no sample is
parsed twice and bad input is found before training starts, with the file and line of each problem.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import soundfile

from .errors import InvalidInputError
from .frames import label_frames
from .labels import LabelSequences, load_labels
from .manifest import Manifest, read_manifest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelSource:
    """One label set of a split.

    Attributes:
        path: label file, one line per manifest data line.
        symbols: dictionary symbols in index order (``Dictionary.symbols``).
        rate: labels per second for frame labels (k-means), or a value <= 0 for transcripts.
    """

    path: Path
    symbols: Sequence[str]
    rate: float


@dataclass(frozen=True)
class IndexSettings:
    """What start-up checks and filters.

    Attributes:
        sample_rate: required audio sample rate.
        min_samples: drop utterances shorter than this (HuBERT ``min_sample_size``), no problem raised.
        max_samples: drop utterances longer than this (HuBERT ``max_keep_size``), no problem raised.
        check_audio: open every audio header (existence, decodability, sample rate, channels,
            length vs manifest); turn off for huge manifests.
        skip_invalid: skip problem utterances and log their count instead of failing.
        label_tolerance: allowed disagreement between frame-label count and audio, in seconds.
        max_reported: problems listed in the error message.
        cache_dir: label cache directory (None: next to each label file).
    """

    sample_rate: int = 16000
    min_samples: Optional[int] = None
    max_samples: Optional[int] = None
    check_audio: bool = True
    skip_invalid: bool = False
    label_tolerance: float = 0.1
    max_reported: int = 20
    cache_dir: Optional[str] = None


@dataclass
class SplitIndex:
    """The utterances of a split that survived validation and filtering.

    Attributes:
        manifest: the whole manifest as read.
        kept: manifest entries used, shape ``(utterance,)``; utterance ``i`` is entry ``kept[i]``.
        num_samples: samples of each used utterance, shape ``(utterance,)``.
        labels: one cache per label set, indexed by manifest data line.
    """

    manifest: Manifest
    kept: np.ndarray
    num_samples: np.ndarray
    labels: List[LabelSequences]

    def __len__(self) -> int:
        return len(self.kept)

    def audio_path(self, utterance: int) -> Path:
        return self.manifest.audio_path(int(self.kept[utterance]))

    def label_line(self, utterance: int) -> int:
        """Line of the label files that belongs to an utterance."""
        return int(self.manifest.lines[self.kept[utterance]])

    def where(self, utterance: int) -> str:
        """``manifest:line`` of an utterance, for error messages."""
        return f"{self.manifest.path}:{self.label_line(utterance) + 2}"


def build_index(manifest_path: Union[str, Path], label_sources: Sequence[LabelSource],
                settings: IndexSettings) -> SplitIndex:
    """Read, validate and filter a split.

    Args:
        manifest_path: ``{split}.tsv``.
        label_sources: label sets aligned with the manifest's data lines (may be empty).
        settings: checks and filters.

    Returns:
        The validated index.

    Raises:
        InvalidInputError: problems were found and ``skip_invalid`` is off, or a label file's line
            count differs from the manifest's (never skippable: lines could not be matched).
    """
    problems: List[str] = []
    manifest = read_manifest(manifest_path, problems)
    data_lines = len(manifest) + len(problems)
    bad = np.zeros(len(manifest), dtype=bool)
    labels = [_checked_labels(source, manifest, data_lines, settings, bad, problems) for source in label_sources]
    if settings.check_audio:
        _check_audio(manifest, settings.sample_rate, bad, problems)
    _report(problems, settings, manifest_path)

    lengths = manifest.num_samples
    in_range = np.ones(len(manifest), dtype=bool)
    if settings.min_samples is not None:
        in_range &= lengths >= settings.min_samples
    if settings.max_samples is not None:
        in_range &= lengths <= settings.max_samples
    kept = np.flatnonzero(~bad & in_range)
    logger.info("%s: %d utterances used, %d invalid skipped, %d outside [%s, %s] samples dropped",
                manifest_path, len(kept), int(bad.sum()), int((~bad & ~in_range).sum()),
                settings.min_samples, settings.max_samples)
    if len(kept) == 0:
        raise InvalidInputError(f"{manifest_path}: no utterance left after validation and length filters")
    return SplitIndex(manifest=manifest, kept=kept, num_samples=lengths[kept], labels=labels)


def _checked_labels(source: LabelSource, manifest: Manifest, data_lines: int, settings: IndexSettings,
                    bad: np.ndarray, problems: List[str]) -> LabelSequences:
    """Load one label set, flagging unparsable lines and frame counts that disagree with the audio."""
    labels = load_labels(source.path, source.symbols, settings.cache_dir)
    if len(labels) != data_lines:
        raise InvalidInputError(
            f"{source.path}: {len(labels)} label lines but {manifest.path} has {data_lines} data lines; "
            "label files must have exactly one line per manifest line")
    entry_of_line = np.full(data_lines, -1, dtype=np.int64)
    entry_of_line[manifest.lines] = np.arange(len(manifest))
    for line, text in zip(labels.problem_lines.tolist(), labels.problem_texts):
        if entry_of_line[line] >= 0:
            bad[entry_of_line[line]] = True
            problems.append(f"{source.path}:{line + 1}: {text}")
    if source.rate > 0:
        expected = label_frames(manifest.num_samples, source.rate, settings.sample_rate)
        found = labels.lengths[manifest.lines]
        off = np.flatnonzero(np.abs(found - expected) > settings.label_tolerance * source.rate)
        for entry in off.tolist():
            if not bad[entry]:
                problems.append(
                    f"{source.path}:{manifest.lines[entry] + 1}: {found[entry]} labels but the audio "
                    f"({manifest.num_samples[entry]} samples) needs {expected[entry]} at {source.rate} Hz")
        bad[off] = True
    return labels


def _check_audio(manifest: Manifest, sample_rate: int, bad: np.ndarray, problems: List[str]) -> None:
    """Open every audio header: existence, decodability, sample rate, channels, sample count."""
    for entry in range(len(manifest)):
        path = manifest.audio_path(entry)
        where = f"{manifest.path}:{manifest.lines[entry] + 2}"
        problem = _audio_problem(path, sample_rate, int(manifest.num_samples[entry]))
        if problem is not None:
            bad[entry] = True
            problems.append(f"{where}: {path}: {problem}")


def _audio_problem(path: Path, sample_rate: int, num_samples: int) -> Optional[str]:
    if not path.is_file():
        return "audio file does not exist"
    try:
        info = soundfile.info(str(path))
    except Exception as error:  # libsndfile raises several types for corrupt files
        return f"unreadable audio ({error})"
    if info.samplerate != sample_rate:
        return f"sample rate {info.samplerate} Hz, expected {sample_rate} Hz"
    if info.channels != 1:
        return f"{info.channels} channels, expected mono"
    if info.frames != num_samples:
        return f"manifest says {num_samples} samples, file has {info.frames}"
    return None


def _report(problems: List[str], settings: IndexSettings, manifest_path: Union[str, Path]) -> None:
    if not problems:
        return
    listing = "\n  ".join(problems[:settings.max_reported])
    more = len(problems) - settings.max_reported
    summary = f"{len(problems)} invalid input(s) for {manifest_path}:\n  {listing}" + (
        f"\n  ... and {more} more" if more > 0 else "")
    if not settings.skip_invalid:
        raise InvalidInputError(summary + "\nFix them, or set task.skip_invalid=true to skip these utterances.")
    logger.warning("skipping %s", summary)
