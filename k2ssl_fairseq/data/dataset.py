"""Reading and collating planned batches, with masks drawn in the DataLoader worker.

A batch arrives as rows ``(utterance, start, num_samples, batch_index, epoch)`` from
:meth:`EpochPlan.batch_rows`; only each planned window is read from disk, as float32. The collater
builds the batch contract of DESIGN.md and, when mask settings are given, HuBERT span masks seeded
from (seed, epoch, batch index), so masks are reproducible and cost the GPU nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from fairseq.data import FairseqDataset

from .audio import AudioReadError, read_audio
from .bucketing import BatchingSettings, EpochPlan, plan_epoch
from .frames import WAV2VEC2_CONV_LAYERS, conv_frames, samples_to_label_index
from .index import SplitIndex
from .masking import compute_span_mask, mask_rng

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskSettings:
    """HuBERT span masking drawn by the data path (normally copied from the model config).

    Attributes:
        mask_prob: span-start probability times span length (HuBERT ``mask_prob``).
        mask_length: span length in frames.
        min_masks: minimum spans per row.
        conv_layers: (channels, kernel, stride) of the model's CNN front-end; fixes the frame count.
    """

    mask_prob: float
    mask_length: int
    min_masks: int = 2
    conv_layers: Tuple[Tuple[int, int, int], ...] = WAV2VEC2_CONV_LAYERS


@dataclass(frozen=True)
class LabelSettings:
    """How label sets become targets.

    Attributes:
        pad_indices: dictionary pad index per label set.
        rate: label rate in Hz for frame labels (``target_list``), or <= 0 for transcripts
            (one label set, collated as ``target``/``target_lengths`` for CTC).
    """

    pad_indices: Tuple[int, ...]
    rate: float


class BucketedAudioDataset(FairseqDataset):
    """Windows of a split's utterances, batched by :mod:`bucketing` plans.

    Args:
        index: the validated split.
        batching: batch formation settings.
        labels: target settings (pad indices must match ``index.labels``).
        seed: run seed; plans and masks derive from it (the task sets ``common.seed`` when it
            builds the iterator).
        normalize: zero-mean unit-variance per window (HuBERT ``normalize``; computed on the window
            read, not on the whole file).
        skip_unreadable: a file that fails to decode during training is named in a warning and left
            out of its batch (the task's ``skip_invalid`` policy) instead of stopping the run.
    """

    def __init__(self, index: SplitIndex, batching: BatchingSettings, labels: LabelSettings,
                 seed: int = 1, normalize: bool = False, skip_unreadable: bool = False) -> None:
        if len(labels.pad_indices) != len(index.labels):
            raise ValueError(f"{len(index.labels)} label sets but {len(labels.pad_indices)} pad indices")
        self.index = index
        self.batching = batching
        self.labels = labels
        self.seed = seed
        self.normalize = normalize
        self.skip_unreadable = skip_unreadable
        self.mask_settings: Optional[MaskSettings] = None

    def __len__(self) -> int:
        return len(self.index)

    def size(self, index: int) -> int:
        """Samples of an utterance (fairseq's size for filtering)."""
        return int(self.index.num_samples[index])

    def num_tokens(self, index: int) -> int:
        return self.size(index)

    def plan(self, epoch: int, num_shards: int = 1) -> EpochPlan:
        """This epoch's batch plan (a pure function of lengths, settings, seed and epoch)."""
        return plan_epoch(self.index.num_samples, self.batching, self.seed, epoch, num_shards)

    def epoch_batches(self, epoch: int, num_shards: int = 1) -> List[np.ndarray]:
        """Rows of every batch of an epoch, for fairseq's ``EpochBatchIterator``."""
        return self.plan(epoch, num_shards).batch_rows()

    def __getitem__(self, row: Sequence[int]) -> Optional[Dict[str, Any]]:
        """Read one planned window and its labels.

        Args:
            row: ``(utterance, start, num_samples, batch_index, epoch)``.

        Returns:
            The item, or None for an unreadable file when ``skip_unreadable`` is set.

        Raises:
            AudioReadError: naming the manifest line and audio file when decoding fails.
        """
        utterance, start, num_samples, batch_index, epoch = (int(v) for v in row)
        path = self.index.audio_path(utterance)
        try:
            audio = read_audio(path, start, num_samples, self.batching.sample_rate)
        except AudioReadError as error:
            if self.skip_unreadable:
                logger.warning("%s: %s; left out of its batch (skip_invalid=true)", self.index.where(utterance), error)
                return None
            raise AudioReadError(f"{self.index.where(utterance)}: {error}") from error
        if self.normalize:
            audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-5)
        line = self.index.label_line(utterance)
        labels = [cache.line(line) for cache in self.index.labels]
        if self.labels.rate > 0:
            first = int(samples_to_label_index(start, self.labels.rate, self.batching.sample_rate))
            labels = [label[first:] for label in labels]
        return {"id": utterance, "source": torch.from_numpy(audio), "labels": labels,
                "utterance_samples": int(self.index.num_samples[utterance]),
                "batch_index": batch_index, "epoch": epoch}

    def collater(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Batch per DESIGN.md: ``net_input`` (source, padding_mask, optional mask_indices),
        ``target_list`` or ``target``/``target_lengths``, ``id``, ``ntokens``, and ``audio_stats``
        (plain ints: samples fed, samples of the whole utterances, samples of the padded batch, and
        utterances left out because their audio could not be read)."""
        skipped = sum(item is None for item in items)
        items = [item for item in items if item is not None]
        if not items:
            return {}
        lengths = np.asarray([item["source"].shape[0] for item in items], dtype=np.int64)
        width = int(lengths.max())
        source = torch.zeros(len(items), width, dtype=torch.float32)
        for row, item in enumerate(items):
            source[row, : lengths[row]] = item["source"]
        # Always a tensor (all False when cropped): stock HubertModel.forward negates it unconditionally.
        padding_mask = torch.arange(width)[None, :] >= torch.from_numpy(lengths)[:, None]
        net_input: Dict[str, Any] = {"source": source, "padding_mask": padding_mask}
        if self.mask_settings is not None:
            net_input["mask_indices"] = self._masks(lengths, items[0]["batch_index"], items[0]["epoch"])
        batch: Dict[str, Any] = {"id": torch.tensor([item["id"] for item in items], dtype=torch.long),
                                 "net_input": net_input}
        if self.labels.rate > 0:
            batch.update(self._frame_targets(items, lengths))
        elif self.index.labels:
            batch.update(self._sequence_target(items))
        batch["audio_stats"] = {"fed_samples": int(lengths.sum()),
                                "utterance_samples": sum(item["utterance_samples"] for item in items),
                                "batch_samples": int(width * len(items)), "skipped_utterances": skipped}
        return batch

    def _masks(self, lengths: np.ndarray, batch_index: int, epoch: int) -> torch.Tensor:
        settings = self.mask_settings
        frames = conv_frames(lengths, settings.conv_layers)
        mask = compute_span_mask(frames, int(frames.max()), settings.mask_prob, settings.mask_length,
                                 mask_rng(self.seed, epoch, batch_index), min_masks=settings.min_masks)
        return torch.from_numpy(mask)

    def _frame_targets(self, items: List[Dict[str, Any]], lengths: np.ndarray) -> Dict[str, Any]:
        """Frame labels of each window: the label count of the window's duration (rounded, as
        HuBERT does), cut to what the label file holds; all rows equal when cropping."""
        wanted = np.round(lengths * self.labels.rate / self.batching.sample_rate).astype(np.int64)
        target_list, lengths_list = [], []
        for set_index, pad in enumerate(self.labels.pad_indices):
            rows = [item["labels"][set_index] for item in items]
            counts = np.minimum(wanted, [len(r) for r in rows])
            if self.batching.crop:
                counts[:] = counts.min()
            target = torch.full((len(rows), int(counts.max())), pad, dtype=torch.long)
            for row, (labels, count) in enumerate(zip(rows, counts.tolist())):
                target[row, :count] = torch.from_numpy(labels[:count].astype(np.int64))
            target_list.append(target)
            lengths_list.append(torch.from_numpy(counts))
        return {"target_list": target_list, "target_lengths_list": lengths_list,
                "ntokens": int(lengths_list[0].sum())}

    def _sequence_target(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Transcripts padded with the dictionary pad index, for CTC."""
        rows = [item["labels"][0] for item in items]
        counts = torch.tensor([len(r) for r in rows], dtype=torch.long)
        target = torch.full((len(rows), int(counts.max())), self.labels.pad_indices[0], dtype=torch.long)
        for row, labels in enumerate(rows):
            target[row, : len(labels)] = torch.from_numpy(labels.astype(np.int64))
        return {"target": target, "target_lengths": counts, "ntokens": int(counts.sum())}
