"""Session-wide fixtures: one tiny corpus and one stock-HuBERT checkpoint shared by all tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from k2ssl_fairseq.bench.common import hydra_train
from k2ssl_fairseq.bench.stock import stock_hubert_tiny_overrides
from k2ssl_fairseq.data.synthetic import make_tiny_corpus

# Fuzz tests: the same 300 inputs on every CI run; HYPOTHESIS_PROFILE=explore draws 3000 new ones.
settings.register_profile("ci", max_examples=300, derandomize=True)
settings.register_profile("explore", max_examples=3000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-utterance learnable corpus (train 12, valid 4) with km and letter labels."""
    return make_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def stock_hubert_run(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run directory of 4 updates of stock fairseq HuBERT (tiny) trained with the plugin loaded."""
    run_dir = tmp_path_factory.mktemp("stock_hubert")
    hydra_train(stock_hubert_tiny_overrides(tiny_corpus, max_update=4), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module: tiny models gain nothing from more, and on a loaded
    machine OpenMP threads waiting for each other made a step ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
