"""The one base class of bad-input errors in the data path: every message names the file (and line)."""


class InvalidInputError(ValueError):
    """Bad input (manifest, labels, dictionary, audio) found by the data path; the message names
    the file and, for text files, the line: ``file:line: what``."""
