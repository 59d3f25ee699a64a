"""The plugin's command-line tools, one module each, installed as ``k2ssl-*`` console scripts.

Every tool parses its arguments before importing torch or fairseq, so ``--help`` and argument
errors come back at once; the heavy imports follow inside ``main``.
"""
from __future__ import annotations

import logging
import sys
import warnings

#: Loggers of other libraries that talk at import time (tensorboardX hints, font caches, loaders).
_CHATTY_LOGGERS = ("fairseq.tasks.text_to_speech", "matplotlib", "faiss", "faiss.loader", "PIL", "numba")


def quiet_library_output() -> None:
    """Log INFO lines of the plugin and fairseq to stderr, but not other libraries' import-time
    chatter or their deprecation warnings; call before the heavy imports."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s: %(message)s", stream=sys.stderr)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
