"""``k2ssl_pretraining`` / ``k2ssl_finetuning``: HuBERT's task on the bucketed data path.

Both read the same files and accept every key of fairseq's ``hubert_pretraining`` (an existing
HuBERT yaml switches with ``task._name=k2ssl_pretraining``), keep its dictionary state (so stock
``hubert``/``hubert_ctc`` and plugin models build with them), and replace only the data path:
validated index, duration-bucketed batches rebuilt every epoch, windowed reads, masks in workers.
"""

import functools
import inspect
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from fairseq import utils
from fairseq.data import iterators
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask
from omegaconf import II

from ..data.bucketing import BatchingSettings
from ..data.dataset import BucketedAudioDataset, LabelSettings, MaskSettings
from ..data.dictionary import load_dictionary
from ..data.frames import WAV2VEC2_CONV_LAYERS
from ..data.index import IndexSettings, LabelSource, build_index
from ..models.config_records import record_in_saved_config
from ..optim.param_names import tag_parameter_names
from ..paths import from_launch_dir

logger = logging.getLogger(__name__)


@dataclass
class K2sslPretrainingConfig(HubertPretrainingConfig):
    max_duration: Optional[float] = field(
        default=None, metadata={"help": "seconds of audio fed to the model per batch and GPU, after cropping "
                                        "and including padding; default: dataset.max_tokens / sample_rate"})
    num_buckets: int = field(default=30, metadata={"help": "duration buckets; batches are formed inside a bucket"})
    quadratic_duration: Optional[float] = field(
        default=None, metadata={"help": "if set, an utterance of d seconds counts d + d^2 / quadratic_duration "
                                        "against max_duration (evens out attention cost)"})
    skip_invalid: bool = field(
        default=False, metadata={"help": "skip utterances that fail start-up validation (and log how many) "
                                         "instead of failing"})
    validate_inputs: bool = field(
        default=True, metadata={"help": "open every audio header at start-up (existence, sample rate, length); "
                                        "turn off for huge manifests (labels are still checked)"})
    label_tolerance: float = field(
        default=0.1, metadata={"help": "allowed disagreement between frame-label count and audio, in seconds"})
    label_cache_dir: Optional[str] = field(
        default=None, metadata={"help": "directory for the integer label caches; default: next to each label file"})
    precompute_masks: bool = field(
        default=True, metadata={"help": "draw span masks in DataLoader workers (net_input.mask_indices) for models "
                                        "whose forward accepts mask_indices; others mask themselves"})
    mask_prob: Optional[float] = field(
        default=None, metadata={"help": "masking probability for precomputed masks; default: model.mask_prob"})
    mask_length: Optional[int] = field(
        default=None, metadata={"help": "span length for precomputed masks; default: model.mask_length"})
    mask_min_masks: int = field(default=2, metadata={"help": "minimum spans per utterance for precomputed masks"})
    seed: int = field(
        default=II("common.seed"),
        metadata={"help": "seeds the model's randomness per batch, from (seed, update, the batch's utterances); "
                          "default: common.seed"})


@dataclass
class K2sslFinetuningConfig(K2sslPretrainingConfig):
    fine_tuning: bool = field(default=True, metadata={"help": "always true: whole utterances with transcripts"})
    labels: List[str] = field(default_factory=lambda: ["ltr"],
                              metadata={"help": "transcript extension, e.g. ltr (dictionary dict.ltr.txt)"})


@register_task("k2ssl_pretraining", dataclass=K2sslPretrainingConfig)
class K2sslPretrainingTask(HubertPretrainingTask):
    """HuBERT pre-training (or, with ``fine_tuning=true``, CTC fine-tuning) on bucketed batches."""

    cfg: K2sslPretrainingConfig

    def __init__(self, cfg: K2sslPretrainingConfig) -> None:
        record_in_saved_config(cfg, {"data": from_launch_dir(cfg.data, "task.data"),
                                     "label_dir": from_launch_dir(cfg.label_dir, "task.label_dir")}, "task")
        super().__init__(cfg)
        self.mask_settings: Optional[MaskSettings] = None
        self._last_step_end: Optional[float] = None

    def load_dictionaries(self) -> Any:
        """Stock ``load_dictionaries`` with the plugin's strict reader (errors name file and line)."""
        dictionaries = [load_dictionary(Path(self.get_label_dir()) / f"dict.{label}.txt") for label in self.cfg.labels]
        return dictionaries[0] if self.cfg.fine_tuning else dictionaries

    def load_dataset(self, split: str, **kwargs: Any) -> None:
        cfg = self.cfg
        dictionaries = [self.target_dictionary] if cfg.fine_tuning else self.dictionaries
        sources = [LabelSource(Path(self.get_label_dir()) / f"{split}.{name}", dictionary.symbols,
                               -1.0 if cfg.fine_tuning else cfg.label_rate)
                   for name, dictionary in zip(cfg.labels, dictionaries)]
        index = build_index(Path(cfg.data) / f"{split}.tsv", sources, IndexSettings(
            sample_rate=cfg.sample_rate, min_samples=cfg.min_sample_size, max_samples=cfg.max_keep_size,
            check_audio=cfg.validate_inputs, skip_invalid=cfg.skip_invalid,
            label_tolerance=cfg.label_tolerance, cache_dir=cfg.label_cache_dir))
        self.datasets[split] = BucketedAudioDataset(
            index, self._batching(max_duration=cfg.max_duration or 0.0),  # budget settled per iterator
            LabelSettings(pad_indices=tuple(d.pad() for d in dictionaries),
                          rate=-1.0 if cfg.fine_tuning else cfg.label_rate),
            normalize=cfg.normalize, skip_unreadable=cfg.skip_invalid)
        self.datasets[split].mask_settings = self.mask_settings

    def _batching(self, max_duration: float) -> BatchingSettings:
        crop = not (self.cfg.fine_tuning or self.cfg.pad_audio)
        return BatchingSettings(
            max_duration=max_duration, sample_rate=self.cfg.sample_rate, num_buckets=self.cfg.num_buckets,
            crop=crop, max_sample_size=self.cfg.max_sample_size, random_crop=bool(self.cfg.random_crop),
            quadratic_duration=self.cfg.quadratic_duration)

    def build_model(self, cfg: Any, from_checkpoint: bool = False) -> torch.nn.Module:
        """Build the model, name its parameters for ScaledAdam's diagnostics, and decide who masks:
        this task, if the model takes ``mask_indices``."""
        model = super().build_model(cfg, from_checkpoint)
        tag_parameter_names(model)
        takes_masks = "mask_indices" in inspect.signature(model.forward).parameters
        if self.cfg.fine_tuning or not self.cfg.precompute_masks or not takes_masks:
            self.mask_settings = None
            logger.info("masks are drawn by the model (precomputed masks off or unsupported by %s)",
                        type(model).__name__)
        else:
            self.mask_settings = MaskSettings(
                mask_prob=self.cfg.mask_prob if self.cfg.mask_prob is not None else cfg.mask_prob,
                mask_length=self.cfg.mask_length if self.cfg.mask_length is not None else cfg.mask_length,
                min_masks=self.cfg.mask_min_masks, conv_layers=model_conv_layers(model))
            logger.info("masks are drawn in DataLoader workers: %s", self.mask_settings)
        for dataset in self.datasets.values():
            dataset.mask_settings = self.mask_settings
        return model

    def get_batch_iterator(self, dataset: BucketedAudioDataset, max_tokens: Optional[int] = None,
                           max_sentences: Optional[int] = None, seed: int = 1, num_shards: int = 1,
                           shard_id: int = 0, num_workers: int = 0, epoch: int = 1, data_buffer_size: int = 0,
                           disable_iterator_cache: bool = False, **unused: Any) -> iterators.EpochBatchIterator:
        """fairseq iterator whose batches are re-planned every epoch from (seed, epoch).

        ``max_tokens``/``max_sentences`` (fairseq's ``dataset.max_tokens``/``batch_size``) are used only
        as fallbacks: the budget is ``task.max_duration`` seconds per GPU when set. Sorting, shuffling
        and sharding are the plan's job, so the iterator's own shuffling is off; resuming mid-epoch
        re-plans the same epoch and skips the consumed batches (``iterations_in_epoch``).
        """
        if not disable_iterator_cache and dataset in self.dataset_to_epoch_iter:
            return self.dataset_to_epoch_iter[dataset]
        max_duration = self.cfg.max_duration or (max_tokens / self.cfg.sample_rate if max_tokens else None)
        if not max_duration:
            raise ValueError("set task.max_duration (seconds of audio per batch per GPU) or dataset.max_tokens")
        dataset.batching = replace(self._batching(max_duration), max_batch_size=max_sentences)
        too_long = int((dataset.index.num_samples > max_duration * self.cfg.sample_rate).sum())
        if too_long and not dataset.batching.crop:
            logger.warning("%d utterances are longer than the %.1f s batch budget; each forms a batch of its own "
                           "that exceeds it (drop them with task.max_keep_size)", too_long, max_duration)
        dataset.seed = seed
        epoch_iter = iterators.EpochBatchIterator(
            dataset=dataset, collate_fn=dataset.collater,
            batch_sampler=functools.partial(_epoch_batches, num_shards=num_shards),
            seed=seed, num_shards=num_shards, shard_id=shard_id, num_workers=num_workers, epoch=epoch,
            buffer_size=data_buffer_size, disable_shuffling=True)
        if not disable_iterator_cache:
            self.dataset_to_epoch_iter[dataset] = epoch_iter
        return epoch_iter

    def begin_epoch(self, epoch: int, model: torch.nn.Module) -> None:
        """Start timing the data wait: the first batch of an epoch includes starting the loader."""
        super().begin_epoch(epoch, model)
        self._last_step_end = time.perf_counter()

    def begin_valid_epoch(self, epoch: int, model: torch.nn.Module) -> None:
        """Validation (and checkpointing) between two steps is not data wait."""
        super().begin_valid_epoch(epoch, model)
        self._last_step_end = None

    def train_step(self, sample: Dict[str, Any], model: torch.nn.Module, criterion: Any, optimizer: Any,
                   update_num: int, ignore_grad: bool = False) -> Tuple[Any, Any, Dict[str, Any]]:
        """Stock step, with the model's randomness (dropout, skips, feature masks, regulariser draws)
        seeded from the batch itself (:func:`batch_seed`), plus data statistics in the logging
        output (see :meth:`reduce_metrics`).

        The data wait is the time between the end of the previous step (or the start of the epoch)
        and the start of this one: loader time not hidden by prefetching, plus the trainer's own
        bookkeeping; a step right after validation reports none.
        """
        started = time.perf_counter()
        wait = 0.0 if self._last_step_end is None else started - self._last_step_end
        if sample:
            utils.set_torch_seed(batch_seed(self.cfg.seed, update_num, sample["id"]))
        loss, sample_size, logging_output = super().train_step(
            sample, model, criterion, optimizer, update_num, ignore_grad)
        stats = sample.get("audio_stats") if sample else None
        if stats and not ignore_grad:
            logging_output.update({f"data_{key}": value for key, value in stats.items()})
            logging_output.update(data_wait_s=wait, data_steps=1)
        self._last_step_end = time.perf_counter()
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs: List[Dict[str, Any]], criterion: Any) -> None:
        """Log per update: ``audio_s`` (audio fed, all ranks), ``crop_pct`` (audio of the batch's
        utterances cropped away), ``pad_pct`` (padding in the batch tensors), ``data_wait_s`` (mean
        per step and rank), and ``skipped_utts`` when unreadable audio was left out (``skip_invalid``)."""
        super().reduce_metrics(logging_outputs, criterion)
        fed = sum(log.get("data_fed_samples", 0) for log in logging_outputs)
        if not fed:
            return
        whole = sum(log.get("data_utterance_samples", 0) for log in logging_outputs)
        tensor = sum(log.get("data_batch_samples", 0) for log in logging_outputs)
        steps = sum(log.get("data_steps", 0) for log in logging_outputs)
        metrics.log_scalar("audio_s", fed / self.cfg.sample_rate, round=1)
        metrics.log_scalar("crop_pct", 100.0 * (whole - fed) / max(whole, 1), round=2)
        metrics.log_scalar("pad_pct", 100.0 * (tensor - fed) / max(tensor, 1), round=2)
        metrics.log_scalar("data_wait_s", sum(log.get("data_wait_s", 0.0) for log in logging_outputs)
                           / max(steps, 1), round=4)
        skipped = sum(log.get("data_skipped_utterances", 0) for log in logging_outputs)
        if skipped:
            metrics.log_scalar_sum("skipped_utts", skipped)


@register_task("k2ssl_finetuning", dataclass=K2sslFinetuningConfig)
class K2sslFinetuningTask(K2sslPretrainingTask):
    """CTC fine-tuning: whole utterances padded per duration bucket, ``.ltr`` transcripts as ``target``."""

    cfg: K2sslFinetuningConfig


def batch_seed(seed: int, update_num: int, ids: torch.Tensor) -> int:
    """The torch seed of one batch: a function of the run's seed, the update and the batch's utterance
    ids only. fairseq seeds once per update, so the second batch of an update continues the first
    one's random stream in one process but starts afresh on another rank; seeding by the batch makes
    N ranks draw what one process with ``update_freq`` N draws, and a resumed run what an
    uninterrupted one drew."""
    entropy = [int(seed) & 0xFFFFFFFF, int(update_num), *(int(i) for i in ids.tolist())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _epoch_batches(dataset: BucketedAudioDataset, epoch: int, num_shards: int) -> List[Any]:
    """``EpochBatchIterator``'s callable batch sampler: the plan of ``epoch``."""
    return dataset.epoch_batches(epoch, num_shards)


def model_conv_layers(model: torch.nn.Module) -> Tuple[Tuple[int, int, int], ...]:
    """(channels, kernel, stride) layers whose ``conv_frames`` is the model's frame count: the plugin
    models' ``conv_layers`` (their frame layout, the fbank front-end's included), else the ``Conv1d``
    modules of a ``feature_extractor`` (stock HuBERT); the wav2vec2 stack when the model has neither."""
    layout = getattr(model, "conv_layers", None)
    if layout:
        return tuple(tuple(int(v) for v in layer) for layer in layout)
    extractor = getattr(model, "feature_extractor", None)
    convs = [m for m in extractor.modules() if isinstance(m, torch.nn.Conv1d)] if extractor is not None else []
    if not convs:
        logger.warning("%s has no feature_extractor Conv1d layers; masks assume the wav2vec2 front-end",
                       type(model).__name__)
        return WAV2VEC2_CONV_LAYERS
    return tuple((m.out_channels, m.kernel_size[0], m.stride[0]) for m in convs)
