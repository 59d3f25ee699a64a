"""``k2ssl_masked_prediction``: HuBERT's masked-prediction loss with accuracy right for class logits.

Drop-in for the stock ``hubert`` criterion (its config accepts every stock key, so a yaml switches
by ``_name``) and the same loss value:
``pred_masked_weight * sum CE(masked) + pred_nomask_weight * sum CE(unmasked)
+ sum_k loss_weights[k] * extra_loss_k * sample_size``.

Two differences:

* accuracy counts ``argmax == target`` with the targets from ``model.get_targets`` (excluding rows
  where ``argmin`` also equals the target, i.e. constant rows). That is right for class-logit heads
  (``zipformer_ssl``, k2SSL's ``Linear(D, C) / logit_temp``), and also for stock HuBERT's cosine
  logits, whose positive sits in column 0 and whose targets are zeros; the stock criterion counts
  ``argmax == 0``, which is wrong for class logits;
* every logged value is a sum, so ``logging_outputs_can_be_summed()`` is True and fairseq
  all-reduces the stats instead of pickling them through ``all_gather_list`` every step; the values
  are brought to the CPU with one transfer per step instead of one ``.item()`` per key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.hubert_criterion import HubertCriterionConfig
from fairseq.logging import metrics


@dataclass
class MaskedPredictionConfig(HubertCriterionConfig):
    """The stock ``hubert`` criterion's keys: pred_masked_weight, pred_nomask_weight, loss_weights, log_keys."""


def count_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Frames whose argmax is the target, not counting rows whose argmin is the target too.

    Args:
        logits: ``(frames, classes)``.
        targets: ``(frames,)`` class indices.

    Returns:
        A 0-dim int64 tensor on the logits' device.
    """
    if logits.numel() == 0:
        return torch.zeros((), dtype=torch.long, device=logits.device)
    hit = logits.argmax(-1) == targets
    degenerate = logits.argmin(-1) == targets
    return (hit & ~degenerate).sum()


@register_criterion("k2ssl_masked_prediction", dataclass=MaskedPredictionConfig)
class MaskedPredictionCriterion(FairseqCriterion):
    """Masked-prediction cross-entropy (k2SSL / HuBERT) with summable logging outputs."""

    def __init__(self, task, pred_masked_weight: float, pred_nomask_weight: float,
                 loss_weights: Optional[Sequence[float]] = None, log_keys: Optional[Sequence[str]] = None) -> None:
        super().__init__(task)
        self.pred_masked_weight = pred_masked_weight
        self.pred_nomask_weight = pred_nomask_weight
        self.loss_weights = list(loss_weights) if loss_weights is not None else None
        self.log_keys = list(log_keys or [])

    def forward(self, model, sample: Dict) -> Tuple[torch.Tensor, int, Dict[str, float]]:
        """Compute the loss of one batch.

        Returns:
            ``(loss, sample_size, logging_output)``; ``sample_size`` is the number of masked frames
            (plus unmasked frames when ``pred_nomask_weight > 0``), the gradient denominator.
        """
        net_output = model(target_list=sample["target_list"], **sample["net_input"])
        stats: Dict[str, torch.Tensor] = {}
        counts: Dict[str, int] = {}
        loss = torch.zeros((), device=sample["net_input"]["source"].device)
        sample_size = 0
        for kind, is_masked, weight in (("m", True, self.pred_masked_weight), ("u", False, self.pred_nomask_weight)):
            logits_list = model.get_logits(net_output, is_masked)
            targets_list = model.get_targets(net_output, is_masked)
            if weight > 0 and not logits_list:
                raise ValueError(f"pred_{'masked' if is_masked else 'nomask'}_weight is {weight} but the "
                                 f"model returned no {'masked' if is_masked else 'unmasked'} logits")
            losses = []
            for i, (logits, targets) in enumerate(zip(logits_list, targets_list)):
                ce = F.cross_entropy(logits, targets, reduction="sum")
                losses.append(ce)
                stats[f"loss_{kind}_{i}"] = ce.detach()
                stats[f"correct_{kind}_{i}"] = count_correct(logits.detach(), targets)
                counts[f"count_{kind}_{i}"] = targets.numel()
            if weight > 0:
                loss = loss + weight * sum(losses)
                sample_size += targets_list[0].numel()

        if self.loss_weights is not None:
            extra_losses, names = model.get_extra_losses(net_output)
            if torch.is_tensor(extra_losses):
                extra_losses, names = [extra_losses], [names]
            weights = self.loss_weights * len(extra_losses) if len(self.loss_weights) == 1 else self.loss_weights
            if len(weights) != len(extra_losses):
                raise ValueError(f"loss_weights has {len(self.loss_weights)} entries but the model returns "
                                 f"{len(extra_losses)} extra losses ({names})")
            for value, name, coef in zip(extra_losses, names, weights):
                if coef != 0 and value is not None:
                    term = coef * value.float() * sample_size
                    loss = loss + term
                    stats[f"loss_{name}"] = term.detach()

        stats["loss"] = loss.detach()
        for key in self.log_keys:
            if key in net_output:
                stats[key] = torch.as_tensor(net_output[key]).detach().float().reshape(())
        logging_output = _to_floats(stats)
        logging_output.update(counts)
        logging_output.update(ntokens=sample_size, nsentences=sample["id"].numel(), sample_size=sample_size)
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict[str, float]]) -> None:
        """Log the stock ``hubert`` criterion's metrics (losses in bits per sample_size) plus ``accuracy``."""
        def total(key: str) -> float:
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size = total("sample_size")
        ntokens = total("ntokens")
        denominator = max(sample_size, 1)
        metrics.log_scalar("loss", total("loss") / denominator / math.log(2), sample_size, round=3)
        if sample_size != ntokens:
            metrics.log_scalar("nll_loss", total("loss") / max(ntokens, 1) / math.log(2), ntokens, round=3)
            metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        else:
            metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["loss"].avg))

        keys = list(logging_outputs[0].keys()) if logging_outputs else []
        for key in keys:
            if key.startswith("count_"):
                metrics.log_scalar(key, total(key))
            elif key.startswith("loss_"):
                metrics.log_scalar(key, total(key) / denominator / math.log(2), round=3)
            elif key.startswith("correct_"):
                metrics.log_scalar(key, total(key) / max(total(key.replace("correct_", "count_", 1)), 1))
        masked_count = sum(total(k) for k in keys if k.startswith("count_m_"))
        if masked_count > 0:
            masked_correct = sum(total(k) for k in keys if k.startswith("correct_m_"))
            metrics.log_scalar("accuracy", masked_correct / masked_count, masked_count, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        """Every logged value is a sum over frames or sentences."""
        return True


def _to_floats(stats: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Detached 0-dim tensors → Python floats with a single device-to-host transfer."""
    if not stats:
        return {}
    values = torch.stack([v.to(torch.float64) for v in stats.values()]).tolist()
    return dict(zip(stats.keys(), values))
