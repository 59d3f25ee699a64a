"""k2ssl_masked_prediction: stock hubert criterion's loss, correct accuracy, summable logs."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from fairseq.criterions.hubert_criterion import HubertCriterion
from fairseq.logging import metrics

import k2ssl_fairseq  # noqa: F401
from helpers import golden_dir
from k2ssl_fairseq.conversion.icefall import model_config_from_hparams
from k2ssl_fairseq.criterions.masked_prediction import MaskedPredictionCriterion, count_correct
from k2ssl_fairseq.data.frames import conv_frames
from k2ssl_fairseq.models.zipformer_ssl import ZipformerSslModel

GOLDEN_JSON = golden_dir() / "zipformer_ssl_tiny_case1.json"
TASK = SimpleNamespace()


@pytest.fixture(scope="module")
def model_and_sample():
    torch.manual_seed(0)
    hparams = json.loads(GOLDEN_JSON.read_text())["config"]
    model = ZipformerSslModel(model_config_from_hparams(hparams), [24]).eval()
    source = torch.randn(3, 16000)
    frames = conv_frames(16000)
    mask = torch.zeros(3, frames, dtype=torch.bool)
    mask[:, 5:25] = True
    sample = {"id": torch.arange(3),
              "net_input": {"source": source, "padding_mask": torch.zeros_like(source, dtype=torch.bool),
                            "mask_indices": mask},
              "target_list": [torch.randint(4, 24, (3, frames))]}
    return model, sample


def make(cls, **overrides):
    settings = dict(pred_masked_weight=1.0, pred_nomask_weight=0.0, loss_weights=[10.0], log_keys=[])
    settings.update(overrides)
    return cls(TASK, **settings)


@pytest.mark.parametrize("nomask_weight", [0.0, 0.5])
def test_same_loss_as_stock_hubert_criterion(model_and_sample, nomask_weight):
    model, sample = model_and_sample
    with torch.no_grad():
        ours, ours_size, ours_log = make(MaskedPredictionCriterion, pred_nomask_weight=nomask_weight)(model, sample)
        stock, stock_size, stock_log = make(HubertCriterion, pred_nomask_weight=nomask_weight)(model, sample)
    assert ours_size == stock_size == (60 if nomask_weight == 0 else 3 * conv_frames(16000))
    assert math.isclose(float(ours), float(stock), rel_tol=1e-6)
    for key in ("loss", "loss_m_0", "loss_u_0", "loss_features_pen", "count_m_0", "count_u_0", "nsentences"):
        assert math.isclose(ours_log[key], stock_log[key], rel_tol=1e-6), key


def test_accuracy_counts_real_classes(model_and_sample):
    model, sample = model_and_sample
    with torch.no_grad():
        net_output = model(target_list=sample["target_list"], **sample["net_input"])
        _, _, log = make(MaskedPredictionCriterion)(model, sample)
    logits, targets = net_output["logit_m_list"][0], net_output["target_m_list"][0]
    assert log["correct_m_0"] == int((logits.argmax(-1) == targets).sum())
    assert log["count_m_0"] == targets.numel()


def test_accuracy_rule_also_right_for_positive_in_column_zero():
    """HuBERT cosine logits (positive first, targets zeros): the same count as the stock rule."""
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0], [5.0, -1.0, 0.0]])
    targets = torch.zeros(4, dtype=torch.long)
    assert int(count_correct(logits, targets)) == 2  # rows 0 and 3; the constant row 2 is not counted
    assert int(count_correct(torch.tensor([[0.0, 3.0], [4.0, 1.0]]), torch.tensor([1, 1]))) == 1
    assert int(count_correct(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))) == 0


def test_logging_outputs_are_summable_and_reduced_like_stock(model_and_sample):
    model, sample = model_and_sample
    criterion = make(MaskedPredictionCriterion)
    with torch.no_grad():
        _, _, first = criterion(model, sample)
        _, _, second = criterion(model, sample)
    assert MaskedPredictionCriterion.logging_outputs_can_be_summed()
    assert all(isinstance(v, (int, float)) for v in first.values())
    summed = {k: first[k] + second[k] for k in first}
    with metrics.aggregate() as agg:
        MaskedPredictionCriterion.reduce_metrics([summed])
    with metrics.aggregate() as agg_separate:
        MaskedPredictionCriterion.reduce_metrics([first, second])
    values = agg.get_smoothed_values()
    for key in ("loss", "loss_m_0", "loss_u_0", "loss_features_pen", "correct_m_0", "count_m_0", "accuracy", "ppl"):
        assert key in values, key
        assert math.isclose(values[key], agg_separate.get_smoothed_values()[key], rel_tol=1e-6), key
    assert math.isclose(values["loss"], first["loss"] / first["sample_size"] / math.log(2), rel_tol=1e-3)
    assert values["accuracy"] == pytest.approx(first["correct_m_0"] / first["count_m_0"], abs=1e-4)


def test_mismatched_loss_weights_are_refused(model_and_sample):
    model, sample = model_and_sample
    with pytest.raises(ValueError, match="loss_weights has 2 entries"):
        make(MaskedPredictionCriterion, loss_weights=[10.0, 1.0])(model, sample)
