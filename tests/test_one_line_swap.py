"""A stock fairseq HuBERT setup switched to the plugin with one token per component, in every
documented form (README "Using it from fairseq"), through fairseq's own trainer."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List

import pytest

from k2ssl_fairseq.bench.common import hydra_train
from k2ssl_fairseq.cli import component_overrides

#: What the user's own data needs on top of fairseq's hubert_base_librispeech.yaml (its ``???``
#: keys, and utterances shorter than its 2 s minimum), and a short CPU run. No model key.
DATA_AND_BUDGET = ["task.labels=[km]", "model.label_rate=50", "task.min_sample_size=8000",
                   "dataset.max_tokens=100000", "optimization.max_update=3"]


def _data(corpus: Path) -> List[str]:
    return [f"task.data={corpus}", f"task.label_dir={corpus}"]


def _train_records(log: str) -> List[dict]:
    return [json.loads(line.split(" - ", 1)[1]) for line in log.splitlines() if "[train_inner]" in line]


def _losses(log: str) -> List[str]:
    return [record["loss"] for record in _train_records(log)]


@pytest.mark.e2e
def test_stock_yaml_trains_zipformer_with_the_name_and_a_preset(tiny_corpus: Path, tmp_path: Path):
    """The issue's acceptance case: fairseq's own yaml, ``model._name`` plus a size token, no removals."""
    proc = hydra_train([*_data(tiny_corpus), *DATA_AND_BUDGET, "model._name=zipformer_ssl", "+model.preset=tiny"],
                       tmp_path / "run")
    log = proc.stdout + proc.stderr
    assert [r["num_updates"] for r in _train_records(log)] == ["1", "2", "3"]
    assert "ZipformerSslModel" in log and "num. shared model params: 534,885" in log
    ignored = [line for line in log.splitlines() if "zipformer_ssl ignores these stock settings" in line]
    assert len(ignored) == 1
    for setting in ("final_dim=256", "untie_final_proj=True", "encoder_layerdrop=0.05", "dropout_features=0.1"):
        assert setting in ignored[0]
    # The yaml keeps fairseq's hubert criterion: the run says its accuracy is not this model's.
    assert "criterion computes its loss correctly, but its correct_m/correct_u count argmax == 0" in log


@pytest.mark.e2e
def test_k2ssl_hydra_train_selects_components_like_name_keys(tiny_corpus: Path, tmp_path: Path):
    """``G=name`` and plugin keys without ``+`` (k2ssl-hydra-train) train exactly as ``G._name=name``
    and ``+key`` do under fairseq-hydra-train."""
    swap = ["optimization.lr=[0.045]", "optimization.clip_norm=0", "optimization.max_update=2"]
    by_name = hydra_train([*_data(tiny_corpus), *DATA_AND_BUDGET, *swap, "model._name=zipformer_ssl",
                           "+model.preset=tiny", "task._name=k2ssl_pretraining", "+task.max_duration=12",
                           "criterion._name=k2ssl_masked_prediction", "optimizer._name=scaled_adam",
                           "lr_scheduler._name=eden", "+lr_scheduler.lr_batches=100"], tmp_path / "by_name")
    by_group = hydra_train([*_data(tiny_corpus), *DATA_AND_BUDGET, *swap, "model=zipformer_ssl",
                            "model.preset=tiny", "task=k2ssl_pretraining", "task.max_duration=12",
                            "criterion=k2ssl_masked_prediction", "optimizer=scaled_adam", "lr_scheduler=eden",
                            "lr_scheduler.lr_batches=100"], tmp_path / "by_group", executable="k2ssl-hydra-train")
    first, second = (p.stdout + p.stderr for p in (by_name, by_group))
    assert len(_losses(first)) == 2 and _losses(first) == _losses(second)
    for log in (first, second):
        assert "model: ZipformerSslModel" in log and "task: K2sslPretrainingTask" in log
        assert "correct_m/correct_u count argmax == 0" not in log
        # The yaml's Adam and polynomial-decay settings are accepted and named, not refused.
        assert "optimizer=scaled_adam ignores these stock settings" in log
        assert "lr_scheduler=eden ignores these stock settings" in log


@pytest.mark.e2e
def test_misspelt_plugin_keys_are_still_refused(tiny_corpus: Path, tmp_path: Path):
    proc = hydra_train([*_data(tiny_corpus), *DATA_AND_BUDGET, "model=zipformer_ssl", "model.presett=tiny"],
                       tmp_path / "run", executable="k2ssl-hydra-train", check=False)
    assert proc.returncode != 0
    assert "presett" in proc.stdout + proc.stderr


@pytest.mark.e2e
def test_relative_data_paths_mean_the_launch_directory(tiny_corpus: Path, tmp_path: Path):
    """The plugin's task reads relative paths from where the user launched (fairseq's own
    hubert_pretraining task reads them from Hydra's run directory: the README says so)."""
    shutil.copytree(tiny_corpus, tmp_path / "corpus")
    proc = hydra_train(["task.data=corpus", "task.label_dir=corpus", *DATA_AND_BUDGET[:4],
                        "optimization.max_update=1", "model._name=zipformer_ssl", "+model.preset=tiny",
                        "task._name=k2ssl_pretraining"], tmp_path / "runs" / "a", cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert f"task.data=corpus is relative: using {tmp_path / 'corpus'}" in log
    assert len(_train_records(log)) == 1


@pytest.mark.parametrize("given, expected", [
    (["model=zipformer_ssl", "+task=k2ssl_pretraining"], ["++model._name=zipformer_ssl", "++task._name=k2ssl_pretraining"]),
    (["model.preset=tiny", "lr_scheduler.lr_batches=10"], ["++model.preset=tiny", "++lr_scheduler.lr_batches=10"]),
    (["+model.encoder_dim=[8]", "++task.seed=3", "~model.final_dim"], ["+model.encoder_dim=[8]", "++task.seed=3",
                                                                        "~model.final_dim"]),
    (["common.seed=3", "hydra.run.dir=/x", "dataset.max_tokens=5"], ["common.seed=3", "hydra.run.dir=/x",
                                                                     "dataset.max_tokens=5"]),
    (["--config-name", "model=x", "-cd", "task=y", "model=z"], ["--config-name", "model=x", "-cd", "task=y",
                                                                 "++model._name=z"]),
])
def test_component_overrides_rewrite_only_component_selections_and_keys(given, expected):
    assert component_overrides(given) == expected
