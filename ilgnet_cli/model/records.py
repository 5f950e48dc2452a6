"""The store's records, settings and layout, readable without torch (``ilgnet weights list`` and
``--help`` stay quick): which sets are installed, what each is, which is the default."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ilgnet_cli.model.provenance import UNKNOWN, Provenance
from ilgnet_cli.model.registry import ARCH_TASTE, ARCH_TRUNK, NAME_RE, Registry, WeightsError, load_registry

__all__ = ["ARCH_TASTE", "ARCH_TRUNK", "NAME_RE", "Registry", "WeightsError", "load_registry"]
from ilgnet_cli.runtime.fsutil import UnreadableFile, atomic_write_bytes, read_json_object
from ilgnet_cli.runtime.paths import store_home
from ilgnet_cli.runtime.text import clip, quoted

MAX_RECORD = 1 << 20


def home() -> Path:
    """The store's folder (``weights/`` lives in it); see :mod:`ilgnet_cli.runtime.paths`."""
    return store_home()


def weights_dir() -> Path:
    return store_home() / "weights"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- records


@dataclass
class Installed:
    name: str
    path: Path
    sha256: str
    size: int
    architecture: str
    mean_bgr: tuple[float, float, float]
    source: str = ""
    mean: str = ""  # what is subtracted, in words (e.g. "ava1 mean image")
    source_sha256: str = ""
    installed_at: str = ""
    provenance: dict = field(default_factory=dict)  # Provenance.to_json()
    base: str = ""  # a taste's base weights (name)
    base_sha256: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d

    @property
    def trained_on(self) -> Provenance:
        return Provenance.from_json(self.provenance) if self.provenance else UNKNOWN


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise WeightsError(f"invalid weights name {quoted(name)} (letters, digits, '.', '_', '-'; max 64)")
    return name


def _store_file(name: str, suffix: str, *, prefix: str = "") -> Path:
    """``weights/NAME<suffix>`` for a valid name; a link there that leads out of the store is refused."""
    _check_name(name)
    folder = weights_dir()
    path = folder / f"{prefix}{name}{suffix}"
    if not path.resolve().is_relative_to(folder.resolve()):
        raise WeightsError(f"{name}{suffix} in the weights store is a link to outside the weights store "
                           f"({clip(str(path.resolve()))}); refusing to use it")
    return path


def _record_path(name: str) -> Path:
    return _store_file(name, ".json")


def _pending_path(name: str) -> Path:
    # A leading dot: never a valid name, so never another set's record.
    return _store_file(name, ".pending.json", prefix=".")


def _record_from(d: object, name: str) -> Installed | None:
    if not isinstance(d, dict) or d.get("name") != name:
        return None
    try:
        d = dict(d)
        d["path"] = _store_file(name, ".safetensors")
        d["mean_bgr"] = tuple(float(v) for v in d["mean_bgr"])
        if not isinstance(d.get("sha256"), str) or not isinstance(d.get("size"), int):
            return None
        if not isinstance(d.get("provenance", {}), dict):
            d["provenance"] = {}
        known = {f.name for f in fields(Installed)}  # records from other versions may carry more
        values = {k: v for k, v in d.items() if k in known}
        for key in ("source", "mean", "source_sha256", "installed_at", "base", "base_sha256", "architecture"):
            if key in values and not isinstance(values[key], str):
                return None
        return Installed(**values)
    except (KeyError, ValueError, TypeError):
        return None


def installed(name: str) -> Installed | None:
    """The install record of ``name``, or None (not installed, invalid name, unreadable record).

    The record is only a note: its ``name`` must be its file's, and the weights are always
    ``weights/NAME.safetensors`` whatever ``path`` it holds, so an edited record cannot make the
    store read or delete anything else. Records are read like any input (a FIFO, a 1 GB or a
    200,000-deep file is no record). Raises WeightsError for a store file linked outside.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return None
    rec = _record_path(name)
    try:
        data = read_json_object(rec, MAX_RECORD)
    except (OSError, UnreadableFile):
        return None
    return _record_from(data, name)


def installed_all() -> list[Installed]:
    folder = weights_dir()
    if not folder.is_dir():
        return []
    found = []
    for p in sorted(folder.glob("*.json")):
        if not NAME_RE.fullmatch(p.stem):
            continue
        try:
            found.append(installed(p.stem))
        except WeightsError:  # a planted link: not an installed set (verify/remove NAME still work)
            continue
    return [i for i in found if i is not None]


def _orphans() -> list[Path]:
    """Temp files of installs that never finished (a killed install leaves its 600 MB temp)."""
    folder = weights_dir()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def _unrecorded() -> list[str]:
    """Weights files with no record (a store damaged outside ilgnet, or by an older version)."""
    folder = weights_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.safetensors")
                  if NAME_RE.fullmatch(p.stem) and not (folder / f"{p.stem}.json").exists())


CONFIG = "config.json"  # the store's settings: {"default": NAME, "pinned": {NAME: sha256}}


def _config() -> dict:
    try:
        return read_json_object(store_home() / CONFIG, 64 << 10)
    except (OSError, UnreadableFile):
        return {}


def _write_config(config: dict) -> None:
    atomic_write_bytes(store_home() / CONFIG, json.dumps(config, indent=2).encode() + b"\n")


def _pin(name: str, sha256: str) -> None:
    """Remember the digest of a registry file fetched with no published checksum: a later fetch
    or import of the same file is recognised (and inherits the entry's provenance)."""
    config = _config()
    raw = config.get("pinned")
    pinned: dict = raw if isinstance(raw, dict) else {}
    pinned.setdefault(name, sha256)
    config["pinned"] = pinned
    try:
        _write_config(config)
    except OSError:
        pass


def default_name(registry: Registry | None = None) -> str:
    """The weights used when none are named: the one set by ``ilgnet weights default NAME``,
    else the registry's (``ilgnet-ava1``)."""
    chosen = _config().get("default")
    if isinstance(chosen, str) and NAME_RE.fullmatch(chosen):
        return chosen
    return (registry or load_registry()).default


def set_default(name: str) -> str:
    """Make ``name`` (installed, or known to the registry) the weights used when none are named."""
    _check_name(name)
    registry = load_registry()
    rec = installed(name)
    if rec is None and name not in registry.weights:
        raise WeightsError(f"weights {quoted(name)} are neither installed nor known (see 'ilgnet weights list')")
    if rec is not None and rec.architecture == ARCH_TRUNK:
        raise WeightsError(f"{clip(name)} holds only a trunk for training; it cannot score photos")
    config = _config()
    config["default"] = name
    _write_config(config)
    return name


def tastes_of(base_sha256: str) -> list[str]:
    """Installed tastes that need the weights of ``base_sha256``."""
    return [i.name for i in installed_all() if i.architecture == ARCH_TASTE and i.base_sha256 == base_sha256]
