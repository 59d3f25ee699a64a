"""k2ssl_fairseq: k2SSL for fairseq, as a ``common.user_dir`` plugin.

Importing the package (directly, through ``common.user_dir`` or through the ``k2ssl-*`` entry
points) registers every plugin component with fairseq, allows fairseq's checkpoint classes in
torch's restricted unpickler and installs the plugin's fairseq patches (``patches/``: which ones is
logged, and ``K2SSL_PATCHES`` switches each off). When fairseq is not loaded yet, that happens the
moment it is (``registration.py``), so that tools start without paying for torch and fairseq.
Registered names: models ``zipformer_ssl``, ``k2ssl_hubert``, ``k2ssl_ctc``; tasks
``k2ssl_pretraining``, ``k2ssl_finetuning``; criterion ``k2ssl_masked_prediction``; optimizer
``scaled_adam``; LR scheduler ``eden``.
"""
from .registration import register_now_or_when_fairseq_loads

__version__ = "0.1.0"

register_now_or_when_fairseq_loads()
