"""Stock fairseq HuBERT as the plugin's comparisons run it: fairseq's own yamls, shrunk by overrides."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, List


def stock_hubert_config_dir() -> Path:
    """Directory of fairseq's own HuBERT pre-training yamls (shipped inside the fairseq package).

    Found without importing fairseq, whose import switches the root logger to DEBUG."""
    spec = importlib.util.find_spec("fairseq")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fairseq is not installed in this environment")
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "examples" / "hubert" / "config" / "pretrain"


#: The tiny size's waveform CNN (quoted for Hydra): 64 channels, fairseq's strides (320 samples per frame).
TINY_CONV = "'[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2'"

#: Stock HuBERT shrunk by overrides of ``hubert_base_librispeech.yaml``'s model section. ``tiny``: ~0.2 M
#: parameters, for tests; ``small``: 5.32 M, beside the ``zipformer_small`` preset's 5.28 M (counted by
#: building both), same 128-channel waveform CNN, for the low-resource experiment and the demo.
STOCK_HUBERT_SIZES: Dict[str, Dict[str, object]] = {
    "tiny": {"encoder_layers": 2, "encoder_embed_dim": 64, "encoder_ffn_embed_dim": 128,
             "encoder_attention_heads": 2, "final_dim": 32, "conv_pos": 16, "conv_pos_groups": 4,
             "conv_feature_layers": TINY_CONV},
    "small": {"encoder_layers": 6, "encoder_embed_dim": 256, "encoder_ffn_embed_dim": 1024,
              "encoder_attention_heads": 4, "final_dim": 64, "conv_pos": 64, "conv_pos_groups": 16,
              "conv_feature_layers": "'[(128,10,5)] + [(128,3,2)] * 4 + [(128,2,2)] * 2'"},
}
#: Model fields ``hubert_base_librispeech.yaml`` sets itself (overridden without Hydra's ``+``).
_YAML_MODEL_FIELDS = {"final_dim", "conv_feature_layers"}


def hubert_model_overrides(size: str) -> List[str]:
    """Hydra overrides that shrink the stock yaml's HuBERT to ``size`` (a key of ``STOCK_HUBERT_SIZES``)."""
    if size not in STOCK_HUBERT_SIZES:
        raise ValueError(f"stock HuBERT size must be one of {sorted(STOCK_HUBERT_SIZES)}, got {size!r}")
    return [f"{'' if key in _YAML_MODEL_FIELDS else '+'}model.{key}={value}"
            for key, value in STOCK_HUBERT_SIZES[size].items()]


def stock_hubert_tiny_overrides(data: Path, max_update: int = 4) -> List[str]:
    """Overrides that shrink fairseq's ``hubert_base_librispeech.yaml`` to a seconds-long CPU run."""
    return [f"task.data={data}", f"task.label_dir={data}", "task.labels=[km]", "model.label_rate=50",
            "task.min_sample_size=8000", "dataset.max_tokens=100000", f"optimization.max_update={max_update}",
            *hubert_model_overrides("tiny")]
