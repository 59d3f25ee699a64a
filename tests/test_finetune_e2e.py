"""End to end: fine-tune through ``fairseq-hydra-train`` from checkpoints made in the test, then decode.

The Zipformer run uses the ``config/finetune/zipformer_tiny.yaml`` preset (``k2ssl_finetuning`` task,
stock ``ctc`` criterion, ScaledAdam + Eden); the stock HuBERT checkpoint is migrated on the fly.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils, tasks
from omegaconf import OmegaConf

import k2ssl_fairseq.models.k2ssl_ctc  # noqa: F401  (registers k2ssl_ctc in this process)
from helpers import write_zipformer_checkpoint
from k2ssl_fairseq import checkpoints
from k2ssl_fairseq.bench.common import hydra_train

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "decode_ctc.py"


def decode_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("decode_ctc", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def finetuned(tiny_corpus, tmp_path_factory) -> dict:
    """A 3-update fine-tuning run from a Zipformer checkpoint; the pre-trained file is deleted after it."""
    work = tmp_path_factory.mktemp("zip_ft")
    pretrained = work / "pretrained.pt"
    write_zipformer_checkpoint(pretrained)
    run_dir = work / "ft"
    proc = hydra_train([f"task.data={tiny_corpus}", f"task.label_dir={tiny_corpus}",
                        f"model.pretrained_path={pretrained}", "optimization.max_update=3"],
                       run_dir, config_dir=REPO / "config" / "finetune", config_name="zipformer_tiny")
    pretrained.unlink()
    return {"run_dir": run_dir, "log": proc.stdout + proc.stderr, "checkpoint": run_dir / "ckpt" / "checkpoint_best.pt"}


def logged(log: str, tag: str) -> list:
    return [json.loads(line.split(" - ", 1)[1]) for line in log.splitlines() if f"[{tag}][INFO] - {{" in line]


def test_finetuning_trains_validates_with_wer_and_saves(finetuned):
    updates = logged(finetuned["log"], "train_inner")
    assert updates and all(float(u["loss"]) > 0 for u in updates)
    assert float(updates[-1]["num_updates"]) == 3
    assert all(float(u["lr"]) == pytest.approx(1e-3, rel=1e-3) for u in updates)
    valid = logged(finetuned["log"], "valid")
    assert valid and "valid_wer" in valid[-1] and "valid_uer" in valid[-1]
    assert finetuned["checkpoint"].is_file()


def test_finetuned_checkpoint_loads_after_pretrained_file_is_deleted(finetuned, tiny_corpus):
    state = checkpoints.load_checkpoint(finetuned["checkpoint"])
    record = state["cfg"].model.encoder
    assert record.model._name == "zipformer_ssl" and not Path(record.source).exists()
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(finetuned["checkpoint"])])
    model = models[0].eval()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name
    wav = torch.randn(1, 16000)
    out = model(source=wav, padding_mask=None)
    assert out["encoder_out"].shape[1:] == (1, len(task.target_dictionary))


def test_decode_script_writes_results(finetuned, tiny_corpus, tmp_path):
    results = tmp_path / "dec"
    rc = decode_main()(["--checkpoint", str(finetuned["checkpoint"]), "--data", str(tiny_corpus),
                        "--subset", "valid", "--results-dir", str(results), "--device", "cpu"])
    assert rc == 0
    report = json.loads((results / "wer.json").read_text())
    refs = (results / "ref.wrd").read_text().splitlines()
    assert report["utterances"] == len(refs) == 4
    assert report["ref_words"] == sum(len(r.split()) for r in refs)
    assert report["wer"] == pytest.approx(100.0 * report["word_errors"] / report["ref_words"], abs=1e-3)
    assert report["subset"] == "valid" and report["checkpoint"] == str(finetuned["checkpoint"].resolve())
    corpus_words = sorted((tiny_corpus / "valid.wrd").read_text().splitlines())
    assert sorted(refs) == corpus_words
    assert len((results / "hyp.ltr").read_text().splitlines()) == 4


def test_decode_script_missing_dictionary_and_wrong_vocabulary(finetuned, tiny_corpus, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    (data / "dict.ltr.txt").unlink()
    args = ["--checkpoint", str(finetuned["checkpoint"]), "--data", str(data), "--subset", "valid",
            "--results-dir", str(tmp_path / "out"), "--device", "cpu"]
    assert decode_main()(args) == 2
    assert f"{data / 'dict.ltr.txt'}: dictionary file does not exist" in capsys.readouterr().err

    letters = (tiny_corpus / "dict.ltr.txt").read_text().splitlines()
    (data / "dict.ltr.txt").write_text("\n".join(letters[:-2]) + "\n")
    assert decode_main()(args) == 2
    err = capsys.readouterr().err
    assert f"{data / 'dict.ltr.txt'} has {len(letters) + 2}" in err and f"CTC head has {len(letters) + 4} units" in err
    assert not (tmp_path / "out" / "wer.json").exists()


def test_stock_hubert_checkpoint_is_migrated_and_recorded(stock_hubert_run, tiny_corpus, tmp_path):
    pretrained = tmp_path / "hubert.pt"
    shutil.copy(stock_hubert_run / "ckpt" / "checkpoint_last.pt", pretrained)
    root = OmegaConf.create({
        "task": {"_name": "k2ssl_finetuning", "data": str(tiny_corpus), "label_dir": str(tiny_corpus),
                 "labels": ["ltr"], "normalize": False},
        "model": {"_name": "k2ssl_ctc", "pretrained_path": str(pretrained), "mask_channel_prob": 0.0,
                  "encoder_layerdrop": 0.0},
    })
    task = tasks.setup_task(root.task)
    model = task.build_model(root.model)
    assert type(model.encoder).__name__ == "K2sslHubertModel"
    assert root.model.encoder.model._name == "k2ssl_hubert"
    assert model.encoder.encoder.layerdrop == 0.0
    source = torch.load(pretrained, weights_only=False)["model"]
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, source[name]), name
    pretrained.unlink()
    model.train()
    out = model(source=torch.randn(2, 16000), padding_mask=torch.zeros(2, 16000, dtype=torch.bool))
    out["encoder_out"].sum().backward()
    assert model.proj.weight.grad is not None
