"""The registry of known weight sets (``weights/registry.json``): where to download them, what they
are, what they were trained on. The file is input like any other (``ILGNET_REGISTRY`` may point
elsewhere): every entry is checked field by field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ilgnet_cli.errors import IlgnetError
from ilgnet_cli.model.provenance import UNKNOWN, Provenance
from ilgnet_cli.runtime.download import Checksum
from ilgnet_cli.runtime.fsutil import UnreadableFile, read_json_object
from ilgnet_cli.runtime.text import clip, quoted

ARCH_FULL = "ilgnet"
ARCH_TRUNK = "ilgnet-trunk"
ARCH_TASTE = "ilgnet-taste"  # a learned head on another set's trunk (`ilgnet learn`)
# Always used with fullmatch: "$" would also accept a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a registry download's file name
MAX_REGISTRY_BYTES = 16 << 20


class WeightsError(IlgnetError):
    """A weights problem the user can act on; ``str()`` is one line."""


@dataclass
class WeightSpec:
    name: str
    description: str
    kind: str  # "caffemodel" or "safetensors"
    architecture: str
    file: str
    sources: list[str]
    checksum: str | None = None
    size: int | None = None
    size_note: str = ""
    mean: str = "ava1"
    paper_accuracy: str = ""
    provenance: Provenance = field(default_factory=lambda: UNKNOWN)


@dataclass
class Registry:
    default: str
    weights: dict[str, WeightSpec]

    def get(self, name: str) -> WeightSpec:
        try:
            return self.weights[name]
        except KeyError:
            known = clip(", ".join(sorted(self.weights)), 160)
            raise WeightsError(f"unknown weights {quoted(name)}; known: {known}") from None


# WeightSpec fields as the registry JSON spells them: (types, required).
_SPEC_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "description": ((str,), True), "kind": ((str,), True), "architecture": ((str,), True),
    "file": ((str,), True), "sources": ((list,), True), "checksum": ((str, type(None)), False),
    "size": ((int, type(None)), False), "size_note": ((str,), False), "mean": ((str,), False),
    "paper_accuracy": ((str,), False), "provenance": ((dict,), False),
}


def _spec_from_json(name: object, entry: object) -> WeightSpec:
    """One registry entry, checked: the registry file is input, never trusted."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"invalid weights name {quoted(name)}")
    if not isinstance(entry, dict):
        raise ValueError(f"entry {name!r} is not an object")
    for key, value in entry.items():
        if key not in _SPEC_FIELDS:
            raise ValueError(f"entry {name!r} has an unknown field {quoted(key)}")
        types, _ = _SPEC_FIELDS[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise ValueError(f"entry {name!r}: {key!r} has the wrong type ({type(value).__name__})")
    absent = [k for k, (_, required) in _SPEC_FIELDS.items() if required and k not in entry]
    if absent:
        raise ValueError(f"entry {name!r} lacks {', '.join(absent)}")
    if entry["kind"] not in ("caffemodel", "safetensors"):
        raise ValueError(f"entry {name!r}: unknown kind {quoted(entry['kind'])}")
    if entry["architecture"] not in (ARCH_FULL, ARCH_TRUNK):
        raise ValueError(f"entry {name!r}: unknown architecture {quoted(entry['architecture'])}")
    if not FILE_RE.fullmatch(entry["file"]):
        raise ValueError(f"entry {name!r}: 'file' must be a plain file name, not {quoted(entry['file'])}")
    sources = entry["sources"]
    if not sources or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in sources):
        raise ValueError(f"entry {name!r}: 'sources' must be a non-empty list of http(s) URLs")
    if entry.get("size") is not None and entry["size"] < 0:
        raise ValueError(f"entry {name!r}: negative size")
    if entry.get("checksum") is not None:
        Checksum.parse(entry["checksum"])
    fields = dict(entry)
    fields["provenance"] = Provenance.from_json(entry["provenance"]) if "provenance" in entry else UNKNOWN
    return WeightSpec(name=name, **fields)


def registry_path() -> Path:
    env = os.environ.get("ILGNET_REGISTRY")
    if env:
        return Path(env)
    packaged = resources.files("ilgnet_cli") / "_registry" / "registry.json"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "weights" / "registry.json"  # a source checkout


def load_registry(path: str | Path | None = None) -> Registry:
    path = Path(path) if path else registry_path()
    try:
        raw = read_json_object(path, MAX_REGISTRY_BYTES)
        if not isinstance(raw.get("weights"), dict):
            raise ValueError("expected an object with a 'weights' object")
        default = raw.get("default", "ilgnet-ava1")
        if not isinstance(default, str) or not NAME_RE.fullmatch(default):
            raise ValueError(f"invalid default {quoted(default)}")
        specs = {name: _spec_from_json(name, entry) for name, entry in raw["weights"].items()}
        return Registry(default=default, weights=specs)
    except (OSError, UnreadableFile, ValueError, KeyError, TypeError, RecursionError) as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"cannot read weights registry {clip(str(path))}: {clip(detail, 160)}") from None
