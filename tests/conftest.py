"""Session-wide fixtures: one tiny corpus and one stock-HuBERT checkpoint shared by all tests; every
test fails if it opens a file beside the clone (``clone_guard``)."""
from __future__ import annotations

import os
import site
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from clone_guard import BesideTheClone
from k2ssl_fairseq.bench.common import hydra_train
from k2ssl_fairseq.bench.stock import stock_hubert_tiny_overrides
from k2ssl_fairseq.data.synthetic import make_tiny_corpus

# Fuzz tests: the same 300 inputs on every CI run; HYPOTHESIS_PROFILE=explore draws 3000 new ones.
settings.register_profile("ci", max_examples=300, derandomize=True)
settings.register_profile("explore", max_examples=3000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
#: What the suite may open beside the clone: temporary files, the Python installation, and the golden
#: data's location when a developer points ``K2SSL_GOLDEN_DIR`` at it on purpose.
OUTSIDE_READS = BesideTheClone(REPO, exempt=[
    Path(tempfile.gettempdir()), Path(sys.prefix), Path(sys.base_prefix), *map(Path, site.getsitepackages()),
    *([Path(os.environ["K2SSL_GOLDEN_DIR"])] if "K2SSL_GOLDEN_DIR" in os.environ else [])])


def pytest_configure(config: pytest.Config) -> None:
    if config.option.basetemp:
        OUTSIDE_READS.exempt.append(os.path.abspath(config.option.basetemp))
    OUTSIDE_READS.start()  # for the whole session, collection included


@pytest.fixture(autouse=True)
def reads_stay_in_the_clone():
    """Fail a test that opened a file beside the clone (seen during it, its fixtures or collection)."""
    yield
    beside = OUTSIDE_READS.take()
    if beside:
        pytest.fail(f"opened {len(beside)} file(s) beside the clone, which a user's clone does not have "
                    f"(keep test data in the repository): {beside[:5]}", pytrace=False)


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
