"""Registered fairseq components; each module registers itself on import."""
from . import masked_prediction  # noqa: F401  (registers k2ssl_masked_prediction)
