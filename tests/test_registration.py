"""Importing the plugin registers every component under names that never shadow stock fairseq ones."""
from __future__ import annotations

import subprocess
import sys

import pytest

from k2ssl_fairseq.bench.common import PLUGIN_DIR

pytestmark = pytest.mark.e2e

PLUGIN_NAMES = {
    "model": ["zipformer_ssl", "k2ssl_hubert", "k2ssl_ctc"],
    "task": ["k2ssl_pretraining", "k2ssl_finetuning"],
    "criterion": ["k2ssl_masked_prediction"],
    "optimizer": ["scaled_adam"],
    "lr_scheduler": ["eden"],
}
STOCK_NAMES = {"model": ["hubert", "hubert_ctc", "wav2vec2"], "task": ["hubert_pretraining", "audio_finetuning"],
               "criterion": ["hubert", "ctc"], "optimizer": ["adam"], "lr_scheduler": ["polynomial_decay", "tri_stage"]}

_PROBE = """
import sys
{importer}
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.models import MODEL_REGISTRY
from fairseq.optim import OPTIMIZER_REGISTRY
from fairseq.optim.lr_scheduler import LR_SCHEDULER_REGISTRY
from fairseq.tasks import TASK_REGISTRY
registries = dict(model=MODEL_REGISTRY, task=TASK_REGISTRY, criterion=CRITERION_REGISTRY,
                  optimizer=OPTIMIZER_REGISTRY, lr_scheduler=LR_SCHEDULER_REGISTRY)
for kind, reg in registries.items():
    for name, cls in sorted(reg.items()):
        print(kind, name, cls.__module__)
"""


def _registered(importer: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(importer=importer)], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    table = {}
    for line in out.splitlines():
        kind, name, module = line.split()
        table[(kind, name)] = module
    return table


def _check(table: dict) -> None:
    for kind, names in PLUGIN_NAMES.items():
        for name in names:
            assert table.get((kind, name), "").startswith("k2ssl_fairseq."), (kind, name, table.get((kind, name)))
    for kind, names in STOCK_NAMES.items():
        for name in names:
            assert table[(kind, name)].startswith("fairseq."), (kind, name, table[(kind, name)])
    plugin_entries = {key for key, module in table.items() if module.startswith("k2ssl_fairseq.")}
    assert plugin_entries == {(kind, n) for kind, names in PLUGIN_NAMES.items() for n in names}


def test_import_registers_everything():
    _check(_registered("import k2ssl_fairseq"))


def test_user_dir_import_registers_everything():
    _check(_registered(f"from argparse import Namespace\nfrom fairseq import utils\n"
                       f"utils.import_user_module(Namespace(user_dir={str(PLUGIN_DIR)!r}))"))


@pytest.mark.parametrize("importer", [
    "from k2ssl_fairseq.models.zipformer_ssl import ZipformerSslModel",  # a plugin module pulls fairseq in
    "import k2ssl_fairseq.checkpoints",
    "import fairseq\nimport k2ssl_fairseq",  # fairseq first: registered at once
])
def test_any_import_order_registers_everything(importer: str):
    _check(_registered(importer))
