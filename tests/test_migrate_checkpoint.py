"""Migration of a HuBERT checkpoint trained in this test by stock ``fairseq-hydra-train``.

One tiny stock run (2 layers, dim 48, CNN ``[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2``, 3
updates) is shared by every test in this file. The encoder is narrower than the CNN so that the
model has ``post_extract_proj``, which torchaudio's importer requires.
"""
import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.models.hubert.hubert import HubertModel
from torchaudio.models.wav2vec2.utils import import_fairseq_model

import k2ssl_fairseq  # noqa: F401  (patches + registrations)
from helpers import assert_gradients_close
from k2ssl_fairseq import checkpoints
from k2ssl_fairseq.bench.common import hydra_train
from k2ssl_fairseq.bench.stock import stock_hubert_tiny_overrides
from k2ssl_fairseq.conversion import hubert as conversion
from k2ssl_fairseq.data.masking import compute_span_mask
from k2ssl_fairseq.data.synthetic import make_tiny_corpus
from k2ssl_fairseq.models.k2ssl_hubert import K2sslHubertModel

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
STOCK_ENCODER_48 = ["++model.encoder_embed_dim=48"]


@pytest.fixture(scope="module")
def stock_run(tmp_path_factory):
    """(data dir, stock checkpoint) from a 3-update stock HuBERT pre-training run."""
    root = tmp_path_factory.mktemp("stock_hubert")
    data = make_tiny_corpus(root / "data")
    hydra_train(stock_hubert_tiny_overrides(data, max_update=3) + STOCK_ENCODER_48, root / "run")
    return data, root / "run" / "ckpt" / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def migrated(stock_run, tmp_path_factory):
    """(stock checkpoint, migrated k2ssl_hubert checkpoint, migrated back to hubert)."""
    _, stock = stock_run
    out = tmp_path_factory.mktemp("migrated")
    conversion.migrate_checkpoint(stock, out / "k2ssl.pt", "k2ssl_hubert")
    conversion.migrate_checkpoint(out / "k2ssl.pt", out / "back.pt", "hubert")
    return stock, out / "k2ssl.pt", out / "back.pt"


def load_model(path):
    return checkpoints.build_model(checkpoints.read_fairseq_checkpoint(path), path)[0].eval()


def test_round_trip_is_lossless(migrated):
    stock_path, k2ssl_path, back_path = migrated
    stock, k2ssl, back = (checkpoints.read_fairseq_checkpoint(p) for p in migrated)
    for converted in (k2ssl, back):
        assert list(converted["model"]) == list(stock["model"])
        for key, tensor in stock["model"].items():
            assert converted["model"][key].dtype == tensor.dtype and torch.equal(converted["model"][key], tensor), key
        assert converted["last_optimizer_state"]["state"].keys() == stock["last_optimizer_state"]["state"].keys()
        assert converted["task_state"]["dictionaries"][0].symbols == stock["task_state"]["dictionaries"][0].symbols
    assert k2ssl["cfg"]["model"]["_name"] == "k2ssl_hubert" and k2ssl["cfg"]["model"]["logit_mode"] == "cosine"
    assert back["cfg"]["model"]["_name"] == "hubert" and "logit_mode" not in back["cfg"]["model"]
    assert back["cfg"]["model"] == stock["cfg"]["model"]
    assert k2ssl["cfg"]["task"]["data"] == "." and k2ssl["cfg"]["task"]["label_dir"] is None
    assert k2ssl["cfg"]["common"]["user_dir"] is None
    assert str(stock_path.parent.parent.parent) not in repr(k2ssl["cfg"]["task"])
    assert k2ssl["cfg"]["task"]["labels"] == stock["cfg"]["task"]["labels"]
    assert k2ssl["cfg"]["task"]["normalize"] == stock["cfg"]["task"]["normalize"]
    assert k2ssl["extra_state"]["k2ssl_migration"]["from"] == "hubert"


def test_fairseq_loads_the_migrated_checkpoint(migrated):
    _, k2ssl_path, back_path = migrated
    models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(k2ssl_path)])
    assert type(models[0]) is K2sslHubertModel and cfg.model.logit_mode == "cosine"
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(back_path)])
    assert type(models[0]) is HubertModel


def test_layer_outputs_and_cosine_loss_match_stock(migrated):
    stock_path, k2ssl_path, _ = migrated
    stock, ours = load_model(stock_path), load_model(k2ssl_path)
    assert type(stock) is HubertModel and type(ours) is K2sslHubertModel
    report = conversion.compare_models(stock, ours, seconds=2.0, batch=2, seed=0)
    assert {f"layer_{i}" for i in (1, 2)} <= report.keys() and "loss_m" in report
    for key, (_, relative) in report.items():
        assert relative <= 1e-5, (key, report[key])


def test_cosine_loss_gradients_match_stock(migrated):
    stock_path, k2ssl_path, _ = migrated
    stock, ours = load_model(stock_path), load_model(k2ssl_path)
    rng = np.random.default_rng(7)
    audio = torch.from_numpy(rng.standard_normal((2, 32000)).astype(np.float32))
    frames = stock.forward_features(audio).size(2)
    mask = compute_span_mask(np.full(2, frames), frames, 0.8, 10, rng)
    targets = [torch.from_numpy(rng.integers(4, stock.num_classes[0], (2, frames)))]
    for model in (stock, ours):
        out = conversion.masked_forward(model, audio, targets, mask)
        losses = conversion.prediction_losses(model, out)
        (losses["loss_m"] + 10.0 * losses["features_pen"] * int(mask.sum())).backward()
    assert_gradients_close({n: p.grad for n, p in ours.named_parameters()},
                           {n: p.grad for n, p in stock.named_parameters()})


def test_layer_outputs_match_torchaudio(migrated):
    stock_path, k2ssl_path, _ = migrated
    reference = import_fairseq_model(load_model(stock_path)).eval()
    ours = load_model(k2ssl_path)
    audio = torch.randn(2, 32000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torchaudio_layers, _ = reference.extract_features(audio)
        for layer, expected in enumerate(torchaudio_layers, start=1):
            got, _ = ours.extract_features(audio, torch.zeros(audio.shape, dtype=torch.bool), output_layer=layer)
            error = (got - expected).abs().max() / expected.abs().max()
            assert error <= 1e-4, (layer, error.item())
    assert len(torchaudio_layers) == 2


def test_cli_converts_and_verifies(stock_run, tmp_path):
    _, stock = stock_run
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "migrate_checkpoint.py"), str(stock),
                           str(tmp_path / "k2ssl.pt"), "--to", "k2ssl_hubert", "--verify"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "max |diff|" in line]
    assert [line.split(":")[0].strip() for line in lines] == \
        ["layer_1", "layer_2", "features", "loss_m", "loss_u", "features_pen"]
    assert all(float(line.split("relative")[1]) <= 1e-5 for line in lines), proc.stdout
    assert "task.data" in proc.stdout.splitlines()[0]


def corrupt(checkpoint, how):
    broken = copy.deepcopy(checkpoint)
    if how == "unknown_model":
        broken["cfg"]["model"]["_name"] = "wav2vec2"
    elif how == "ctc":
        broken["cfg"]["model"]["_name"] = "hubert_ctc"
    elif how == "missing_tensor":
        del broken["model"]["encoder.layers.1.fc1.weight"]
    elif how == "config_disagrees":
        broken["cfg"]["model"]["encoder_layers"] = 3
    elif how == "wrong_shape":
        broken["model"]["label_embs_concat"] = broken["model"]["label_embs_concat"][:10]
    return broken


@pytest.mark.parametrize("how, message", [
    ("unknown_model", r"model._name is 'wav2vec2'"),
    ("ctc", r"a fine-tuned hubert_ctc checkpoint converts to k2ssl_ctc \(--to k2ssl_ctc\)"),
    ("missing_tensor", r"weights do not fit .*1 missing keys \(first: \['encoder.layers.1.fc1.weight'\]\)"),
    ("config_disagrees", r"weights do not fit .*missing keys \(first: \['encoder.layers.2."),
    ("wrong_shape", r"weights do not fit .*label_embs_concat: \(10, 32\) in the checkpoint, \(24, 32\) expected"),
])
def test_inconsistent_checkpoints_are_refused(stock_run, how, message):
    _, stock = stock_run
    checkpoint = checkpoints.read_fairseq_checkpoint(stock)
    with pytest.raises(checkpoints.CheckpointMismatchError, match=r"^/.*checkpoint_last\.pt: " + message):
        conversion.convert_checkpoint(corrupt(checkpoint, how), "k2ssl_hubert", str(stock))


def test_pointless_or_lossy_conversions_are_refused(migrated, tmp_path):
    stock_path, k2ssl_path, _ = migrated
    with pytest.raises(checkpoints.CheckpointMismatchError, match="already a 'hubert' checkpoint"):
        conversion.migrate_checkpoint(stock_path, tmp_path / "x.pt", "hubert")
    linear = checkpoints.read_fairseq_checkpoint(k2ssl_path)
    linear["cfg"]["model"]["logit_mode"] = "linear"
    with pytest.raises(checkpoints.CheckpointMismatchError, match="logit_mode='linear' has no stock equivalent"):
        conversion.convert_checkpoint(linear, "hubert", "linear.pt")
    not_a_checkpoint = tmp_path / "notes.pt"
    torch.save({"weights": torch.zeros(2)}, not_a_checkpoint)
    with pytest.raises(checkpoints.CheckpointMismatchError, match=r"notes.pt: not a fairseq checkpoint"):
        conversion.migrate_checkpoint(not_a_checkpoint, tmp_path / "y.pt", "k2ssl_hubert")


#: Continued pre-training recipes on top of the stock yaml: stock task/criterion/Adam, and k2SSL's
#: bucketed task, criterion, ScaledAdam and Eden (switched by name; the stock yaml's Adam and
#: polynomial-decay keys stay and are ignored).
CONTINUATION_RECIPES = {
    "stock_task_and_adam": [],
    "k2ssl_task_scaled_adam_eden": [
        "task._name=k2ssl_pretraining", "criterion._name=k2ssl_masked_prediction", "optimizer._name=scaled_adam",
        "lr_scheduler._name=eden", "+lr_scheduler.warmup_batches=1", "optimization.lr=[0.045]",
        "optimization.clip_norm=0",
    ],
}


@pytest.mark.parametrize("recipe", sorted(CONTINUATION_RECIPES))
def test_continued_pretraining_of_the_migrated_checkpoint(stock_run, migrated, tmp_path, recipe):
    """Model k2ssl_hubert, weights restored from the migrated file, optimizer and schedule fresh."""
    data, _ = stock_run
    _, k2ssl_path, _ = migrated
    overrides = stock_hubert_tiny_overrides(data, max_update=2) + STOCK_ENCODER_48 + [
        "model._name=k2ssl_hubert", f"checkpoint.restore_file={k2ssl_path}", "checkpoint.reset_optimizer=true",
        "checkpoint.reset_dataloader=true", "checkpoint.reset_meters=true", "checkpoint.reset_lr_scheduler=true",
    ] + CONTINUATION_RECIPES[recipe]
    hydra_train(overrides, tmp_path / "run")
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"Loaded checkpoint {k2ssl_path}" in log
    assert log.count("train_inner") >= 2
    trained = checkpoints.read_fairseq_checkpoint(tmp_path / "run" / "ckpt" / "checkpoint_last.pt")
    assert trained["cfg"]["model"]["_name"] == "k2ssl_hubert"
    assert trained["optimizer_history"][-1]["num_updates"] == 2
    start = checkpoints.read_fairseq_checkpoint(k2ssl_path)["model"]
    assert not torch.equal(trained["model"]["final_proj.weight"], start["final_proj.weight"])


def test_migrating_for_another_criterion_keeps_the_update_count_and_the_schedule(stock_run, tmp_path):
    """``--criterion k2ssl_masked_prediction``: training resumes with the optimizer state, the update
    count and the lr schedule of the stock run, instead of fairseq's 'Criterion does not match'."""
    data, stock = stock_run
    migrated = tmp_path / "k2ssl.pt"
    conversion.migrate_checkpoint(stock, migrated, "k2ssl_hubert", criterion="k2ssl_masked_prediction")
    saved = checkpoints.read_fairseq_checkpoint(stock)["optimizer_history"][-1]
    rewritten = checkpoints.read_fairseq_checkpoint(migrated)
    assert rewritten["optimizer_history"][-1]["criterion_name"] == "MaskedPredictionCriterion"
    assert rewritten["cfg"]["criterion"]["_name"] == "k2ssl_masked_prediction"
    overrides = stock_hubert_tiny_overrides(data, max_update=saved["num_updates"] + 2) + STOCK_ENCODER_48 + [
        "model._name=k2ssl_hubert", f"checkpoint.restore_file={migrated}", "criterion._name=k2ssl_masked_prediction"]
    proc = hydra_train(overrides, tmp_path / "run")
    log = proc.stdout + proc.stderr
    updates = [json.loads(line.split(" - ", 1)[1]) for line in log.splitlines() if "[train_inner][INFO] - {" in line]
    assert [int(u["num_updates"]) for u in updates] == [saved["num_updates"] + 1, saved["num_updates"] + 2]
    lr_after = float(updates[0]["lr"])
    stock_log = (stock.parent.parent / "train.log").read_text()
    stock_lrs = [float(json.loads(line.split(" - ", 1)[1])["lr"]) for line in stock_log.splitlines()
                 if "[train_inner][INFO] - {" in line]
    assert lr_after > stock_lrs[-1], "the warm-up continues where the stock run stopped"
    with pytest.raises(checkpoints.CheckpointMismatchError, match="unknown criterion 'nope'"):
        conversion.migrate_checkpoint(stock, tmp_path / "x.pt", "k2ssl_hubert", criterion="nope")
