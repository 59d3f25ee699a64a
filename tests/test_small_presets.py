"""The small presets: k2SSL's structure at a few million parameters, and stock HuBERT shrunk to match."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from helpers import compose_config
from k2ssl_fairseq import presets
from k2ssl_fairseq.bench.stock import STOCK_HUBERT_SIZES, hubert_model_overrides, stock_hubert_config_dir


def _zipformer_parameters(preset: str) -> int:
    from k2ssl_fairseq.models.zipformer_ssl import ZipformerSslConfig, ZipformerSslModel

    section = {k: v for k, v in presets.model_section("pretrain", preset).items() if k != "_name"}
    cfg = ZipformerSslConfig(label_rate=50.0, sample_rate=16000, **section)
    model = ZipformerSslModel(OmegaConf.structured(cfg), [104])
    return sum(p.numel() for p in model.parameters())


def _stock_hubert_parameters(size: str) -> int:
    from fairseq.data.dictionary import Dictionary
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    dictionary = Dictionary()
    for k in range(100):
        dictionary.add_symbol(str(k))
    sizes = {k: (v.strip("'") if isinstance(v, str) else v) for k, v in STOCK_HUBERT_SIZES[size].items()}
    model = HubertModel(HubertConfig(label_rate=50, **sizes), HubertPretrainingConfig(label_rate=50), [dictionary])
    return sum(p.numel() for p in model.parameters())


def test_zipformer_small_keeps_k2ssl_structure_and_recipe():
    cfg = OmegaConf.load(presets.config_dir("pretrain") / "zipformer_small.yaml")
    assert list(cfg.model.downsampling_factor) == [1, 2, 4, 8, 4, 2]
    assert len(cfg.model.num_encoder_layers) == 6
    assert (cfg.optimizer._name, cfg.lr_scheduler._name, cfg.task._name) == ("scaled_adam", "eden",
                                                                            "k2ssl_pretraining")


def test_small_models_are_a_few_million_parameters_and_alike():
    zipformer, hubert = _zipformer_parameters("zipformer_small"), _stock_hubert_parameters("small")
    assert 4e6 <= zipformer <= 7e6 and 4e6 <= hubert <= 7e6, (zipformer, hubert)
    assert abs(zipformer / hubert - 1) < 0.1, "compare models of the same size"


def test_hubert_overrides_add_only_what_the_stock_yaml_lacks():
    overrides = hubert_model_overrides("small")
    assert "model.final_dim=64" in overrides and "+model.encoder_layers=6" in overrides
    stock_yaml = OmegaConf.load(stock_hubert_config_dir() / "hubert_base_librispeech.yaml")
    for override in overrides:
        key = override.lstrip("+").split("=", 1)[0].split(".", 1)[1]
        assert override.startswith("+") != (key in stock_yaml.model), override
    with pytest.raises(ValueError, match="one of"):
        hubert_model_overrides("huge")


@pytest.mark.parametrize("name", ["zipformer_small", "hubert_small", "zipformer_fbank_small"])
def test_small_presets_are_listed(name: str):
    kinds = [kind for kind in presets.KINDS if name in presets.names(kind)]
    assert kinds, name


def _composed_finetune_model(name: str) -> dict:
    import k2ssl_fairseq  # noqa: F401  (registers k2ssl_ctc, whose defaults fill the model section)

    cfg = compose_config(presets.config_dir("finetune"), name, [
        "task.data=/d", "task.label_dir=/d", "model.pretrained_path=/p.pt", "hydra.run.dir=/r"])
    return OmegaConf.to_container(cfg.model)


def test_small_finetuning_advances_the_schedules_eight_counts_per_update_and_keeps_tinys_recipe():
    small, tiny = _composed_finetune_model("zipformer_small"), _composed_finetune_model("zipformer_tiny")
    assert small.pop("seconds_per_update") == 4800.0 and tiny.pop("seconds_per_update") is None
    assert small == tiny and small["mask_prob"] == 0.65
