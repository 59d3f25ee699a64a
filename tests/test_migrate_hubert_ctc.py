"""Fine-tuned stock ``hubert_ctc`` checkpoints -> ``k2ssl_ctc``.

The pre-training checkpoint comes from a 2-update stock ``fairseq-hydra-train`` run; the fine-tuned
one is fairseq's own ``HubertCtc`` built from it and saved in the trainer's layout
(``stock_hubert_ctc_checkpoint``: stock fairseq cannot run hubert_ctc fine-tuning itself).
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils

import k2ssl_fairseq  # noqa: F401  (patches + registrations)
from helpers import stock_hubert_ctc_checkpoint
from k2ssl_fairseq.bench.common import hydra_train
from k2ssl_fairseq.bench.stock import stock_hubert_tiny_overrides
from k2ssl_fairseq.checkpoints import CheckpointMismatchError
from k2ssl_fairseq.checkpoints import read_fairseq_checkpoint as read_checkpoint
from k2ssl_fairseq.conversion import hubert_ctc
from k2ssl_fairseq.data.synthetic import make_tiny_corpus
from k2ssl_fairseq.models.k2ssl_ctc import K2sslCtcModel

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stock_ctc(tmp_path_factory):
    """(data dir, pre-training checkpoint, fine-tuned hubert_ctc checkpoint)."""
    root = tmp_path_factory.mktemp("stock_ctc")
    data = make_tiny_corpus(root / "data")
    hydra_train(stock_hubert_tiny_overrides(data, max_update=2) + ["++model.encoder_embed_dim=48"],
                        root / "pt")
    pretrained = root / "pt" / "ckpt" / "checkpoint_last.pt"
    return data, pretrained, stock_hubert_ctc_checkpoint(pretrained, data, root / "ft" / "hubert_ctc.pt")


def test_conversion_keeps_every_tensor_and_the_fine_tuning_settings(stock_ctc, tmp_path):
    _, pretrained, fine_tuned = stock_ctc
    converted, dropped = hubert_ctc.migrate_hubert_ctc(fine_tuned, tmp_path / "k2ssl_ctc.pt")
    source = read_checkpoint(fine_tuned)
    renamed = {k.replace("w2v_encoder.w2v_model.", "encoder.").replace("w2v_encoder.proj.", "proj."): v
               for k, v in source["model"].items()}
    assert sorted(converted["model"]) == sorted(renamed)
    assert all(torch.equal(converted["model"][k], v) for k, v in renamed.items())
    model_cfg = converted["cfg"]["model"]
    assert model_cfg["_name"] == "k2ssl_ctc" and model_cfg["pretrained_path"] is None
    assert model_cfg["encoder"]["model"]["_name"] == "k2ssl_hubert"
    assert model_cfg["encoder"]["num_classes"] == [len(d) for d in read_checkpoint(pretrained)["task_state"]["dictionaries"]]
    assert (model_cfg["mask_prob"], model_cfg["mask_channel_prob"], model_cfg["encoder_layerdrop"],
            model_cfg["freeze_finetune_updates"], model_cfg["feature_grad_mult"]) == (0.5, 0.25, 0.1, 100, 0.0)
    assert model_cfg["encoder"]["model"]["mask_selection"] == "static"
    assert "task.data" in dropped and converted["cfg"]["task"]["fine_tuning"] is True
    assert converted["extra_state"]["k2ssl_migration"]["from"] == "hubert_ctc"


def test_converted_checkpoint_is_self_contained_and_gives_stock_logits(stock_ctc, tmp_path):
    """CTC logits of fairseq's HubertCtc and of the converted k2ssl_ctc agree (eval, float32), and
    the converted file loads through fairseq after the pre-training file is gone."""
    _, pretrained, fine_tuned = stock_ctc
    hubert_ctc.migrate_hubert_ctc(fine_tuned, tmp_path / "k2ssl_ctc.pt")
    stock = hubert_ctc.build_stock_model(read_checkpoint(fine_tuned), str(fine_tuned))
    moved = tmp_path / "moved_pretraining.pt"
    shutil.copy(pretrained, moved)
    pretrained.unlink()
    try:
        models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "k2ssl_ctc.pt")])
    finally:
        shutil.copy(moved, pretrained)
    assert type(models[0]) is K2sslCtcModel and len(task.target_dictionary) == models[0].vocabulary_size
    (diff, relative), = hubert_ctc.compare_ctc_models(stock, models[0]).values()
    assert relative <= 1e-5, (diff, relative)


def test_missing_pretraining_checkpoint_is_a_clear_error_and_pretrained_fixes_it(stock_ctc, tmp_path):
    _, pretrained, fine_tuned = stock_ctc
    checkpoint = read_checkpoint(fine_tuned)
    checkpoint["cfg"]["model"]["w2v_path"] = "/elsewhere/hubert_base_ls960.pt"
    with pytest.raises(CheckpointMismatchError,
                       match=r"hubert_ctc.pt: .*w2v_path='/elsewhere/hubert_base_ls960.pt' is not a file here; "
                             r"pass the pre-training checkpoint"):
        hubert_ctc.convert_hubert_ctc(checkpoint, str(fine_tuned))
    converted, _ = hubert_ctc.convert_hubert_ctc(checkpoint, str(fine_tuned), pretrained=pretrained)
    assert converted["cfg"]["model"]["encoder"]["source"] == str(pretrained)


def test_recorded_w2v_args_need_no_pretraining_file(stock_ctc):
    """Checkpoints whose config carries ``w2v_args`` convert alone (one label set: sizes from the weights)."""
    _, pretrained, fine_tuned = stock_ctc
    checkpoint = read_checkpoint(fine_tuned)
    checkpoint["cfg"]["model"]["w2v_args"] = read_checkpoint(pretrained)["cfg"]
    checkpoint["cfg"]["model"]["w2v_path"] = "/elsewhere/missing.pt"
    converted, _ = hubert_ctc.convert_hubert_ctc(checkpoint, "ft.pt")
    assert converted["cfg"]["model"]["encoder"]["num_classes"] == [
        int(checkpoint["model"]["w2v_encoder.w2v_model.label_embs_concat"].shape[0])]


def test_foreign_tensors_and_models_are_refused(stock_ctc):
    _, _, fine_tuned = stock_ctc
    checkpoint = read_checkpoint(fine_tuned)
    checkpoint["model"]["decoder.embed_out"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected tensor 'decoder.embed_out'"):
        hubert_ctc.convert_hubert_ctc(checkpoint, "ft.pt")
    checkpoint = read_checkpoint(fine_tuned)
    del checkpoint["model"]["w2v_encoder.w2v_model.encoder.layers.1.fc1.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(first: \['encoder.encoder.layers.1.fc1.weight'\]\)"):
        hubert_ctc.convert_hubert_ctc(checkpoint, "ft.pt")
    checkpoint["cfg"]["model"]["_name"] = "wav2vec_ctc"
    with pytest.raises(CheckpointMismatchError, match=r"model._name is 'wav2vec_ctc', not 'hubert_ctc'"):
        hubert_ctc.convert_hubert_ctc(checkpoint, "ft.pt")


def test_script_converts_verifies_and_the_result_decodes(stock_ctc, tmp_path):
    data, _, fine_tuned = stock_ctc
    out = tmp_path / "k2ssl_ctc.pt"
    proc = subprocess.run([sys.executable, "scripts/migrate_checkpoint.py", str(fine_tuned), str(out),
                           "--to", "k2ssl_ctc", "--verify"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    verified = [line for line in proc.stdout.splitlines() if "ctc_logits" in line]
    assert len(verified) == 1 and float(verified[0].split("relative")[1]) <= 1e-5, proc.stdout
    proc = subprocess.run([sys.executable, "scripts/decode_ctc.py", "--checkpoint", str(out), "--data", str(data),
                           "--subset", "valid", "--results-dir", str(tmp_path / "decode"), "--device", "cpu"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "decode" / "wer.json").read_text())
    references = (tmp_path / "decode" / "ref.wrd").read_text().splitlines()
    assert report["utterances"] == 4 and references == (data / "valid.wrd").read_text().splitlines()
    assert len((tmp_path / "decode" / "hyp.wrd").read_text().splitlines()) == 4
