"""Stock fairseq HuBERT as the plugin's comparisons run it: fairseq's own yamls, and a tiny size."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List


def stock_hubert_config_dir() -> Path:
    """Directory of fairseq's own HuBERT pre-training yamls (shipped inside the fairseq package).

    Found without importing fairseq, whose import switches the root logger to DEBUG."""
    spec = importlib.util.find_spec("fairseq")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fairseq is not installed in this environment")
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "examples" / "hubert" / "config" / "pretrain"


TINY_CONV = "'[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2'"


def tiny_hubert_model_overrides() -> List[str]:
    """Model overrides that shrink ``hubert_base_librispeech.yaml``'s HuBERT to about 0.2 M parameters."""
    return ["+model.encoder_layers=2", "+model.encoder_embed_dim=64", "+model.encoder_ffn_embed_dim=128",
            "+model.encoder_attention_heads=2", "model.final_dim=32", f"model.conv_feature_layers={TINY_CONV}",
            "+model.conv_pos=16", "+model.conv_pos_groups=4"]


def stock_hubert_tiny_overrides(data: Path, max_update: int = 4) -> List[str]:
    """Overrides that shrink fairseq's ``hubert_base_librispeech.yaml`` to a seconds-long CPU run."""
    return [f"task.data={data}", f"task.label_dir={data}", "task.labels=[km]", "model.label_rate=50",
            "task.min_sample_size=8000", "dataset.max_tokens=100000", f"optimization.max_update={max_update}",
            *tiny_hubert_model_overrides()]
