"""``k2ssl_ctc`` built in-process from a tiny ``zipformer_ssl`` checkpoint written by the test."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fairseq import tasks
from omegaconf import OmegaConf

import k2ssl_fairseq.models.k2ssl_ctc  # noqa: F401  (registers k2ssl_ctc in this process)
from helpers import write_zipformer_checkpoint

REPO = Path(__file__).resolve().parents[1]


def trainer_config(corpus: Path, pretrained: Path, **model_overrides) -> OmegaConf:
    """Root config shaped like the trainer's: fairseq saves ``root.model`` into checkpoints."""
    return OmegaConf.create({
        "task": {"_name": "k2ssl_finetuning", "data": str(corpus), "label_dir": str(corpus), "labels": ["ltr"],
                 "normalize": False},
        "model": {"_name": "k2ssl_ctc", "pretrained_path": str(pretrained), **model_overrides},
    })


def build(root) -> tuple:
    task = tasks.setup_task(root.task)
    return task.build_model(root.model), task


def batch(seconds=(1.5, 1.0)) -> dict:
    lengths = [int(s * 16000) for s in seconds]
    source = torch.randn(len(lengths), max(lengths))
    padding = torch.arange(max(lengths))[None, :] >= torch.tensor(lengths)[:, None]
    return {"source": source.masked_fill(padding, 0.0), "padding_mask": padding}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("zip_pt") / "checkpoint_last.pt"
    write_zipformer_checkpoint(path)
    return path


def test_output_contract_and_loaded_weights(tiny_corpus, pretrained):
    root = trainer_config(tiny_corpus, pretrained)
    model, task = build(root)
    saved = torch.load(pretrained, weights_only=False)["model"]
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert model.encoder.final_proj is None
    assert model.vocabulary_size == len(task.target_dictionary)

    model.eval()
    out = model(**batch())
    frames = out["encoder_out"].shape[0]
    assert out["encoder_out"].shape == (frames, 2, len(task.target_dictionary))
    assert out["encoder_padding_mask"].shape == (2, frames)
    assert out["padding_mask"] is out["encoder_padding_mask"]
    assert out["encoder_padding_mask"][1].sum() > 0 and not out["encoder_padding_mask"][0].any()


def test_get_logits_forces_padded_frames_to_blank(tiny_corpus, pretrained):
    model, _ = build(trainer_config(tiny_corpus, pretrained))
    model.eval()
    out = model(**batch())
    logits = model.get_logits(out)
    padded = out["encoder_padding_mask"].t()
    assert torch.all(logits[padded].argmax(-1) == 0)
    assert torch.all(logits[padded][:, 1:] == float("-inf"))
    assert torch.equal(logits[~padded], out["encoder_out"].float()[~padded])
    log_probs = model.get_normalized_probs(out, log_probs=True)
    assert torch.allclose(log_probs[padded][:, 0], torch.zeros(int(padded.sum())))


def test_training_step_is_finite_and_freezing_stops_encoder_gradients(tiny_corpus, pretrained):
    model, task = build(trainer_config(tiny_corpus, pretrained, freeze_finetune_updates=2))
    model.train()
    inputs = batch()
    targets = torch.tensor([[5, 6, 7], [8, 9, 0]])
    target_lengths = torch.tensor([3, 2])

    def loss_and_grads():
        model.zero_grad()
        out = model(**inputs)
        lprobs = model.get_normalized_probs(out, log_probs=True)
        lengths = (~out["encoder_padding_mask"]).sum(1)
        loss = torch.nn.functional.ctc_loss(lprobs, targets, lengths, target_lengths, blank=0, reduction="sum")
        loss.backward()
        return loss

    model.set_num_updates(0)
    assert torch.isfinite(loss_and_grads())
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.proj.weight.grad is not None and torch.isfinite(model.proj.weight.grad).all()
    model.set_num_updates(2)
    loss_and_grads()
    encoder_grads = [p.grad for p in model.encoder.feature_extractor.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in encoder_grads)


def test_masking_override_and_schedules_restart(tiny_corpus, pretrained):
    model, _ = build(trainer_config(tiny_corpus, pretrained, mask_prob=0.5, mask_length=4, feature_grad_mult=0.0))
    assert model.encoder.cfg.mask_prob == 0.5 and model.encoder.cfg.mask_length == 4
    assert model.encoder.cfg.feature_grad_mult == 0.0
    counts = {m.batch_count for m in model.encoder.modules() if hasattr(m, "batch_count")
              and not callable(m.batch_count)}
    assert counts == {0.0}
    model.set_num_updates(27)  # the count is refreshed every batch_count_interval (10) updates, as in k2SSL
    counts = {m.batch_count for m in model.encoder.modules() if hasattr(m, "batch_count")
              and not callable(m.batch_count)}
    assert counts == {20.0}


def test_override_unknown_to_encoder_is_refused(tiny_corpus, pretrained):
    with pytest.raises(ValueError, match="dropout=0.2 does not apply to a zipformer_ssl encoder"):
        build(trainer_config(tiny_corpus, pretrained, dropout=0.2))


def test_normalize_mismatch_is_refused(tiny_corpus, pretrained):
    root = trainer_config(tiny_corpus, pretrained)
    root.task.normalize = True
    with pytest.raises(ValueError, match="normalize"):
        build(root)


def test_record_persists_in_trainer_config_and_rebuilds_without_pretrained_file(tiny_corpus, tmp_path):
    pretrained = tmp_path / "pt.pt"
    write_zipformer_checkpoint(pretrained, seed=3)
    root = trainer_config(tiny_corpus, pretrained)
    model, task = build(root)
    assert root.model.encoder is not None
    assert root.model.encoder.model._name == "zipformer_ssl"
    assert list(root.model.encoder.num_classes) == [20 + 4]  # write_zipformer_checkpoint: 20 clusters
    state = model.state_dict()
    pretrained.unlink()

    saved = OmegaConf.create(OmegaConf.to_container(root))
    rebuilt = task.build_model(saved.model, from_checkpoint=True)
    rebuilt.load_state_dict(state, strict=True)
    model.eval(), rebuilt.eval()
    inputs = batch()
    torch.testing.assert_close(rebuilt(**inputs)["encoder_out"], model(**inputs)["encoder_out"])


def test_random_init_keeps_architecture_not_weights(tiny_corpus, pretrained):
    model, _ = build(trainer_config(tiny_corpus, pretrained, pretrained_weights=False))
    saved = torch.load(pretrained, weights_only=False)["model"]
    weights = dict(model.encoder.named_parameters())
    assert set(weights) <= set(saved)
    assert any(not torch.equal(weights[name], saved[name]) for name in weights)


def test_not_a_pretraining_checkpoint_is_named(tiny_corpus, tmp_path):
    bogus = tmp_path / "bogus.pt"
    torch.save({"cfg": {"model": {"_name": "wav2vec2"}, "task": {}}, "model": {},
                "optimizer_history": [{"criterion_name": "x", "optimizer_name": "x", "lr_scheduler_state": {},
                                       "num_updates": 0}], "extra_state": {"train_iterator": {}}}, bogus)
    with pytest.raises(ValueError, match=r"bogus\.pt: model._name is 'wav2vec2'"):
        build(trainer_config(tiny_corpus, bogus))
