"""zipformer_ssl in training: schedules, determinism, overfitting, and fairseq-hydra-train end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from fairseq import checkpoint_utils
from omegaconf import OmegaConf

import k2ssl_fairseq  # noqa: F401
from k2ssl_fairseq.bench.common import hydra_train
from k2ssl_fairseq.criterions.masked_prediction import MaskedPredictionCriterion
from k2ssl_fairseq.models.zipformer import ScheduledFloat
from k2ssl_fairseq.models.zipformer_ssl import ZipformerSslConfig, ZipformerSslModel

TINY_PRESET = Path(__file__).resolve().parent.parent / "config" / "pretrain" / "zipformer_tiny.yaml"


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.e2e]


def tiny_model(num_classes: int = 24, **overrides) -> ZipformerSslModel:
    settings = {k: v for k, v in OmegaConf.load(TINY_PRESET).model.items() if k != "_name"}
    settings.update(label_rate=50.0, sample_rate=16000, **overrides)
    return ZipformerSslModel(OmegaConf.structured(ZipformerSslConfig(**settings)), [num_classes])


def test_set_num_updates_drives_schedules_with_adjusted_batch_count():
    model = tiny_model(seconds_per_update=4800.0, ref_duration=600.0).train()
    schedules = [m for m in model.modules() if isinstance(m, ScheduledFloat)]
    assert schedules
    before = [float(s) for s in schedules]
    model.set_num_updates(2500)
    assert all(s.batch_count == 20000.0 for s in schedules)  # 2500 updates x 4800 s / 600 s
    after = [float(s) for s in schedules]
    assert any(a != b for a, b in zip(after, before))
    model.eval()
    assert [float(s) for s in schedules] == [s.default for s in schedules]
    # seconds_per_update unset: the update count, refreshed every batch_count_interval updates (k2SSL: 10)
    assert tiny_model().batch_count(123) == 120.0
    assert tiny_model(batch_count_interval=1).batch_count(123) == 123.0


def test_a_loaded_update_is_closed_by_the_next_set_num_updates():
    """fairseq's trainer calls set_num_updates(n) and then loads the weights, whose Whiten findings
    belong to the update that set_num_updates(n) closes: the resumed run must close them then, as the
    uninterrupted run did (not fold them into update n's findings)."""
    from k2ssl_fairseq.models.zipformer.regularizers import Whiten

    saved = tiny_model().train()
    saved.set_num_updates(3)
    whitens = [m for m in saved.modules() if isinstance(m, Whiten)]
    for whiten in whitens:
        whiten.observed = Whiten.UNDER  # what update 3's passes found, saved before update 4 begins
    state = saved.state_dict()
    saved.set_num_updates(4)  # the uninterrupted run closes update 3
    assert {w.prob for w in whitens} == {whitens[0].min_prob}

    resumed = tiny_model().train()
    resumed.set_num_updates(4)  # fairseq: before load_state_dict
    resumed.load_state_dict(state, strict=True)
    resumed.set_num_updates(4)  # fairseq: before update 4's first batch
    assert [(w.prob, w.observed) for w in resumed.modules() if isinstance(w, Whiten)] == \
        [(w.prob, w.observed) for w in whitens]


def test_eval_is_deterministic_and_training_is_not():
    torch.manual_seed(0)
    model = tiny_model()
    wav = torch.randn(2, 16000)
    with torch.no_grad():
        model.eval()
        first, _ = model.extract_features(wav)
        second, _ = model.extract_features(wav)
        model.train()
        model.set_num_updates(0)
        noisy, _ = model.extract_features(wav)
    assert torch.equal(first, second)
    assert not torch.allclose(first, noisy)


def load_utterances(corpus: Path, count: int):
    """The first ``count`` training utterances and their k-means labels as dictionary indices (+4)."""
    lines = (corpus / "train.tsv").read_text().splitlines()[1: count + 1]
    labels = (corpus / "train.km").read_text().splitlines()[:count]
    wavs = [torch.from_numpy(sf.read(corpus / line.split("\t")[0], dtype="float32")[0]) for line in lines]
    return wavs, [torch.tensor([int(v) + 4 for v in row.split()]) for row in labels]


def padded_batch(wavs, labels):
    lengths = [len(w) for w in wavs]
    source = torch.zeros(len(wavs), max(lengths))
    padding = torch.ones(len(wavs), max(lengths), dtype=torch.bool)
    targets = torch.full((len(wavs), max(len(t) for t in labels)), 1, dtype=torch.long)
    for i, (w, t) in enumerate(zip(wavs, labels)):
        source[i, : len(w)], padding[i, : len(w)], targets[i, : len(t)] = w, False, t
    return {"id": torch.arange(len(wavs)), "net_input": {"source": source, "padding_mask": padding},
            "target_list": [targets]}


def test_overfits_a_handful_of_utterances(tiny_corpus: Path):
    """A direct model + criterion loop on 3 padded utterances: the loss stays finite and falls well
    below its start."""
    torch.manual_seed(0)
    wavs, labels = load_utterances(tiny_corpus, 3)
    keep = [16000, 12800, 14400]  # crop to 1 s, 0.8 s, 0.9 s: short steps, and a padded batch
    sample = padded_batch([w[:n] for w, n in zip(wavs, keep)], [t[: n // 320 - 1] for t, n in zip(labels, keep)])
    model = tiny_model(num_classes=24, dropout_input=0.0).train()
    criterion = MaskedPredictionCriterion(SimpleNamespace(), 1.0, 0.0, [10.0], [])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        model.set_num_updates(step)
        loss, sample_size, _ = criterion(model, sample)
        optimizer.zero_grad()
        (loss / sample_size).backward()
        optimizer.step()
        losses.append(float(loss.detach()) / sample_size)
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_fairseq_hydra_train_runs_the_tiny_preset(tiny_corpus: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    hydra_train([f"task.data={tiny_corpus}", f"task.label_dir={tiny_corpus}", "optimization.max_update=4"],
                run_dir, config_dir=TINY_PRESET.parent, config_name="zipformer_tiny", env={"OMP_NUM_THREADS": "1"})
    records = [json.loads(line[line.index("{"):]) for line in (run_dir / "train.log").read_text().splitlines()
               if "[train_inner]" in line]
    assert [int(r["num_updates"]) for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["loss"])) and "accuracy" in r for r in records)

    (model,), cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(run_dir / "ckpt" / "checkpoint_last.pt")])
    assert isinstance(model, ZipformerSslModel) and cfg.criterion._name == "k2ssl_masked_prediction"
    assert model.final_proj.out_features == len(task.dictionaries[0]) == 24
