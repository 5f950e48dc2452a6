"""Where ilgnet keeps datasets and training runs: ``$ILGNET_DATA``, default the platform's user
data folder for ilgnet (e.g. ``~/.local/share/ilgnet``). Weights live apart, in ``$ILGNET_HOME``
(a cache folder: they can be fetched again; AVA and your runs cannot, so cheaply).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

AVA_SIZE_HINT = "about 32 GB"


def data_home() -> Path:
    env = os.environ.get("ILGNET_DATA")
    return Path(env).expanduser() if env else Path(platformdirs.user_data_dir("ilgnet", appauthor=False))


def default_ava() -> Path:
    return data_home() / "ava"


def runs_dir() -> Path:
    return data_home() / "runs"


def missing_ava_hint(folder: Path) -> str:
    default = folder == default_ava()
    where = "" if default else f" --dest {folder}"
    return f"run 'ilgnet download ava{where}' ({AVA_SIZE_HINT}) or give --ava DIR"
