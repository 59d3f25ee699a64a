"""k2ssl_fairseq: k2SSL for fairseq, as a ``common.user_dir`` plugin.

Importing the package (directly, through ``common.user_dir`` or through the ``k2ssl-hydra-train``
entry point) allows fairseq's checkpoint classes in torch's restricted unpickler, installs the
plugin's fairseq patches (``patches/``: which ones is logged, and ``K2SSL_PATCHES`` switches each
off) and registers every plugin component with fairseq.
Registered names: models ``zipformer_ssl``, ``k2ssl_hubert``, ``k2ssl_ctc``; tasks
``k2ssl_pretraining``, ``k2ssl_finetuning``; criterion ``k2ssl_masked_prediction``; optimizer
``scaled_adam``; LR scheduler ``eden``.
"""
import logging

from . import checkpoints, patches

checkpoints.register_allowlist()
logging.getLogger(__name__).info(patches.describe(patches.apply()))

from . import criterions, models, optim, tasks  # noqa: E402,F401  (registration side effects)

__version__ = "0.1.0"
