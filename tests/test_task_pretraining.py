"""k2ssl_pretraining / k2ssl_finetuning through fairseq's EpochBatchIterator: batch contract, windowed
reads, worker masks, per-epoch rebuild, equal shards and exact mid-epoch resume."""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from fairseq.logging import metrics

from k2ssl_fairseq.data.audio import AudioReadError, read_audio
from k2ssl_fairseq.data.dataset import MaskSettings
from k2ssl_fairseq.data.frames import conv_frames
from k2ssl_fairseq.data.synthetic import make_tiny_corpus
from k2ssl_fairseq.tasks.k2ssl_pretraining import (
    K2sslFinetuningConfig,
    K2sslFinetuningTask,
    K2sslPretrainingConfig,
    K2sslPretrainingTask,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_corpus(tmp_path_factory.mktemp("task_corpus"), splits={"train": 30, "valid": 4},
                            min_seconds=1.0, max_seconds=4.0)


def _pretraining(corpus: Path, **overrides) -> K2sslPretrainingTask:
    cfg = K2sslPretrainingConfig(data=str(corpus), label_dir=str(corpus), labels=["km"], label_rate=50.0,
                                 min_sample_size=8000, max_sample_size=48000, max_duration=8.0, num_buckets=4,
                                 **overrides)
    task = K2sslPretrainingTask.setup_task(cfg)
    task.load_dataset("train")
    return task


def _iterator(task, seed: int = 3, num_shards: int = 1, shard_id: int = 0, num_workers: int = 0):
    return task.get_batch_iterator(task.dataset("train"), seed=seed, num_shards=num_shards, shard_id=shard_id,
                                   num_workers=num_workers, disable_iterator_cache=True)


def _same_batch(a: dict, b: dict) -> None:
    assert torch.equal(a["id"], b["id"])
    for key in ("source", "padding_mask", "mask_indices"):
        assert (key in a["net_input"]) == (key in b["net_input"])
        if key in a["net_input"]:
            assert torch.equal(a["net_input"][key], b["net_input"][key])
    for x, y in zip(a["target_list"], b["target_list"]):
        assert torch.equal(x, y)


def test_dictionaries_match_hubert_pretraining(corpus: Path):
    task = _pretraining(corpus)
    assert len(task.dictionaries) == 1 and len(task.dictionaries[0]) == 4 + 20
    assert task.dictionaries[0].index("0") == 4


def test_batches_follow_contract_and_read_planned_windows(corpus: Path):
    task = _pretraining(corpus)
    dataset = task.dataset("train")
    batches = list(_iterator(task).next_epoch_itr(shuffle=True))
    plan = dataset.plan(epoch=1)
    assert len(batches) == len(plan)
    km_lines = (corpus / "train.km").read_text().splitlines()
    for number, batch in enumerate(batches):
        source = batch["net_input"]["source"]
        assert source.dtype == torch.float32 and source.dim() == 2
        assert not batch["net_input"]["padding_mask"].any()  # cropped to the shortest: no padding
        assert "mask_indices" not in batch["net_input"]  # no model has asked for precomputed masks
        assert source.shape[0] * source.shape[1] / 16000 <= 8.0
        first = plan.batch_offsets[number]
        target = batch["target_list"][0]
        assert target.dtype == torch.int64 and target.shape[0] == source.shape[0]
        for row, utterance in enumerate(batch["id"].tolist()):
            assert plan.utterances[first + row] == utterance
            start = int(plan.starts[first + row])
            whole = read_audio(dataset.index.audio_path(utterance))
            assert torch.equal(source[row], torch.from_numpy(whole[start:start + source.shape[1]]))
            labels = np.asarray(km_lines[dataset.index.label_line(utterance)].split(), dtype=np.int64) + 4
            label_start = int(round(start * 50 / 16000))
            np.testing.assert_array_equal(target[row].numpy(), labels[label_start:label_start + target.shape[1]])
        stats = batch["audio_stats"]
        assert stats["fed_samples"] == source.numel() == stats["batch_samples"]
        assert stats["utterance_samples"] == int(dataset.index.num_samples[batch["id"].numpy()].sum())


def test_worker_masks_equal_in_process_masks(corpus: Path):
    task = _pretraining(corpus)
    task.dataset("train").mask_settings = MaskSettings(mask_prob=0.8, mask_length=5)
    in_process = list(_iterator(task).next_epoch_itr(shuffle=True))
    in_workers = list(_iterator(task, num_workers=2).next_epoch_itr(shuffle=True))
    assert len(in_process) == len(in_workers)
    for a, b in zip(in_process, in_workers):
        _same_batch(a, b)
        mask = a["net_input"]["mask_indices"]
        assert mask.dtype == torch.bool
        assert mask.shape == (a["net_input"]["source"].shape[0], conv_frames(a["net_input"]["source"].shape[1]))
        assert 0.2 < mask.float().mean() < 0.7


def test_batches_rebuilt_every_epoch(corpus: Path):
    epoch_itr = _iterator(_pretraining(corpus))
    compositions = []
    for _ in range(2):
        compositions.append({frozenset(b["id"].tolist()) for b in epoch_itr.next_epoch_itr(shuffle=True)})
    assert compositions[0] != compositions[1]
    assert epoch_itr.epoch == 2


@pytest.mark.parametrize("num_shards", [2, 3])
def test_equal_batches_per_rank(corpus: Path, num_shards: int):
    task = _pretraining(corpus)
    per_rank = [list(_iterator(task, num_shards=num_shards, shard_id=r).next_epoch_itr()) for r in range(num_shards)]
    assert len({len(batches) for batches in per_rank}) == 1
    ids = sorted(i for batches in per_rank for b in batches for i in b["id"].tolist())
    assert ids == list(range(len(task.dataset("train"))))


def test_exact_mid_epoch_resume(corpus: Path):
    task = _pretraining(corpus)
    task.dataset("train").mask_settings = MaskSettings(mask_prob=0.8, mask_length=5)
    epoch_itr = _iterator(task)
    list(epoch_itr.next_epoch_itr())  # epoch 1 in full, then stop three batches into epoch 2
    itr = epoch_itr.next_epoch_itr()
    consumed = [next(itr) for _ in range(3)]
    state = epoch_itr.state_dict()
    remaining: List[dict] = list(itr)
    assert state["epoch"] == 2 and state["iterations_in_epoch"] == 3 and remaining

    resumed_task = _pretraining(corpus)  # a fresh process: new task, new dataset, new iterator
    resumed_task.dataset("train").mask_settings = MaskSettings(mask_prob=0.8, mask_length=5)
    resumed = _iterator(resumed_task)
    resumed.load_state_dict(state)
    replay = list(resumed.next_epoch_itr())
    assert len(replay) == len(remaining)
    for a, b in zip(remaining, replay):
        _same_batch(a, b)
    assert not any(torch.equal(c["id"], r["id"]) and torch.equal(c["net_input"]["source"], r["net_input"]["source"])
                   for c in consumed for r in replay)


def test_finetuning_whole_utterances_with_transcripts(corpus: Path):
    cfg = K2sslFinetuningConfig(data=str(corpus), label_dir=str(corpus), max_duration=12.0, num_buckets=3)
    task = K2sslFinetuningTask.setup_task(cfg)
    task.load_dataset("train")
    dataset = task.dataset("train")
    dictionary = task.target_dictionary
    assert dictionary.index("<s>") == 0 and dictionary.pad() == 1
    ltr_lines = (corpus / "train.ltr").read_text().splitlines()
    seen = []
    for batch in _iterator(task).next_epoch_itr():
        source, padding = batch["net_input"]["source"], batch["net_input"]["padding_mask"]
        assert "mask_indices" not in batch["net_input"] and "target_list" not in batch
        assert source.numel() / 16000 <= 12.0
        for row, utterance in enumerate(batch["id"].tolist()):
            length = int(dataset.index.num_samples[utterance])
            assert int((~padding[row]).sum()) == length and not padding[row, :length].any()
            whole = read_audio(dataset.index.audio_path(utterance))
            assert torch.equal(source[row, :length], torch.from_numpy(whole))
            assert torch.all(source[row, length:] == 0)
            expected = dictionary.encode_line(ltr_lines[dataset.index.label_line(utterance)], append_eos=False,
                                              add_if_not_exist=False).long()
            count = int(batch["target_lengths"][row])
            assert torch.equal(batch["target"][row, :count], expected)
            assert torch.all(batch["target"][row, count:] == dictionary.pad())
        assert batch["ntokens"] == int(batch["target_lengths"].sum())
        seen.extend(batch["id"].tolist())
    assert sorted(seen) == list(range(len(dataset)))


def test_pretraining_task_in_fine_tuning_mode_is_the_same_path(corpus: Path):
    cfg = K2sslPretrainingConfig(data=str(corpus), label_dir=str(corpus), fine_tuning=True, labels=["ltr"],
                                 max_duration=12.0)
    task = K2sslPretrainingTask.setup_task(cfg)
    task.load_dataset("valid")
    batch = next(iter(task.get_batch_iterator(task.dataset("valid")).next_epoch_itr()))
    assert "target" in batch and "target_lengths" in batch


class _SilentCriterion:
    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        """Criterion metrics are not under test."""


def test_data_metrics_logged_per_update(corpus: Path):
    task = _pretraining(corpus)
    outputs = [{"ntokens": 10, "data_fed_samples": 32000, "data_utterance_samples": 40000,
                "data_batch_samples": 32000, "data_wait_s": 0.5, "data_steps": 1},
               {"ntokens": 10, "data_fed_samples": 16000, "data_utterance_samples": 20000,
                "data_batch_samples": 20000, "data_wait_s": 0.1, "data_steps": 1}]
    with metrics.aggregate(new_root=True) as aggregated:
        task.reduce_metrics(outputs, _SilentCriterion())
    values = aggregated.get_smoothed_values()
    assert values["audio_s"] == 3.0
    assert values["crop_pct"] == 20.0
    assert values["pad_pct"] == pytest.approx(100 * 4000 / 52000, abs=0.01)
    assert values["data_wait_s"] == pytest.approx(0.3)


def test_missing_budget_is_a_clear_error(corpus: Path):
    task = _pretraining(corpus, skip_invalid=False)
    task.cfg.max_duration = None
    with pytest.raises(ValueError, match="set task.max_duration"):
        task.get_batch_iterator(task.dataset("train"))
    budget_from_tokens = task.get_batch_iterator(task.dataset("train"), max_tokens=64000,
                                                 disable_iterator_cache=True)
    assert all(b["net_input"]["source"].numel() <= 64000 for b in budget_from_tokens.next_epoch_itr())


def test_decode_failure_in_worker_names_the_file(tmp_path: Path):
    corpus = make_tiny_corpus(tmp_path / "corpus", splits={"train": 6})
    task = _pretraining(corpus)
    (corpus / "wav" / "train_0004.wav").write_bytes(b"damaged after start-up validation")
    with pytest.raises(AudioReadError, match=r"train\.tsv:6: .*train_0004\.wav: cannot read audio"):
        list(_iterator(task, num_workers=1).next_epoch_itr())
