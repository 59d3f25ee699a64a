"""Everything about checkpoint files in one place: reading them safely (``reading``), one error family
(``errors``), encoder records of fine-tuned models (``records``), rebuilding a model from a checkpoint
and reporting how weights do not fit (``building``). Converters, models, scripts, the decoder and the
feature dumper all go through it; nothing here imports the plugin's models or converters."""
from .building import build_model, check_state_dict, state_dict_problems
from .errors import CheckpointError, CheckpointMismatchError, CheckpointReadError, UntrustedCheckpointError
from .reading import (
    TRUSTED_ENV,
    check_config,
    checkpoint_globals,
    is_trusted,
    load_checkpoint,
    load_torch_file,
    read_fairseq_checkpoint,
    register_allowlist,
    torch_load,
    trust_checkpoint,
    trusted_for_this_call,
)
from .records import (
    ENCODER_MODELS,
    PLUGIN_HUBERT,
    STOCK_HUBERT,
    EncoderRecord,
    as_plugin_hubert,
    as_stock_hubert,
    build_encoder,
    placeholder_dictionary,
    record_from_pretraining,
)

__all__ = [
    "ENCODER_MODELS", "PLUGIN_HUBERT", "STOCK_HUBERT", "TRUSTED_ENV", "CheckpointError", "CheckpointMismatchError",
    "CheckpointReadError", "EncoderRecord", "UntrustedCheckpointError", "as_plugin_hubert", "as_stock_hubert",
    "build_encoder", "build_model", "check_config", "check_state_dict", "checkpoint_globals", "is_trusted",
    "load_checkpoint", "load_torch_file", "placeholder_dictionary", "read_fairseq_checkpoint",
    "record_from_pretraining", "register_allowlist", "state_dict_problems", "torch_load", "trust_checkpoint",
    "trusted_for_this_call",
]
