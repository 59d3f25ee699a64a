"""Registered fairseq models: ``zipformer_ssl``, ``k2ssl_hubert`` and ``k2ssl_ctc``.

Imported explicitly so that ``import k2ssl_fairseq`` registers them before Hydra composes a config
(fairseq's ``common.user_dir`` import would find them too, but only after composition).
"""
from . import k2ssl_ctc, k2ssl_hubert, zipformer_ssl  # noqa: F401  (registration side effects)
