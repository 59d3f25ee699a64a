"""Label files parsed once into a compact integer cache.

A label file (``.km`` frame labels, ``.ltr`` letters, ...) has one line per manifest data line.
Parsing text per sample (what ``hubert_dataset`` does) costs a Python tokenise-and-lookup on every
read; here every line is converted to dictionary indices once, stored as one int32 array plus line
offsets, and saved next to the label file (or in a cache directory). The cache is keyed by a hash of the label
file's content and of the dictionary, so changing either rebuilds it, however the file was replaced
(``cp -p``, ``rsync -a`` and ``tar x`` keep size and modification time; hashing reads the file once,
about a second per 500 MB).
Indices are int16 when the dictionary allows (k-means vocabularies do) and the values file is memory
mapped, so DataLoader workers share one copy through the page cache.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

logger = logging.getLogger(__name__)

_CACHE_VERSION = 2


@dataclass
class LabelSequences:
    """All lines of a label file as dictionary indices.

    Attributes:
        values: every line's indices concatenated, shape ``(total_labels,)``, int16 or int32 (memory
            mapped when loaded from the cache).
        offsets: start of each line in ``values`` plus the end, shape ``(lines + 1,)``, int64.
        problem_lines: 0-based lines that could not be parsed (stored empty), shape ``(problems,)``.
        problem_texts: what is wrong with each of those lines.
    """

    values: np.ndarray
    offsets: np.ndarray
    problem_lines: np.ndarray
    problem_texts: List[str]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Labels per line, shape ``(lines,)``."""
        return np.diff(self.offsets)

    def line(self, index: int) -> np.ndarray:
        """Indices of one line, shape ``(labels,)``; a view into the cache."""
        return self.values[self.offsets[index]:self.offsets[index + 1]]


def load_labels(label_path: Union[str, Path], symbols: Sequence[str],
                cache_dir: Optional[Union[str, Path]] = None) -> LabelSequences:
    """Label file as :class:`LabelSequences`, from the cache when it is current.

    Args:
        label_path: text file, one line of whitespace-separated symbols per utterance.
        symbols: dictionary symbols in index order (``Dictionary.symbols``).
        cache_dir: where to keep the cache; ``None`` writes ``<label_path>.k2ssl.npz`` next to it.
            An unwritable location only costs a warning and a re-parse next time.

    Returns:
        The parsed labels. Lines with unknown symbols or no symbols are recorded in
        ``problem_lines``/``problem_texts`` (and stored empty) rather than raised, so that the caller
        can report every problem of a split at once.

    Raises:
        FileNotFoundError: the label file does not exist.
    """
    label_path = Path(label_path).resolve()
    if not label_path.is_file():
        raise FileNotFoundError(f"label file {label_path} does not exist")
    fingerprint = _fingerprint(label_path, symbols)
    cache_path = _cache_path(label_path, cache_dir)
    cached = _read_cache(cache_path, fingerprint)
    if cached is not None:
        return cached
    labels = parse_labels(label_path, symbols)
    _write_cache(cache_path, fingerprint, labels)
    return labels


def parse_labels(label_path: Union[str, Path], symbols: Sequence[str]) -> LabelSequences:
    """Parse a label file without any cache (see :func:`load_labels`)."""
    lookup: Dict[str, int] = {symbol: index for index, symbol in enumerate(symbols)}
    integer_table = _integer_symbol_table(symbols)
    chunks: List[np.ndarray] = []
    lengths: List[int] = []
    problem_lines: List[int] = []
    problem_texts: List[str] = []
    with open(label_path, "rb") as data:
        for line_index, raw in enumerate(data):
            try:
                tokens = raw.decode("utf-8").split()
            except UnicodeDecodeError as err:
                tokens, problem = [], f"not UTF-8 text ({err.reason} at byte {err.start})"
            else:
                indices = _encode(tokens, lookup, integer_table)
                problem = ("empty label line" if not tokens else None if indices is not None else
                           f"unknown symbol(s) {_unknown(tokens, lookup)[:5]} (not in the dictionary)")
            if problem is not None:
                problem_lines.append(line_index)
                problem_texts.append(problem)
                indices = np.zeros(0, dtype=np.int32)
            chunks.append(indices)
            lengths.append(len(indices))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    return LabelSequences(values=values.astype(_index_dtype(len(symbols)), copy=False), offsets=offsets,
                          problem_lines=np.asarray(problem_lines, dtype=np.int64), problem_texts=problem_texts)


def _index_dtype(num_symbols: int) -> type:
    return np.int16 if num_symbols <= np.iinfo(np.int16).max else np.int32


def _is_integer_symbol(symbol: str) -> bool:
    """A k-means id written the one way ``str(int)`` writes it (``7``, not ``07``, ``+7`` or ``²``)."""
    return symbol.isascii() and symbol.isdigit() and (symbol == "0" or symbol[0] != "0")


def _integer_symbol_table(symbols: Sequence[str]) -> Optional[np.ndarray]:
    """Index of each integer symbol (k-means ids) as an array, or None when symbols are not integers."""
    numbered = {int(symbol): index for index, symbol in enumerate(symbols) if _is_integer_symbol(symbol)}
    if not numbered:
        return None
    table = np.full(max(numbered) + 1, -1, dtype=np.int32)
    for value, index in numbered.items():
        table[value] = index
    return table


def _encode(tokens: List[str], lookup: Dict[str, int], integer_table: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """Dictionary indices of one line, or None if a symbol is unknown; integer lines take a numpy path,
    which only accepts tokens written exactly as the dictionary's integer symbols are."""
    if integer_table is not None:
        try:
            values = np.asarray(tokens, dtype=np.int64)
        except (ValueError, OverflowError):
            values = None
        if values is not None and " ".join(tokens) == " ".join(map(str, values.tolist())):
            if values.size and (values.min() < 0 or values.max() >= len(integer_table)):
                return None
            indices = integer_table[values]
            return None if np.any(indices < 0) else indices
    try:
        return np.fromiter((lookup[token] for token in tokens), dtype=np.int32, count=len(tokens))
    except KeyError:
        return None


def _unknown(tokens: List[str], lookup: Dict[str, int]) -> List[str]:
    return sorted({token for token in tokens if token not in lookup})


def _fingerprint(label_path: Path, symbols: Sequence[str]) -> str:
    content = hashlib.blake2b(digest_size=20)
    with open(label_path, "rb") as data:
        for block in iter(lambda: data.read(1 << 22), b""):
            content.update(block)
    dictionary = hashlib.sha1("\n".join(symbols).encode("utf-8")).hexdigest()
    return json.dumps({"version": _CACHE_VERSION, "path": str(label_path), "content": content.hexdigest(),
                       "dictionary": dictionary}, sort_keys=True)


def _cache_path(label_path: Path, cache_dir: Optional[Union[str, Path]]) -> Path:
    """Metadata file of the cache; the values sit beside it with the suffix ``.values.npy``."""
    if cache_dir is None:
        return label_path.with_name(label_path.name + ".k2ssl.npz")
    key = hashlib.sha1(str(label_path).encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / f"{label_path.name}.{key}.k2ssl.npz"


def _values_path(cache_path: Path) -> Path:
    return cache_path.with_suffix(".values.npy")


def _read_cache(cache_path: Path, fingerprint: str) -> Optional[LabelSequences]:
    if not cache_path.is_file():
        return None
    try:
        with np.load(cache_path, allow_pickle=False) as stored:
            if str(stored["fingerprint"]) != fingerprint:
                logger.info("label cache %s is stale; rebuilding", cache_path)
                return None
            offsets = stored["offsets"]
            problem_lines = stored["problem_lines"]
            problem_texts = [str(t) for t in stored["problem_texts"]]
        values = np.load(_values_path(cache_path), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, KeyError) as error:
        logger.warning("label cache %s unreadable (%s); rebuilding", cache_path, error)
        return None
    if values.shape != (offsets[-1],):
        logger.warning("label cache %s has %s values for %d labels; rebuilding", cache_path, values.shape, offsets[-1])
        return None
    return LabelSequences(values=values, offsets=offsets, problem_lines=problem_lines, problem_texts=problem_texts)


def _write_cache(cache_path: Path, fingerprint: str, labels: LabelSequences) -> None:
    """Write each file atomically (temporary file + rename) so that concurrent ranks never read half
    a file; the metadata, which holds the fingerprint, goes last."""
    suffix = f".{os.getpid()}.tmp"
    values_tmp = _values_path(cache_path).with_name(_values_path(cache_path).name + suffix + ".npy")
    meta_tmp = cache_path.with_name(cache_path.name + suffix + ".npz")
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(values_tmp, labels.values)
        os.replace(values_tmp, _values_path(cache_path))
        np.savez(meta_tmp, offsets=labels.offsets, problem_lines=labels.problem_lines,
                 problem_texts=np.asarray(labels.problem_texts, dtype=str), fingerprint=np.asarray(fingerprint))
        os.replace(meta_tmp, cache_path)
    except OSError as error:
        logger.warning("cannot write label cache %s (%s); labels will be parsed again next run", cache_path, error)
        for leftover in (values_tmp, meta_tmp):
            with contextlib.suppress(OSError):  # e.g. the cache "directory" is a file: nothing was created
                leftover.unlink(missing_ok=True)
