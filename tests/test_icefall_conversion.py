"""icefall k2SSL checkpoint → fairseq → icefall, on a synthetic checkpoint made of the golden weights."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils

import helpers
import k2ssl_fairseq  # noqa: F401
from helpers import golden_arrays, golden_dir
from k2ssl_fairseq.checkpoints import CheckpointMismatchError
from k2ssl_fairseq.conversion.icefall import import_icefall_checkpoint
from k2ssl_fairseq.data.frames import parse_conv_layers

GOLDEN = golden_dir()
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def golden():
    return golden_arrays("zipformer_ssl_tiny_case1")


@pytest.fixture(scope="module")
def icefall_checkpoint() -> dict:
    return helpers.icefall_checkpoint()


def run_script(name: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.e2e
def test_round_trip_through_fairseq_loader(tmp_path, golden, icefall_checkpoint):
    icefall_path, fairseq_path, back_path = tmp_path / "icefall.pt", tmp_path / "fairseq.pt", tmp_path / "back.pt"
    torch.save(icefall_checkpoint, icefall_path)
    run_script("import_icefall_checkpoint.py", str(icefall_path), str(fairseq_path), "--trusted-checkpoint")

    (model,), cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(fairseq_path)])
    assert cfg.model._name == "zipformer_ssl" and len(task.dictionaries[0]) == 24
    assert task.dictionaries[0].index("0") == 4 and task.dictionaries[0].index("19") == 23
    wav = torch.from_numpy(golden["input/wav"])
    with torch.no_grad():
        encoded, _ = model.eval().extract_features(wav)
        logits = model.final_proj(encoded) / model.cfg.logit_temp
    reference = torch.roll(torch.from_numpy(golden["out/logits"]), 4, dims=-1)  # k-means id k → class k + 4
    assert float((logits - reference).abs().max() / reference.abs().max()) <= 1e-4

    run_script("export_icefall_checkpoint.py", str(fairseq_path), str(back_path))
    back = torch.load(back_path, weights_only=False)
    assert back["model"].keys() == icefall_checkpoint["model"].keys()
    assert all(torch.equal(back["model"][k], v) for k, v in icefall_checkpoint["model"].items())
    for key in ("encoder_dim", "num_encoder_layers", "feedforward_dim", "downsampling_factor", "num_heads",
                "encoder_unmasked_dim", "cnn_module_kernel", "query_head_dim", "pos_dim", "batch_idx_train"):
        assert str(back[key]) == str(icefall_checkpoint[key]), key
    assert parse_conv_layers(back["conv_feature_layers"]) == parse_conv_layers(
        icefall_checkpoint["conv_feature_layers"])


def test_averaged_model_is_selectable(icefall_checkpoint):
    converted = import_icefall_checkpoint(icefall_checkpoint, use_averaged_model=True)
    key = "post_extract_proj.weight"
    assert torch.equal(converted["model"][key], icefall_checkpoint["model"][key] * 0.5)
    assert converted["optimizer_history"][-1]["num_updates"] == 1234


def test_mismatches_are_refused_with_the_offending_keys(icefall_checkpoint):
    missing = dict(icefall_checkpoint, model={k: v for k, v in icefall_checkpoint["model"].items() if k != "mask_emb"})
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys.*mask_emb"):
        import_icefall_checkpoint(missing, source="x.pt")
    extra = dict(icefall_checkpoint, model={**icefall_checkpoint["model"], "encoder.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys.*encoder\.extra\.weight"):
        import_icefall_checkpoint(extra)
    wrong_dims = dict(icefall_checkpoint, encoder_dim="32,48,64,48,48,40")
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        import_icefall_checkpoint(wrong_dims)
    without_hparams = {"model": icefall_checkpoint["model"]}
    with pytest.raises(CheckpointMismatchError, match="--preset"):
        import_icefall_checkpoint(without_hparams)
    with pytest.raises(CheckpointMismatchError, match="no 'model_avg'"):
        import_icefall_checkpoint({"model": icefall_checkpoint["model"]}, use_averaged_model=True, source="y.pt")


def test_conv_feature_layers_parsed_without_eval():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == (
        ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2)
    with pytest.raises(ValueError, match="Call is not allowed"):
        parse_conv_layers("__import__('os')")
    with pytest.raises(ValueError, match="not a non-empty list of"):
        parse_conv_layers("[(512, 10)]")
    with pytest.raises(CheckpointMismatchError, match=r"^z\.pt: .*Call is not allowed"):
        import_icefall_checkpoint({"model": {"final_proj.weight": torch.zeros(8, 4)}, "conv_feature_layers": "f()"},
                                  source="z.pt")


@pytest.mark.parametrize("head_dims", [None, {"query_head_dim": "32,32,24,24,32,32",
                                              "value_head_dim": "12,12,8,8,12,12", "pos_head_dim": "4,4,2,2,4,4"}],
                         ids=["single_head_dims", "per_stack_head_dims"])
def test_base_icefall_checkpoint_round_trips_bit_identically(head_dims):
    """Import then export gives back every tensor and every architecture hyper-parameter exactly."""
    from k2ssl_fairseq.conversion.icefall import (
        export_icefall_checkpoint,
        icefall_only_parameters,
        model_config_from_hparams,
    )
    from k2ssl_fairseq.models.zipformer import without_training_state
    from k2ssl_fairseq.models.zipformer_ssl import ZipformerSslModel

    hparams = dict(json.loads((GOLDEN / "zipformer_ssl_base_state_dict.json").read_text())["config"],
                   **(head_dims or {}))
    torch.manual_seed(0)
    layout = without_training_state(ZipformerSslModel(model_config_from_hparams(hparams), [504]).state_dict())
    layout.update(icefall_only_parameters(layout))
    state = {key: torch.randn_like(value) for key, value in layout.items()}  # icefall's keys, random weights
    original = {"model": state, "batch_idx_train": 7, **hparams}
    back = export_icefall_checkpoint(import_icefall_checkpoint(original, source="base.pt"), source="fairseq.pt")
    assert back["model"].keys() == state.keys()
    assert all(torch.equal(back["model"][k], v) for k, v in state.items())
    for key in ("encoder_dim", "num_encoder_layers", "feedforward_dim", "downsampling_factor", "num_heads",
                "encoder_unmasked_dim", "cnn_module_kernel", "query_head_dim", "value_head_dim", "pos_head_dim",
                "pos_dim"):
        assert str(back[key]) == str(hparams[key]), key
