"""A clone alone runs the suite: the golden data lives in the repository, whole and unchanged, and a
test that opens a file beside the clone fails."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from clone_guard import BesideTheClone
from helpers import REPO, array_digest, golden_arrays, golden_dir

GOLDEN = REPO / "tests" / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
#: The largest file the repository keeps (the reference's one larger file is stored split).
MAX_FILE_BYTES = 2 * 1024 * 1024


def test_golden_data_is_read_from_the_repository(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("K2SSL_GOLDEN_DIR", raising=False)
    assert golden_dir() == GOLDEN
    monkeypatch.setenv("K2SSL_GOLDEN_DIR", "/elsewhere/golden")
    assert golden_dir() == Path("/elsewhere/golden")


def test_every_golden_file_is_listed_small_and_unchanged():
    data = {p.name for p in GOLDEN.iterdir() if p.suffix in (".npz", ".json") and p.name != "manifest.json"}
    assert data == set(MANIFEST["files"]), "tests/golden and its manifest.json list different files"
    for name, sha256 in MANIFEST["files"].items():
        content = (GOLDEN / name).read_bytes()
        assert len(content) <= MAX_FILE_BYTES, f"{name}: {len(content):,} bytes, over 2 MB"
        assert hashlib.sha256(content).hexdigest() == sha256, f"{name} differs from the file manifest.json lists"


@pytest.mark.parametrize("case", sorted(MANIFEST["array_digests"]))
def test_each_case_holds_the_original_arrays(case: str):
    """The digest of the original file's arrays: a split case merges back to exactly those numbers."""
    assert array_digest(golden_arrays(case, GOLDEN)) == MANIFEST["array_digests"][case]


def test_a_split_case_reads_like_the_whole_file(tmp_path: Path):
    arrays = {"param/a": np.arange(6, dtype=np.float32).reshape(2, 3), "out/b": np.ones(4, dtype=np.float64)}
    (tmp_path / "whole").mkdir()
    np.savez_compressed(tmp_path / "whole" / "case.npz", **arrays)
    (tmp_path / "split").mkdir()
    np.savez_compressed(tmp_path / "split" / "case.npz", **{"out/b": arrays["out/b"]})
    np.savez_compressed(tmp_path / "split" / "case.params.npz", **{"param/a": arrays["param/a"]})
    assert array_digest(golden_arrays("case", tmp_path / "whole")) == array_digest(arrays)
    assert array_digest(golden_arrays("case", tmp_path / "split")) == array_digest(arrays)
    np.savez_compressed(tmp_path / "split" / "case.again.npz", **{"out/b": arrays["out/b"]})
    with pytest.raises(ValueError, match=r"case.*'out/b' is already in another part"):
        golden_arrays("case", tmp_path / "split")
    with pytest.raises(FileNotFoundError, match="no golden file of case 'other'"):
        golden_arrays("other", tmp_path / "split")


def test_opening_a_file_beside_the_clone_is_caught(tmp_path: Path):
    """The guard every test runs under (conftest), on a clone laid out beside other folders."""
    workspace = tmp_path / "workspace"
    clone, shared, hidden = workspace / "clone", workspace / "shared", workspace / ".cache"
    for folder in (clone, shared, hidden):
        folder.mkdir(parents=True)
    for path in (clone / "inside.txt", hidden / "cached.bin"):
        path.write_text("data")
    np.savez_compressed(shared / "golden.npz", a=np.zeros(3))
    with BesideTheClone(clone).watching() as guard:
        (clone / "inside.txt").read_text()
        (hidden / "cached.bin").read_bytes()
        np.load(shared / "golden.npz")["a"]
        with pytest.raises(FileNotFoundError):
            open(workspace / "missing.json")
    assert guard.take() == [str(shared / "golden.npz"), str(workspace / "missing.json")]
    assert guard.take() == []
    with BesideTheClone(clone, exempt=[shared]).watching() as guard:
        np.load(shared / "golden.npz")["a"]
    assert guard.take() == []
