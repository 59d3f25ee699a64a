"""Compatibility layer (work in progress by the lead; do not edit)."""


def apply() -> None:
    """Applied on import of k2ssl_fairseq."""
