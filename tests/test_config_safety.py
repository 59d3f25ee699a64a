"""Config strings in files are data: code meant for fairseq's ``eval`` and OmegaConf interpolations are
refused on every loading path, and trusting one file never changes how another loads."""
from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import k2ssl_fairseq  # noqa: F401  (registers the plugin and routes fairseq's loads)
from helpers import run_script_in_process, stock_hubert_ctc_checkpoint
from k2ssl_fairseq import checkpoints
from k2ssl_fairseq.bench.common import hydra_train
from k2ssl_fairseq.bench.stock import TINY_CONV, stock_hubert_tiny_overrides
from k2ssl_fairseq.checkpoints import UntrustedCheckpointError
from k2ssl_fairseq.conversion import hubert_ctc
from k2ssl_fairseq.safe_literals import UnsafeLiteralError, parse_literal, unsafe_values

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"

#: Every CNN layout string of fairseq's HuBERT and wav2vec2 presets and defaults, and the tests' own.
STOCK_LAYOUTS = [
    "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] + [(512,2,2)]",
    "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2",
    "[(512,10,5)] + [(512,3,2)]*4 + [(512,2,2)]*2",
    "[(512, 10, 5)] + [(512, 8, 4)] + [(512, 4, 2)] * 3 + [(512, 1, 1)]",
    "[(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2), (512, 1, 1), (512, 1, 1)]",
    "[(512, 2, 1)] * 9",
    TINY_CONV.strip("'"),
]


def payload(marker: Path, value: str = "[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2") -> str:
    """A config string that creates ``marker`` when ``eval``-ed, and is otherwise a valid layout."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch() or {value}"


def rewrite(source: Path, out: Path, edit: Callable[[dict], Any]) -> Path:
    """A copy of a checkpoint file with its raw state edited (read here with the restricted loader)."""
    state = torch.load(source, weights_only=True)
    edit(state)
    torch.save(state, out)
    return out


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    return tmp_path / "EXECUTED"


@pytest.fixture()
def poisoned_pretraining(stock_hubert_run: Path, tmp_path: Path, marker: Path) -> Path:
    """The stock HuBERT pre-training checkpoint with code in ``cfg.model.conv_feature_layers``."""
    def edit(state):
        state["cfg"]["model"]["conv_feature_layers"] = payload(marker)
    return rewrite(stock_hubert_run / "ckpt" / "checkpoint_last.pt", tmp_path / "poisoned.pt", edit)


@pytest.fixture(scope="module")
def fine_tuned(stock_hubert_run: Path, tiny_corpus: Path, tmp_path_factory) -> dict:
    """A stock ``hubert_ctc`` checkpoint and its conversion to a self-contained ``k2ssl_ctc`` one."""
    root = tmp_path_factory.mktemp("fine_tuned")
    pretrained = stock_hubert_run / "ckpt" / "checkpoint_last.pt"
    stock = stock_hubert_ctc_checkpoint(pretrained, tiny_corpus, root / "hubert_ctc.pt")
    plugin = root / "k2ssl_ctc.pt"
    hubert_ctc.migrate_hubert_ctc(stock, plugin, pretrained)
    return {"pretrained": pretrained, "hubert_ctc": stock, "k2ssl_ctc": plugin}


def assert_refused(proc: subprocess.CompletedProcess, key: str, marker: Path) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "UntrustedCheckpointError" in output or "refused" in output, output[-3000:]
    assert key in output, output[-3000:]
    assert not marker.exists()


# -- the restricted literal parser ------------------------------------------------------------------

@pytest.mark.parametrize("layout", STOCK_LAYOUTS)
def test_every_stock_layout_parses_to_what_eval_gives(layout):
    assert parse_literal(layout) == eval(layout)  # the test's own constant strings


@pytest.mark.parametrize("text", [
    "(0.9, 0.98)", "[0.0005]", "{'name': 'scaled_dot_product', 'dropout': 0.1}", "-1e-3", "True", "None",
    "('lm.bin', 'lexicon.txt', 2, -1.0)", "'a' * 3 + 'b'", "(1,) * 2 + (3,)",
])
def test_plain_literals_are_accepted(text):
    assert parse_literal(text) == eval(text)


@pytest.mark.parametrize("text, reason", [
    ("__import__('os').system('true')", "Call"),
    ("os.system", "Attribute"),
    ("[x for x in range(3)]", "ListComp"),
    ("lambda: 0", "Lambda"),
    ("open", "Name"),
    ("(1).__class__", "Attribute"),
    ("[(512,10,5)] * 10**9", "BinOp"),
    ("[(512,10,5)] * 1000000", "limit"),
    ("'x' * 10000000", "limit"),
    ("[1] + (2,)", "cannot add"),
    ("{**{}}", "unpacking"),
    ("1 if True else 2", "IfExp"),
    ("[(512,10,5)", "not a Python literal"),
])
def test_anything_else_is_refused_with_the_reason(text, reason):
    with pytest.raises(UnsafeLiteralError, match=reason):
        parse_literal(text)


def test_unsafe_values_finds_evaluated_keys_and_interpolations_anywhere():
    from argparse import Namespace

    config = {"model": {"conv_feature_layers": "[(1,2,3)]", "w2v_args": {"model": {"conv_feature_layers": "f()"}}},
              "task": {"data": "${oc.env:HOME}", "fp16": "${common.fp16}", "labels": ["a_${..x}", "${${a}}"]},
              "optimizer": {"adam_betas": "(0.9, 0.98)"},
              "common": {"log_format": "json(x)"}, "other": {"pretrained": "/models/base.pt"}}
    found = {key: reason for key, _, reason in unsafe_values(config)}
    assert set(found) == {"model.w2v_args.model.conv_feature_layers", "task.data", "task.labels[1]"}
    assert "Call" in found["model.w2v_args.model.conv_feature_layers"] and "interpolation" in found["task.data"]
    assert [k for k, _, _ in unsafe_values(Namespace(conv_feature_layers="g()"), "args")] == ["args.conv_feature_layers"]


# -- every loading path ----------------------------------------------------------------------------

@pytest.mark.e2e
def test_load_model_ensemble_and_task_refuses_code_in_the_config(poisoned_pretraining, marker):
    from fairseq import checkpoint_utils

    with pytest.raises(UntrustedCheckpointError, match="cfg.model.conv_feature_layers") as err:
        checkpoint_utils.load_model_ensemble_and_task([str(poisoned_pretraining)])
    assert str(poisoned_pretraining) in str(err.value) and "__import__" in str(err.value)
    assert not marker.exists()


@pytest.mark.e2e
def test_trusting_the_file_does_not_let_its_config_run(poisoned_pretraining, marker):
    with pytest.raises(UntrustedCheckpointError, match="cfg.model.conv_feature_layers"):
        checkpoints.load_checkpoint(poisoned_pretraining, trusted=True)
    assert not marker.exists()


@pytest.mark.e2e
def test_resume_refuses_code_in_the_config(poisoned_pretraining, marker, tiny_corpus, tmp_path):
    run = tmp_path / "resume"
    (run / "ckpt").mkdir(parents=True)
    poisoned_pretraining.rename(run / "ckpt" / "checkpoint_last.pt")
    proc = hydra_train(stock_hubert_tiny_overrides(tiny_corpus, max_update=6), run, check=False)
    assert_refused(proc, "cfg.model.conv_feature_layers", marker)


@pytest.mark.e2e
def test_migration_refuses_code_in_the_config(poisoned_pretraining, marker, tmp_path):
    out = tmp_path / "migrated.pt"
    proc = run_script_in_process(SCRIPTS / "migrate_checkpoint.py", poisoned_pretraining, out, "--to", "k2ssl_hubert", "--verify")
    assert_refused(proc, "cfg.model.conv_feature_layers", marker)
    assert not out.exists()


@pytest.mark.e2e
def test_labels_from_checkpoint_features_refuse_code_in_the_config(poisoned_pretraining, marker, tiny_corpus, tmp_path):
    proc = run_script_in_process(SCRIPTS / "make_labels.py", "--data", tiny_corpus, "--out", tmp_path / "labels",
                      "--n-clusters", "4", "--feature", "checkpoint", "--checkpoint", poisoned_pretraining,
                      "--layer", "1", "--splits", "valid", "--train-split", "valid")
    assert_refused(proc, "cfg.model.conv_feature_layers", marker)


@pytest.mark.e2e
def test_fine_tuning_from_pretrained_path_refuses_code_in_the_config(poisoned_pretraining, marker, tiny_corpus,
                                                                    tmp_path):
    proc = hydra_train([f"task.data={tiny_corpus}", f"task.label_dir={tiny_corpus}",
                                f"model.pretrained_path={poisoned_pretraining}", "optimization.max_update=2"],
                               tmp_path / "ft", config_dir=REPO / "config" / "finetune", config_name="hubert_tiny",
                               check=False)
    assert_refused(proc, "cfg.model.conv_feature_layers", marker)


@pytest.mark.e2e
def test_decoding_refuses_code_in_the_encoder_record(fine_tuned, marker, tiny_corpus, tmp_path):
    def edit(state):
        state["cfg"]["model"]["encoder"]["model"]["conv_feature_layers"] = payload(marker)
    poisoned = rewrite(fine_tuned["k2ssl_ctc"], tmp_path / "ctc.pt", edit)
    proc = run_script_in_process(SCRIPTS / "decode_ctc.py", "--checkpoint", poisoned, "--data", tiny_corpus, "--subset", "valid",
                      "--results-dir", tmp_path / "decode", "--device", "cpu")
    assert_refused(proc, "cfg.model.encoder.model.conv_feature_layers", marker)


@pytest.mark.e2e
def test_hubert_ctc_conversion_refuses_code_in_w2v_args(fine_tuned, marker, tmp_path):
    pretrained_cfg = torch.load(fine_tuned["pretrained"], weights_only=True)["cfg"]
    pretrained_cfg["model"]["conv_feature_layers"] = payload(marker)

    def edit(state):
        state["cfg"]["model"]["w2v_args"] = pretrained_cfg
    poisoned = rewrite(fine_tuned["hubert_ctc"], tmp_path / "hubert_ctc.pt", edit)
    out = tmp_path / "converted.pt"
    proc = run_script_in_process(SCRIPTS / "migrate_checkpoint.py", poisoned, out, "--to", "k2ssl_ctc", "--verify")
    assert_refused(proc, "cfg.model.w2v_args.model.conv_feature_layers", marker)
    assert not out.exists()


@pytest.mark.e2e
def test_interpolations_are_never_resolved_from_this_machine(stock_hubert_run, tmp_path, monkeypatch):
    monkeypatch.setenv("K2SSL_TEST_SECRET", "s3cr3t")

    def edit(state):
        state["cfg"]["task"]["label_dir"] = "${oc.env:K2SSL_TEST_SECRET}"
    poisoned = rewrite(stock_hubert_run / "ckpt" / "checkpoint_last.pt", tmp_path / "interp.pt", edit)
    with pytest.raises(UntrustedCheckpointError, match="cfg.task.label_dir") as err:
        checkpoints.load_checkpoint(poisoned)
    assert "s3cr3t" not in str(err.value)
    out = tmp_path / "migrated.pt"
    proc = run_script_in_process(SCRIPTS / "migrate_checkpoint.py", poisoned, out, "--to", "k2ssl_hubert")
    assert proc.returncode != 0 and "cfg.task.label_dir" in proc.stderr and not out.exists()


@pytest.mark.e2e
def test_valid_stock_checkpoints_still_load(stock_hubert_run):
    state = checkpoints.load_checkpoint(stock_hubert_run / "ckpt" / "checkpoint_last.pt")
    assert parse_literal(state["cfg"]["model"]["conv_feature_layers"]) == eval(TINY_CONV.strip("'"))


def test_a_command_line_layout_with_code_is_refused_by_k2ssl_hubert(marker):
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    from k2ssl_fairseq.models.k2ssl_hubert import K2sslHubertConfig, K2sslHubertModel

    with pytest.raises(ValueError, match="conv_feature_layers.*refused"):
        K2sslHubertModel(K2sslHubertConfig(conv_feature_layers=payload(marker)), HubertPretrainingConfig(), [None])
    assert not marker.exists()


# -- trust stays with one file, one call, one thread ------------------------------------------------

_inside_trusted_load = threading.Event()
_other_load_done = threading.Event()


def _pause_inside_unpickling(value: int) -> int:
    """Called while a trusted file is being unpickled: holds that load open until the other thread loaded."""
    _inside_trusted_load.set()
    assert _other_load_done.wait(60)
    return value


class _Pauses:
    def __reduce__(self):
        return (_pause_inside_unpickling, (7,))


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.e2e
def test_trust_of_one_file_in_one_thread_changes_no_other_load(stock_hubert_run, tmp_path, marker):
    clean = stock_hubert_run / "ckpt" / "checkpoint_last.pt"
    trusted = rewrite(clean, tmp_path / "trusted.pt", lambda s: s["extra_state"].update(payload=_Pauses()))
    untrusted = rewrite(clean, tmp_path / "untrusted.pt", lambda s: s["extra_state"].update(payload=_RunsCode(marker)))
    _inside_trusted_load.clear()
    _other_load_done.clear()
    result = {}
    loader = threading.Thread(target=lambda: result.update(state=checkpoints.load_checkpoint(trusted, trusted=True)))
    loader.start()
    try:
        assert _inside_trusted_load.wait(60)
        # The trusted load is in progress in the other thread: neither another file nor the same file
        # loaded here may be fully unpickled.
        with pytest.raises(UntrustedCheckpointError, match="pathlib"):
            checkpoints.load_checkpoint(untrusted)
        with pytest.raises(UntrustedCheckpointError):
            checkpoints.load_torch_file(trusted)
    finally:
        _other_load_done.set()
        loader.join(60)
    assert result["state"]["extra_state"]["payload"] == 7
    assert not marker.exists()
