"""What fairseq's trainer logs for our models: a parameter table per block, or torch's tree on request."""
from __future__ import annotations

import pytest

from helpers import write_zipformer_checkpoint
from k2ssl_fairseq.models.summary import FULL_SUMMARY_ENV, full_description, model_summary, parameter_count


@pytest.fixture(scope="module")
def tiny_zipformer(tmp_path_factory: pytest.TempPathFactory):
    return write_zipformer_checkpoint(tmp_path_factory.mktemp("ckpt") / "zipformer.pt")


def test_summary_lists_blocks_and_repeated_members_with_counts(tiny_zipformer):
    text = repr(tiny_zipformer)
    lines = text.splitlines()
    total = parameter_count(tiny_zipformer)
    assert lines[0].startswith(f"ZipformerSslModel: {total:,} parameters ({total:,} trainable)")
    assert FULL_SUMMARY_ENV in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    # Top-level blocks and every encoder stack are rows whose counts are their own parameters.
    encoder_stacks = [name for name in rows if name.startswith("encoders.")]
    assert len(encoder_stacks) == len(tiny_zipformer.encoder.encoders)
    for name, module in tiny_zipformer.named_children():
        if parameter_count(module):
            assert rows[name][-1] == f"{parameter_count(module):,}"
    # The unindented rows (blocks and the model's own parameters such as mask_emb) add up to the total.
    top_level = [line.split()[-1] for line in lines[2:] if not line.startswith("    ")]
    assert sum(int(count.replace(",", "")) for count in top_level) == total
    assert len(lines) < 60 < len(full_description(tiny_zipformer).splitlines())


def test_full_tree_on_request(tiny_zipformer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(FULL_SUMMARY_ENV, "full")
    assert repr(tiny_zipformer) == full_description(tiny_zipformer)
    assert "Whiten(" in repr(tiny_zipformer)
    monkeypatch.delenv(FULL_SUMMARY_ENV)
    assert repr(tiny_zipformer) == model_summary(tiny_zipformer)
