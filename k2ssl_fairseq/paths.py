"""Relative paths on the command line mean the directory the user launched from.

``fairseq-hydra-train`` runs inside ``hydra.run.dir`` (Hydra changes the working directory), so a
relative ``task.data=labels50`` would otherwise be looked up there, far from where the user typed it.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

logger = logging.getLogger(__name__)


def from_launch_dir(path: Optional[str], key: str) -> Optional[str]:
    """``path`` made absolute against the directory the run was launched from (Hydra's original
    working directory; the current one outside Hydra); absolute paths and None are returned as given."""
    if path is None or os.path.isabs(str(path)) or "://" in str(path):
        return path
    try:
        from hydra.utils import get_original_cwd

        base = get_original_cwd()
    except (ImportError, ValueError):  # not inside a Hydra run
        base = os.getcwd()
    resolved = os.path.normpath(os.path.join(base, str(path)))
    if resolved != os.path.abspath(str(path)):
        logger.info("%s=%s is relative: using %s (the directory the run was launched from; Hydra runs in "
                    "hydra.run.dir)", key, path, resolved)
    return resolved
