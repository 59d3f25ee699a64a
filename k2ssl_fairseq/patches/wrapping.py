"""Replacing a fairseq function with a wrapper that can be told apart from fairseq's own and undone."""
from __future__ import annotations

from typing import Any, Callable

#: Attribute of a replacement holding the function it replaced.
ORIGINAL = "_k2ssl_original"


def is_replaced(owner: Any, name: str) -> bool:
    """Whether ``owner.name`` is one of the plugin's replacements."""
    return hasattr(getattr(owner, name), ORIGINAL)


def replace(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Set ``owner.name`` to ``make(original)``, once (a second call changes nothing)."""
    if is_replaced(owner, name):
        return
    original = getattr(owner, name)
    replacement = make(original)
    setattr(replacement, ORIGINAL, original)
    setattr(owner, name, replacement)


def restore(owner: Any, name: str) -> None:
    """Put fairseq's own ``owner.name`` back (nothing to do if it was not replaced)."""
    if is_replaced(owner, name):
        setattr(owner, name, getattr(getattr(owner, name), ORIGINAL))
