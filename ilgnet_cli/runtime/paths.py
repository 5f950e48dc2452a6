"""Where ilgnet keeps things.

* The weights store (``weights/``: downloaded and imported weights, your trained ones and your
  tastes, plus the store's settings): ``$ILGNET_HOME`` when set, else the platform's user *data*
  folder (e.g. ``~/.local/share/ilgnet``), where cleaners leave things alone.
* Caches that can be rebuilt (the score cache, fidelity verdicts, compiled graphs, downloads in
  flight): ``$ILGNET_HOME`` when set (one folder for everything, e.g. a portable install), else
  the platform's user *cache* folder (e.g. ``~/.cache/ilgnet``).
* Datasets, training runs and the ledger of ratings ilgnet wrote: ``$ILGNET_DATA``, else the user
  data folder.

Stores made by ilgnet 0.2 lived in the cache folder; they are moved on first use.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import platformdirs

AVA_SIZE_HINT = "about 32 GB"


def _env(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def _user_data() -> Path:
    return Path(platformdirs.user_data_dir("ilgnet", appauthor=False))


def _user_cache() -> Path:
    return Path(platformdirs.user_cache_dir("ilgnet"))


def store_home() -> Path:
    """The folder that holds ``weights/`` (and the store's settings)."""
    home = _env("ILGNET_HOME")
    if home is not None:
        return home
    _move_old_store(_user_cache(), _user_data())
    return _user_data()


def cache_home() -> Path:
    """The folder for caches: the score cache, verdicts, compiled graphs, downloads in flight."""
    return _env("ILGNET_HOME") or _user_cache()


def data_home() -> Path:
    return _env("ILGNET_DATA") or _user_data()


def default_ava() -> Path:
    return data_home() / "ava"


def runs_dir() -> Path:
    return data_home() / "runs"


def offline() -> bool:
    return os.environ.get("ILGNET_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def _move_old_store(old_home: Path, new_home: Path) -> None:
    """ilgnet 0.2 kept weights in the cache folder: move them where cleaners leave them alone.
    Only when the new store has no weights yet; any failure leaves the old store where it was."""
    old, new = old_home / "weights", new_home / "weights"
    try:
        if not old.is_dir() or old.is_symlink() or new.exists():
            return
        new_home.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(old, new)
        except OSError:  # another file system: copy, then remove the old one
            shutil.copytree(old, new, symlinks=True)
            shutil.rmtree(old)
    except OSError:
        return


def missing_ava_hint(folder: Path) -> str:
    default = folder == default_ava()
    where = "" if default else f" --dest {folder}"
    return f"run 'ilgnet download ava{where}' ({AVA_SIZE_HINT}) or give --ava DIR"
