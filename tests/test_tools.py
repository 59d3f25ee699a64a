"""The command-line tools: every entry point answers ``--help`` without importing torch or fairseq,
tools run without other libraries' chatter, and the package registers itself only once fairseq loads."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from k2ssl_fairseq import presets
from k2ssl_fairseq.tools import migrate_checkpoint

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = dict(re.findall(r'"(k2ssl-[\w-]+)=([\w.]+:\w+)"', (REPO / "setup.py").read_text()))

_HELP_PROBE = """
import sys
module, function = {target!r}.split(":")
sys.argv = [{name!r}, "--help"]
import importlib
try:
    getattr(importlib.import_module(module), function)()
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
print("HEAVY", sorted(m for m in ("torch", "fairseq") if m in sys.modules))
"""


def test_every_script_is_an_entry_point():
    wrapped = {path.stem for path in (REPO / "scripts").glob("*.py")} - {"demo", "benchmark"}
    targets = {target.split(":")[0].rsplit(".", 1)[1] for target in ENTRY_POINTS.values()}
    assert wrapped <= targets, wrapped - targets
    assert {"k2ssl-hydra-train", "k2ssl-benchmark", "k2ssl-info", "k2ssl-make-labels", "k2ssl-migrate",
            "k2ssl-import-icefall", "k2ssl-export-icefall", "k2ssl-decode", "k2ssl-make-demo-corpus"} <= set(ENTRY_POINTS)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_help_imports_neither_torch_nor_fairseq(name: str):
    proc = subprocess.run([sys.executable, "-c", _HELP_PROBE.format(target=ENTRY_POINTS[name], name=name)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_import_registers_nothing_until_fairseq_loads():
    probe = ("import sys, k2ssl_fairseq\n"
             "from k2ssl_fairseq import registration\n"
             "print(registration.is_registered(), 'torch' in sys.modules, 'fairseq' in sys.modules)\n"
             "from fairseq.optim import OPTIMIZER_REGISTRY\n"
             "print(registration.is_registered(), 'scaled_adam' in OPTIMIZER_REGISTRY)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False", "True", "True"]


def test_migrate_choices_are_the_converters_names():
    conversion = importlib.import_module("k2ssl_fairseq.conversion.hubert")
    hubert_ctc = importlib.import_module("k2ssl_fairseq.conversion.hubert_ctc")
    assert set(migrate_checkpoint.MODELS) == {conversion.PLUGIN_MODEL, conversion.STOCK_MODEL,
                                              hubert_ctc.PLUGIN_CTC_MODEL}


def test_info_names_the_user_dir_and_every_preset():
    user_dir = subprocess.run([sys.executable, "-m", "k2ssl_fairseq.tools.info", "--user-dir"], capture_output=True,
                              text=True, check=True).stdout.strip()
    assert Path(user_dir) == REPO / "k2ssl_fairseq"
    listed = subprocess.run([sys.executable, "-m", "k2ssl_fairseq.tools.info", "--presets"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    expected = [f"{kind}/{name}" for kind in presets.KINDS for name in presets.names(kind)]
    assert [line.split()[0] for line in listed] == expected and "pretrain/zipformer_base" in expected
    assert all(Path(line.split()[1]).is_file() for line in listed)


@pytest.mark.e2e
def test_tools_print_no_debug_lines_or_library_warnings(tiny_corpus: Path, tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "k2ssl_fairseq.tools.make_labels", "--data", str(tiny_corpus),
                           "--out", str(tmp_path / "labels"), "--n-clusters", "4", "--max-points", "2000"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert (tmp_path / "labels" / "train.km").is_file()
    assert "DEBUG" not in output and "FutureWarning" not in output and "tensorboardX" not in output


_SCRIPT_HELP_PROBE = """
import os, runpy, sys
sys.path.insert(0, os.path.dirname({path!r}))
sys.argv = [{path!r}, "--help"]
try:
    runpy.run_path({path!r}, run_name="__main__")
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
print("HEAVY", sorted(m for m in ("torch", "fairseq") if m in sys.modules))
"""


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "benchmarks").glob("*.py")))
def test_benchmark_scripts_help_imports_neither_torch_nor_fairseq(script: str):
    path = str(REPO / "benchmarks" / script)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT_HELP_PROBE.format(path=path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "HEAVY []"
