"""Every change the plugin makes to fairseq's own code, in one visible place: one module per patch.

Importing ``k2ssl_fairseq`` installs the patches that ``K2SSL_PATCHES`` leaves on and logs one line
naming them. ``K2SSL_PATCHES`` is a comma-separated list of changes to the default (all on):
``-name`` turns a patch off, ``+name`` or ``name`` turns it on, ``-all``/``none`` turns all off
(``K2SSL_PATCHES=-nonfinite_skips`` runs fairseq's own non-finite handling). Each module documents
what it changes, why, and what "off" means; the README has the table.
"""
from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Dict, List, Optional

from . import atomic_checkpoints, checkpoint_loading, nonfinite_skips

logger = logging.getLogger(__name__)

PATCHES_ENV = "K2SSL_PATCHES"
#: All patches, in the order they are installed.
PATCHES: Dict[str, ModuleType] = {module.NAME: module for module in (checkpoint_loading, atomic_checkpoints,
                                                                       nonfinite_skips)}

_active: List[str] = []


def selected(spec: Optional[str] = None) -> List[str]:
    """The patches ``spec`` (default: ``$K2SSL_PATCHES``) leaves on, in install order.

    Raises:
        ValueError: an item names no patch.
    """
    spec = os.environ.get(PATCHES_ENV, "") if spec is None else spec
    on = set(PATCHES)
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item in ("none", "-all"):
            on.clear()
            continue
        if item == "+all":
            on.update(PATCHES)
            continue
        name = item.lstrip("+-")
        if name not in PATCHES:
            raise ValueError(f"{PATCHES_ENV}={spec!r}: unknown patch {name!r}; patches are {', '.join(PATCHES)}")
        (on.discard if item.startswith("-") else on.add)(name)
    return [name for name in PATCHES if name in on]


def apply(spec: Optional[str] = None) -> List[str]:
    """Install the selected patches and remove the others; return the active ones (idempotent)."""
    chosen = selected(spec)
    for name, module in PATCHES.items():
        (module.install if name in chosen else module.remove)()
    _active[:] = chosen
    return list(chosen)


def active() -> List[str]:
    """The patches installed by the last :func:`apply`."""
    return list(_active)


def describe(active_patches: Optional[List[str]] = None) -> str:
    """The start-up line: which patches are on, which off, and how to switch them."""
    on = active() if active_patches is None else active_patches
    off = [name for name in PATCHES if name not in on]
    return (f"k2ssl_fairseq patches fairseq: {', '.join(on) or 'nothing'}"
            f"{' (off: ' + ', '.join(off) + ')' if off else ''}; set {PATCHES_ENV}=-name to turn one off")
