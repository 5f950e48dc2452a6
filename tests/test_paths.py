"""Where ilgnet keeps things: the weights store in the user DATA folder (cleaners leave it alone),
rebuildable caches in the user cache folder, ``$ILGNET_HOME`` for both (a portable install),
``$ILGNET_DATA`` for datasets and runs; a 0.2 store in the cache folder is moved on first use."""

from __future__ import annotations

from pathlib import Path

import pytest

from ilgnet_cli.model import store
from ilgnet_cli.runtime import paths


@pytest.fixture
def user_dirs(tmp_path, monkeypatch):
    """No ILGNET_* variables; the platform's user folders under tmp_path (XDG on Linux)."""
    for name in ("ILGNET_HOME", "ILGNET_DATA", "ILGNET_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    paths._move_old_store.cache_clear()
    yield tmp_path
    paths._move_old_store.cache_clear()


def test_the_store_lives_in_the_data_folder_and_caches_in_the_cache_folder(user_dirs):
    assert paths.store_home() == user_dirs / "data" / "ilgnet" == store.home()
    assert store.weights_dir() == user_dirs / "data" / "ilgnet" / "weights"
    assert paths.cache_home() == user_dirs / "cache" / "ilgnet"
    assert paths.data_home() == user_dirs / "data" / "ilgnet"
    assert paths.default_ava() == paths.data_home() / "ava" and paths.runs_dir() == paths.data_home() / "runs"


def test_ilgnet_home_holds_everything_and_ilgnet_data_the_datasets(user_dirs, monkeypatch):
    monkeypatch.setenv("ILGNET_HOME", str(user_dirs / "portable"))
    monkeypatch.setenv("ILGNET_DATA", "~/datasets")
    assert paths.store_home() == paths.cache_home() == user_dirs / "portable"
    assert str(paths.data_home()).endswith("/datasets") and "~" not in str(paths.data_home())


@pytest.mark.parametrize(("value", "off"), [("1", True), ("true", True), (" YES ", True), ("on", True),
                                            ("0", False), ("", False), ("no", False)])
def test_offline(monkeypatch, value, off):
    monkeypatch.setenv("ILGNET_OFFLINE", value)
    assert paths.offline() is off


def test_a_store_left_in_the_cache_folder_by_0_2_is_moved_on_first_use(user_dirs):
    old = user_dirs / "cache" / "ilgnet" / "weights"
    old.mkdir(parents=True)
    (old / "mine.safetensors").write_bytes(b"weights")
    (old / "mine.json").write_text("{}")
    home = paths.store_home()
    assert sorted(p.name for p in (home / "weights").iterdir()) == ["mine.json", "mine.safetensors"]
    assert not old.exists()


def test_an_old_store_is_never_moved_over_a_new_one(user_dirs):
    old = user_dirs / "cache" / "ilgnet" / "weights"
    old.mkdir(parents=True)
    (old / "old.safetensors").write_bytes(b"old")
    new = user_dirs / "data" / "ilgnet" / "weights"
    new.mkdir(parents=True)
    (new / "new.safetensors").write_bytes(b"new")
    paths.store_home()
    assert (old / "old.safetensors").exists() and sorted(p.name for p in new.iterdir()) == ["new.safetensors"]


def test_missing_ava_hint_names_the_command(user_dirs):
    assert paths.missing_ava_hint(paths.default_ava()) == "run 'ilgnet download ava' (about 32 GB) or give --ava DIR"
    assert "--dest /elsewhere" in paths.missing_ava_hint(Path("/elsewhere"))
