"""k2SSL's optimizer and LR schedule: fairseq optimizer ``scaled_adam`` and LR scheduler ``eden``.

``ScaledAdam`` (torch optimizer) and ``EdenSchedule`` (the schedule maths) are usable without fairseq's
trainer; ``tag_parameter_names`` gives fairseq-built optimizers parameter names for diagnostics.
"""
from . import fairseq_eden, fairseq_scaled_adam  # noqa: F401  (registers "eden" and "scaled_adam")
from .eden import EdenSchedule
from .param_names import tag_parameter_names
from .scaled_adam import ScaledAdam

__all__ = ["EdenSchedule", "ScaledAdam", "tag_parameter_names"]
