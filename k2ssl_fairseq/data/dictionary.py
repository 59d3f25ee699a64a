"""fairseq dictionaries (``dict.{label}.txt``) read strictly, with errors that name the file and line.

The format is fairseq's: one ``<symbol> <count>`` line per symbol, optionally ending in
``#fairseq:overwrite``, after the four special symbols a ``Dictionary`` starts with. fairseq's own
reader raises without the file or line for a malformed line or a duplicate symbol; this one builds
the same ``Dictionary`` and says where the problem is.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Tuple, Union

from fairseq.data.dictionary import Dictionary

from .errors import InvalidInputError

OVERWRITE_FLAG = "#fairseq:overwrite"
_COUNT = re.compile(r"-?[0-9]+")


class DictionaryError(InvalidInputError):
    """A dictionary file that is missing or malformed; the message names the file (and line)."""


def load_dictionary(path: Union[str, Path]) -> Dictionary:
    """Read ``path`` into a fairseq ``Dictionary`` (same symbols, counts and indices as ``Dictionary.load``).

    Raises:
        DictionaryError: the file is missing or not UTF-8, or a line is not ``<symbol> <count>``
            (optionally followed by ``#fairseq:overwrite``), or repeats a symbol without that flag.
    """
    path = Path(path)
    if not path.is_file():
        raise DictionaryError(f"{path}: dictionary file does not exist")
    dictionary = Dictionary()
    first_line: Dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DictionaryError(f"{path}: not UTF-8 text ({err})") from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        symbol, count, overwrite = _parse_line(line, f"{path}:{line_no}")
        if symbol in dictionary and not overwrite:
            where = f"line {first_line[symbol]}" if symbol in first_line else "a built-in special symbol"
            raise DictionaryError(f"{path}:{line_no}: duplicate symbol {symbol!r} (already {where}); "
                                  f"end the line with {OVERWRITE_FLAG} to replace it")
        first_line.setdefault(symbol, line_no)
        dictionary.add_symbol(symbol, n=count, overwrite=overwrite)
    return dictionary


def _parse_line(line: str, where: str) -> Tuple[str, int, bool]:
    """``(symbol, count, overwrite)`` of one line, as fairseq splits it (on the last spaces)."""
    fields = line.rstrip().rsplit(" ", 1)
    overwrite = len(fields) == 2 and fields[1] == OVERWRITE_FLAG
    if overwrite:
        fields = fields[0].rsplit(" ", 1)
    if len(fields) != 2:
        raise DictionaryError(f"{where}: expected '<symbol> <count>' [{OVERWRITE_FLAG}], got {line!r}")
    if not fields[0]:  # fairseq would add "" as a symbol, which no whitespace-split label can ever be
        raise DictionaryError(f"{where}: empty symbol in {line!r}")
    symbol, count = fields
    if not _COUNT.fullmatch(count):
        raise DictionaryError(f"{where}: count {count!r} of symbol {symbol!r} is not an integer")
    return symbol, int(count), overwrite
