"""The record store is kept by version, so an A/B session can build with a baseline's records after the
checkout's store has changed."""

import shutil
from pathlib import Path

import pytest

from pipeline.paths import RECORDS_DIR
from pipeline.records.snapshots import find_snapshot, keep_snapshot
from pipeline.records.store import load_store


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A copy of the repository's records, plus a file that is not a record."""
    copy = shutil.copytree(RECORDS_DIR, tmp_path / "records")
    (copy / "notes.json").write_text("not a record")
    return copy


def test_a_kept_store_holds_the_same_records_under_its_version(store_dir: Path, tmp_path: Path) -> None:
    store = load_store(store_dir)
    kept = keep_snapshot(store, tmp_path / "kept")
    assert kept == tmp_path / "kept" / store.version
    copy = load_store(kept)
    assert copy.version == store.version and not copy.problems
    assert len(copy.records) == len(store.records) > 0
    assert not (kept / "notes.json").exists()


def test_a_store_is_copied_once_per_version(store_dir: Path, tmp_path: Path) -> None:
    store = load_store(store_dir)
    kept = keep_snapshot(store, tmp_path / "kept")
    shutil.rmtree(store_dir)  # a second keep must not read the store again
    assert keep_snapshot(store, tmp_path / "kept") == kept
    assert find_snapshot(store.version, tmp_path / "kept") == kept


def test_a_changed_store_is_kept_beside_the_old_one(store_dir: Path, tmp_path: Path) -> None:
    before = load_store(store_dir)
    keep_snapshot(before, tmp_path / "kept")
    next(store_dir.rglob("conv2d-*.json")).unlink()
    after = load_store(store_dir)
    assert after.version != before.version
    keep_snapshot(after, tmp_path / "kept")
    assert len(load_store(tmp_path / "kept" / before.version).records) == len(after.records) + 1


def test_a_version_never_kept_is_not_found(tmp_path: Path) -> None:
    assert find_snapshot("0123456789ab", tmp_path) is None
    assert find_snapshot("", tmp_path) is None
