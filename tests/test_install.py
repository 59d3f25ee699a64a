"""The wheel a user installs: only the ``k2ssl_fairseq`` package (presets inside), every tool as an
entry point, usable from any directory in a fresh environment."""
from __future__ import annotations

import os
import re
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from k2ssl_fairseq import __version__
from k2ssl_fairseq.data.synthetic import make_tiny_corpus

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
TINY_BUDGET = ["optimization.max_update=2", "common.cpu=true", "common.tensorboard_logdir=null",
               "distributed_training.distributed_world_size=1", "dataset.num_workers=0"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, text=True, timeout=600)
    (built,) = out.glob("k2ssl_fairseq-*.whl")
    return built


def test_wheel_holds_only_the_package_with_its_presets(wheel: Path):
    assert wheel.name.startswith(f"k2ssl_fairseq-{__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"k2ssl_fairseq", f"k2ssl_fairseq-{__version__}.dist-info"}, top_level
    presets_in_tree = {str(path.relative_to(REPO / "k2ssl_fairseq").as_posix())
                       for path in (REPO / "k2ssl_fairseq" / "config").rglob("*.yaml")}
    assert {"config/pretrain/zipformer_base.yaml", "config/pretrain/frontend/fbank.yaml"} <= presets_in_tree
    missing = {p for p in presets_in_tree if f"k2ssl_fairseq/{p}" not in names}
    assert not missing, f"presets left out of the wheel: {sorted(missing)}"
    entry_points = zipfile.ZipFile(wheel).read(f"k2ssl_fairseq-{__version__}.dist-info/entry_points.txt").decode()
    setup_entry_points = set(re.findall(r'"(k2ssl-[\w-]+)=', (REPO / "setup.py").read_text()))
    assert setup_entry_points == set(re.findall(r"^(k2ssl-[\w-]+) =", entry_points, re.M))


def test_installed_wheel_works_outside_the_repository(wheel: Path, tmp_path: Path):
    """A fresh environment whose only k2ssl_fairseq is the wheel; torch, fairseq and the rest come from
    the project's environment through a path file (they are not what is tested)."""
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    site_dir = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    (site_dir / "project_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"

    def run(*command: str) -> str:
        proc = subprocess.run(list(command), cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}\n{(proc.stdout + proc.stderr)[-4000:]}"
        return proc.stdout

    user_dir = Path(run("k2ssl-info", "--user-dir").strip())
    assert user_dir == site_dir / "k2ssl_fairseq" and (user_dir / "config" / "pretrain").is_dir()
    assert "pretrain/zipformer_tiny" in run("k2ssl-info", "--presets")
    assert "usage:" in run("k2ssl-make-labels", "--help")
    corpus = make_tiny_corpus(tmp_path / "corpus")
    run("k2ssl-hydra-train", "--config-name", "pretrain/zipformer_tiny", f"task.data={corpus}",
        f"task.label_dir={corpus}", f"hydra.run.dir={tmp_path / 'run'}", *TINY_BUDGET)
    assert (tmp_path / "run" / "checkpoints" / "checkpoint_last.pt").is_file()
    imported = run("python", "-c", "import k2ssl_fairseq.models.zipformer_ssl as m; print(m.__file__)").strip()
    assert Path(imported).is_relative_to(site_dir), imported
