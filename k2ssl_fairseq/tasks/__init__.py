"""Registered fairseq components; each module registers itself on import."""
from . import k2ssl_pretraining  # noqa: F401  (registers k2ssl_pretraining and k2ssl_finetuning)
