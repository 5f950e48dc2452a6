"""The weights store: a folder of verified ``.safetensors`` files plus the registry of known sets.

Layout (``$ILGNET_HOME``, default: the platform's user cache dir for "ilgnet")::

    weights/NAME.safetensors   tensors + metadata (architecture, mean, labels, source sha256)
    weights/NAME.json          install record: sha256 and size of the .safetensors, source
    downloads/                 in-flight downloads (``*.part``), resumable

Weights are only ever read with safetensors: nothing in the store can execute code.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ilgnet_cli._version import __version__
from ilgnet_cli.errors import IlgnetError
from ilgnet_cli.model.caffe_import import CaffeModelError, caffe_to_state_dict, read_caffemodel
from ilgnet_cli.model.ilgnet import INPUT_SIZE, LABELS, empty_ilgnet, state_shapes
from ilgnet_cli.model.transform import (
    MEAN_IMAGES,
    MEANS_BGR,
    Crops,
    DecodeMode,
    Mean,
    MeanError,
    Transform,
    channel_mean,
    mean_from_image,
    parse_mean,
)
from ilgnet_cli.runtime.download import (
    Checksum,
    DownloadError,
    DownloadStats,
    ProgressFn,
    SourceFailure,
    download,
    file_digest,
)
from ilgnet_cli.runtime.fsutil import UnreadableFile, atomic_write_bytes, read_json_object
from ilgnet_cli.runtime.paths import cache_home, offline, store_home
from ilgnet_cli.runtime.text import clip as _cut
from ilgnet_cli.runtime.text import first_line
from ilgnet_cli.runtime.text import quoted as _cut_name

ARCH_FULL = "ilgnet"
ARCH_TRUNK = "ilgnet-trunk"
# Always used with fullmatch: "$" would also accept a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a registry download's file name
MAX_REGISTRY_BYTES = 16 << 20


def ways_to_get_weights(name: str = "ilgnet-ava1", file: str = "ILGnet-AVA1.caffemodel",
                        mean: str | None = "ava1") -> tuple[str, ...]:
    """The help block after a first-run error: a heading, then one command a line (copyable)."""
    derived = re.sub(r"[^A-Za-z0-9._-]", "-", Path(file).stem).lower()  # import_caffemodel's default name
    imp = f"ilgnet weights import {file}" + (f" --name {name}" if derived != name else "")
    imp += f" --mean {mean}" if mean else ""
    rows = [(f"ilgnet weights fetch {name}", "download it (needs network)"),
            (imp, "a caffemodel you have"),
            ("ilgnet train ... then ilgnet weights add RUN_DIR/best.safetensors --name NAME", "your own")]
    width = max(len(command) for command, _ in rows[:2])  # the third is long: no comment, no padding
    lines = (f"  {command.ljust(width)}  # {why}" if len(command) <= width else f"  {command}" for command, why in rows)
    return ("Get ILGNet weights one of three ways:", *lines)


NO_WEIGHTS_HELP = "\n".join(("no ILGNet weights installed.", *ways_to_get_weights()))


class WeightsError(IlgnetError):
    """A weights problem the user can act on; ``str()`` is one line."""


class NoWeightsError(WeightsError):
    """No usable weights. ``str()`` is the one-line error; ``details`` a short help block to show
    under it (each source and what failed, then the ways to get weights), one line each."""

    def __init__(self, message: str, details: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.details = tuple(details)


class FetchError(NoWeightsError, DownloadError):
    """A registry entry could not be downloaded; ``sources`` says why, once per source."""

    def __init__(self, message: str, details: tuple[str, ...], sources: tuple[SourceFailure, ...]) -> None:
        super().__init__(message, details)
        self.sources = sources


def home() -> Path:
    """The store's folder (``weights/`` lives in it); see :mod:`ilgnet_cli.runtime.paths`."""
    return store_home()


def weights_dir() -> Path:
    return store_home() / "weights"


# --------------------------------------------------------------------------- registry


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


@dataclass
class Registry:
    default: str
    weights: dict[str, WeightSpec]

    def get(self, name: str) -> WeightSpec:
        try:
            return self.weights[name]
        except KeyError:
            known = _cut(", ".join(sorted(self.weights)), 160)
            raise WeightsError(f"unknown weights {_cut_name(name)}; known: {known}") from None


# WeightSpec fields as the registry JSON spells them: (types, required).
_SPEC_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "description": ((str,), True), "kind": ((str,), True), "architecture": ((str,), True),
    "file": ((str,), True), "sources": ((list,), True), "checksum": ((str, type(None)), False),
    "size": ((int, type(None)), False), "size_note": ((str,), False), "mean": ((str,), False),
    "paper_accuracy": ((str,), False),
}


def _spec_from_json(name: object, entry: object) -> WeightSpec:
    """One registry entry, checked: the registry file is input, never trusted."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"invalid weights name {_cut_name(name)}")
    if not isinstance(entry, dict):
        raise ValueError(f"entry {name!r} is not an object")
    for key, value in entry.items():
        if key not in _SPEC_FIELDS:
            raise ValueError(f"entry {name!r} has an unknown field {_cut_name(key)}")
        types, _ = _SPEC_FIELDS[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise ValueError(f"entry {name!r}: {key!r} has the wrong type ({type(value).__name__})")
    absent = [k for k, (_, required) in _SPEC_FIELDS.items() if required and k not in entry]
    if absent:
        raise ValueError(f"entry {name!r} lacks {', '.join(absent)}")
    if entry["kind"] not in ("caffemodel", "safetensors"):
        raise ValueError(f"entry {name!r}: unknown kind {_cut_name(entry['kind'])}")
    if entry["architecture"] not in (ARCH_FULL, ARCH_TRUNK):
        raise ValueError(f"entry {name!r}: unknown architecture {_cut_name(entry['architecture'])}")
    if not FILE_RE.fullmatch(entry["file"]):
        raise ValueError(f"entry {name!r}: 'file' must be a plain file name, not {_cut_name(entry['file'])}")
    sources = entry["sources"]
    if not sources or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in sources):
        raise ValueError(f"entry {name!r}: 'sources' must be a non-empty list of http(s) URLs")
    if entry.get("size") is not None and entry["size"] < 0:
        raise ValueError(f"entry {name!r}: negative size")
    if entry.get("checksum") is not None:
        Checksum.parse(entry["checksum"])
    return WeightSpec(name=name, **entry)


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
        if path.stat().st_size > MAX_REGISTRY_BYTES:
            raise ValueError(f"larger than {MAX_REGISTRY_BYTES >> 20} MB")
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or not isinstance(raw.get("weights"), dict):
            raise ValueError("expected an object with a 'weights' object")
        default = raw.get("default", "ilgnet-ava1")
        if not isinstance(default, str) or not NAME_RE.fullmatch(default):
            raise ValueError(f"invalid default {_cut_name(default)}")
        specs = {name: _spec_from_json(name, entry) for name, entry in raw["weights"].items()}
        return Registry(default=default, weights=specs)
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"cannot read weights registry {_cut(str(path))}: {_cut(detail, 160)}") from None


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

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _store_file(name: str, suffix: str) -> Path:
    """``weights/NAME<suffix>`` for a valid name; a link there that leads out of the store is refused."""
    _check_name(name)
    folder = weights_dir()
    path = folder / f"{name}{suffix}"
    if not path.resolve().is_relative_to(folder.resolve()):
        raise WeightsError(f"{name}{suffix} in the weights store is a link to outside the weights store "
                           f"({_cut(str(path.resolve()))}); refusing to use it")
    return path


def _record_path(name: str) -> Path:
    return _store_file(name, ".json")


def installed(name: str) -> Installed | None:
    """The install record of ``name``, or None (not installed, invalid name, unreadable record).

    The record is only a note: its ``name`` must be its file's, and the weights are always
    ``weights/NAME.safetensors`` whatever ``path`` it holds, so an edited record cannot make the
    store read or delete anything else. Raises WeightsError for a store file linked outside.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return None
    rec = _record_path(name)
    if not rec.exists():
        return None
    target = _store_file(name, ".safetensors")
    try:
        d = json.loads(rec.read_text(encoding="utf-8"))
        if not isinstance(d, dict) or d.get("name") != name:
            return None
        d["path"] = target
        d["mean_bgr"] = tuple(float(v) for v in d["mean_bgr"])
        known = {f.name for f in fields(Installed)}  # records from other versions may carry more
        return Installed(**{k: v for k, v in d.items() if k in known})
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def installed_all() -> list[Installed]:
    folder = weights_dir()
    if not folder.is_dir():
        return []
    found = []
    for p in sorted(folder.glob("*.json")):
        try:
            found.append(installed(p.stem))
        except WeightsError:  # a planted link: not an installed set (verify/remove NAME still work)
            continue
    return [i for i in found if i is not None]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise WeightsError(f"invalid weights name {_cut_name(name)} (letters, digits, '.', '_', '-'; max 64)")
    return name


MEAN_TENSOR = "_mean.image"  # a mean image from a file travels inside the weights file


def save_weights(path: str | Path, state: Mapping[str, np.ndarray | torch.Tensor], mean: Mean | str,
                 *, architecture: str = ARCH_FULL, metadata: dict[str, str] | None = None) -> Path:
    """Write ILGNet tensors + metadata as safetensors, atomically (temp file, then rename).

    The metadata says which mean the weights expect: ``mean`` is ``ava1``/``ava2`` (the authors'
    mean images, shipped with ilgnet), ``image`` (a mean image stored in the file as
    ``_mean.image``) or ``channels`` (the per-channel values in ``mean_bgr``).
    """
    from safetensors.numpy import save_file

    mean = parse_mean(mean)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "architecture": architecture, "input_size": str(INPUT_SIZE),
            "mean": _mean_key(mean), "mean_bgr": _format_mean(mean.bgr), "labels": ",".join(LABELS),
            "imported_at": _now(), "ilgnet_version": __version__, **(metadata or {})}
    arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v, dtype=np.float32)
              for k, v in state.items()}
    if meta["mean"] == "image":
        arrays[MEAN_TENSOR] = np.ascontiguousarray(mean.image, dtype=np.float32)
    from ilgnet_cli.runtime.fsutil import current_umask

    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # O_EXCL, random
    os.close(fd)
    tmp = Path(name)
    try:
        save_file(arrays, str(tmp), metadata=meta)
        # safetensors writes 0600 whatever the umask: new files get 0666 & ~umask, a replaced file its mode
        try:
            mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() and not path.is_symlink() else None
        except OSError:
            mode = None
        os.chmod(tmp, mode if mode is not None else 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _install(name: str, state: dict[str, np.ndarray], mean: Mean, *, architecture: str,
             source: str, source_sha256: str, metadata: dict[str, str]) -> Installed:
    if architecture not in (ARCH_FULL, ARCH_TRUNK):
        raise WeightsError(f"unknown architecture {_cut_name(architecture)} (expected {ARCH_FULL} or {ARCH_TRUNK})")
    target = save_weights(_store_file(name, ".safetensors"), state, mean, architecture=architecture,
                          metadata={**metadata, "source_sha256": source_sha256})
    record = Installed(
        name=name, path=target, sha256=file_digest(target), size=target.stat().st_size,
        architecture=architecture, mean_bgr=mean.bgr, source=source, mean=mean.describe(),
        source_sha256=source_sha256, installed_at=_now(),
    )
    atomic_write_bytes(_record_path(name), json.dumps(record.to_json(), indent=2).encode())
    return record


def _format_mean(mean_bgr: tuple[float, float, float]) -> str:
    return ",".join(repr(float(v)) for v in mean_bgr)


def _mean_key(mean: Mean) -> str:
    if mean.name in MEAN_IMAGES:
        return mean.name
    return "image" if mean.image is not None else "channels"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def resolve_mean(mean: str | Mean | None, default: str = "ava1") -> Mean:
    """``ava1|ava2|imagenet|FILE.npy|FILE.binaryproto|B,G,R`` -> Mean (a one-line WeightsError if unusable)."""
    try:
        return parse_mean(mean or default)
    except MeanError as exc:
        raise WeightsError(str(exc)) from None


def import_caffemodel(path: str | Path, name: str | None = None, mean: str | None = None,
                      *, trunk: bool | None = None, source: str | None = None) -> Installed:
    """Convert a caffemodel into the store.

    ``trunk=None`` decides by content: a full ILGNet, else ImageNet GoogLeNet's shared trunk
    (``bvlc_googlenet.caffemodel``), else an error listing what does not match.
    """
    from ilgnet_cli.model.caffe_import import LayerMismatchError

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no such file: {_cut(str(path))}")
    try:
        layers = read_caffemodel(path)
    except CaffeModelError as exc:
        raise WeightsError(str(exc)) from None
    names = {layer.name for layer in layers}
    if trunk is None:
        trunk = "temp_cjy" not in names and "loss3/classifier" in names
    ignored: list[str]
    try:
        state, ignored = caffe_to_state_dict(layers, trunk_only=trunk)
    except LayerMismatchError as exc:
        raise WeightsError(f"{_cut(path.name)}: {exc}") from None
    del layers
    try:
        check_values(state)
    except WeightsError as exc:
        raise WeightsError(f"{_cut(path.name)}: {exc}") from None
    name = _check_name(name or re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).lower())
    mean_value = resolve_mean(mean, "imagenet" if trunk else "ava1")
    src_sha = file_digest(path)
    meta = {"source_file": path.name, "ignored_layers": str(len(ignored))}
    return _install(name, state, mean_value, architecture=ARCH_TRUNK if trunk else ARCH_FULL,
                    source=source or str(path), source_sha256=src_sha, metadata=meta)


def add_safetensors(path: str | Path, name: str, mean: str | None = None) -> Installed:
    """Install an ILGNet ``.safetensors`` (e.g. a training run's best checkpoint) after checking it."""
    path = Path(path)
    state, meta = read_weights(path)
    check_state(state, full=meta.get("architecture", ARCH_FULL) == ARCH_FULL)
    mean_value = resolve_mean(mean) if mean else _meta_mean(meta, path)
    keep = {k: v for k, v in meta.items() if k not in ("format", "mean", "mean_bgr", "imported_at", "source_sha256")}
    keep["source_file"] = path.name
    return _install(_check_name(name), {k: v.numpy() for k, v in state.items()}, mean_value,
                    architecture=meta.get("architecture", ARCH_FULL), source=str(path),
                    source_sha256=file_digest(path), metadata=keep)


# --------------------------------------------------------------------------- loading


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a .safetensors file; any corruption is a one-line WeightsError."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {_cut(str(path))}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        state = load_file(str(path))
        state.pop(MEAN_TENSOR, None)  # the mean, not a model tensor (see _meta_mean)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own untyped errors
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{_cut(path.name)} is not a valid safetensors file (corrupt or truncated?): "
                           f"{_cut(first, 160)}") from None
    # Half precision (a training run's fp16/bf16 checkpoint) is widened to the fp32 the model
    # runs in; check_state refuses what is still not finite fp32 (ints, bools, inf from fp64).
    for key, value in state.items():
        if value.is_floating_point() and value.dtype != torch.float32:
            state[key] = value.float()
    return state, meta


def check_state(state: dict[str, torch.Tensor], *, full: bool, values: bool = True) -> None:
    """The tensors fit ILGNet (names and shapes; ``full``: every layer, else the trunk), and
    with ``values`` are finite fp32 (a pass over 600 MB: done at install and first load)."""
    expected = state_shapes()
    missing = [k for k in expected if k not in state]
    if not full:
        missing = [k for k in missing if not k.startswith(("temp", "loss1.classifier"))]
    wrong = [k for k, v in state.items() if k in expected and tuple(v.shape) != expected[k]]
    extra = [k for k in state if k not in expected]
    if missing or wrong or extra:
        parts = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("wrong shape", wrong), ("unexpected", extra)) if keys]
        raise WeightsError(_cut("weights do not fit ILGNet (" + "; ".join(parts) + ")", 400))
    if values:
        check_values(state)


def check_values(state: dict[str, torch.Tensor] | dict[str, np.ndarray]) -> None:
    """Every tensor fp32 and finite: a NaN or inf weight makes every score NaN."""
    for key, value in state.items():
        tensor = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
        if tensor.dtype != torch.float32:
            raise WeightsError(f"weights tensor {_cut(key)} is {str(tensor.dtype).removeprefix('torch.')}, "
                               "not floating point; refusing it")
        if not bool(torch.isfinite(tensor).all()):
            raise WeightsError(f"weights tensor {_cut(key)} has non-finite values (NaN or inf); "
                               "these weights would score every photo NaN")


def _meta_mean(meta: dict[str, str], path: Path) -> Mean:
    """The mean a weights file says it was trained with.

    Files written before ilgnet knew mean images carry only ``mean_bgr``: they get those
    per-channel values, exactly what they were scored with before.
    """
    key = meta.get("mean", "channels")
    try:
        if key in MEAN_IMAGES:
            return parse_mean(key)
        if key == "image":
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="np") as fh:
                    image = fh.get_tensor(MEAN_TENSOR)
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own untyped errors
                raise ValueError(f"no readable {MEAN_TENSOR} tensor ({type(exc).__name__})") from None
            return mean_from_image(image)
        if key == "channels":
            values = [float(v) for v in meta["mean_bgr"].split(",")]
            return channel_mean(values, "imagenet" if tuple(values) == MEANS_BGR["imagenet"] else None)
    except (KeyError, ValueError, OSError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:100]
        raise WeightsError(f"{path.name} has no usable mean in its metadata ({first}); "
                           "give the mean explicitly") from None
    raise WeightsError(f"{path.name}: unknown mean {key[:40]!r} in its metadata; give the mean explicitly")


@dataclass
class LoadedWeights:
    """ILGNet with its weights, and the preprocessing that belongs to them (:meth:`transforms`)."""

    model: torch.nn.Module
    mean: Mean
    sha256: str
    name: str
    path: Path

    def to(self, device: torch.device | str) -> LoadedWeights:
        self.model.to(device)
        return self

    def transforms(self, decode: DecodeMode | str = DecodeMode.EXACT, crops: Crops | str = Crops.CENTRE) -> Transform:
        """What these weights are fed: their mean, and the decode mode and crops asked for
        (default: the authors' pipeline, centre crop)."""
        return Transform(self.mean, decode=DecodeMode(decode), crops=Crops(crops))


def _looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or Path(value).suffix.lower() in (".safetensors", ".caffemodel")


def resolve(name_or_path: str) -> tuple[str, Path]:
    """An installed name or a path to a .safetensors file -> (display name, path).

    A store name always means the store entry, even when a file of that name sits in the
    working folder; a file is taken only when the value looks like a path (a ``/`` in it, or a
    ``.safetensors`` name that is not installed)."""
    if isinstance(name_or_path, str) and NAME_RE.fullmatch(name_or_path):
        rec = installed(name_or_path)
        if rec is not None:
            return rec.name, rec.path
    candidate = Path(name_or_path).expanduser()
    if _looks_like_path(name_or_path):
        if candidate.suffix.lower() == ".caffemodel":
            raise WeightsError(f"{_cut(candidate.name)}: import it first: ilgnet weights import {_cut(str(candidate))}")
        return candidate.stem, candidate
    raise WeightsError(f"weights {_cut_name(name_or_path)} are not installed (see 'ilgnet weights list')")


def resolve_weights(weights: str | None, *, allow_download: bool = True, progress: ProgressFn | None = None) -> str:
    """What a run uses: ``weights`` as given (an installed name or a file), a registry name not
    installed yet fetched on first use, or (None) the default weights."""
    if weights is None:
        return ensure_default(allow_download=allow_download, progress=progress)
    if NAME_RE.fullmatch(weights) and installed(weights) is None:
        registry = load_registry()
        if weights in registry.weights and not (Path(weights).suffix == ".safetensors" and Path(weights).exists()):
            return _fetch_for_use(weights, registry, allow_download=allow_download, progress=progress)
    return weights


def _fetch_for_use(name: str, registry: Registry, *, allow_download: bool, progress: ProgressFn | None) -> str:
    if not allow_download or offline():
        raise NoWeightsError(f"{_cut(name)} is not installed and downloads are off (--offline or ILGNET_OFFLINE)",
                             _ways_for(registry, name))
    try:
        return fetch(name, registry=registry, progress=progress).name
    except NoWeightsError:
        raise  # already says what failed, then the ways
    except Exception as exc:  # noqa: BLE001 - any failure ends in the same three options
        raise NoWeightsError(f"could not fetch {_cut(name)}: {_one_line(exc)}", _ways_for(registry, name)) from None


def load_model(name_or_path: str, device: torch.device | str = "cpu") -> LoadedWeights:
    """An eval-mode ILGNet with complete weights, plus the mean that belongs to them."""
    name, path = resolve(name_or_path)
    state, meta = read_weights(path)
    if meta.get("architecture", ARCH_FULL) != ARCH_FULL:
        raise WeightsError(f"{_cut(name)} holds only the {_cut(meta['architecture'], 40)} (for training), "
                           "not a scoring model")
    check_state(state, full=True)
    model = empty_ilgnet()
    model.load_state_dict(state, assign=True)  # the loaded tensors themselves: no second copy
    model.eval().to(device)
    rec = installed(name)
    sha = rec.sha256 if rec is not None and rec.path == path else file_digest(path)
    return LoadedWeights(model=model, mean=_meta_mean(meta, path), sha256=sha, name=name, path=path)


# --------------------------------------------------------------------------- fetch / verify


def fetch(name: str, *, registry: Registry | None = None, progress: ProgressFn | None = None,
          stats: DownloadStats | None = None, retries: int = 4, backoff: float = 1.0) -> Installed:
    """Download a registry entry (mirrors, resume, checksum) and convert it into the store."""
    from ilgnet_cli.runtime.download import MAX_WEIGHTS_BYTES

    registry = registry or load_registry()
    if offline():
        raise NoWeightsError(f"ILGNET_OFFLINE is set: not downloading {_cut(name)}", _ways_for(registry, name))
    spec = registry.get(name)
    # The registry may come from ILGNET_REGISTRY: its fields decide paths and sizes, so check them.
    file = spec.file if isinstance(spec.file, str) else ""
    if not file or file.startswith(".") or Path(file).name != file or "\\" in file or "\0" in file:
        raise WeightsError(f"registry entry {name}: 'file' must be a plain file name, got {str(spec.file)[:80]!r}")
    if not isinstance(spec.sources, list) or not all(isinstance(u, str) for u in spec.sources):
        raise WeightsError(f"registry entry {name}: 'sources' must be a list of URLs")
    if spec.size is not None and (isinstance(spec.size, bool) or not isinstance(spec.size, int) or spec.size < 0):
        raise WeightsError(f"registry entry {name}: 'size' must be a number of bytes or null")
    if spec.kind not in ("caffemodel", "safetensors"):
        raise WeightsError(f"registry entry {name} has unknown kind {str(spec.kind)[:40]!r}")
    try:
        checksum = Checksum.parse(spec.checksum) if spec.checksum else None
    except ValueError as exc:
        raise WeightsError(f"registry entry {name}: {exc}") from None
    dest = cache_home() / "downloads" / file
    stats = stats if stats is not None else DownloadStats()
    done: list[Installed] = []

    def convert(path: Path) -> str | None:
        # Runs on each verified download: a file that does not parse fails that source (the
        # next mirror is tried) and installs nothing.
        try:
            if spec.kind == "caffemodel":
                done.append(import_caffemodel(path, name, spec.mean, trunk=spec.architecture == ARCH_TRUNK,
                                              source=stats.url or path.name))
            else:
                done.append(add_safetensors(path, name, spec.mean))
        except WeightsError as exc:
            return str(exc)
        finally:
            path.unlink(missing_ok=True)
        return None

    try:
        download(spec.sources, dest, checksum=checksum, expected_size=spec.size, progress=progress,
                 stats=stats, retries=retries, backoff=backoff, max_bytes=MAX_WEIGHTS_BYTES, validate=convert)
    except DownloadError as exc:
        if not exc.sources:
            raise
        raise FetchError(_fetch_failed(name, exc.sources), (*(f"  {s.line()}" for s in exc.sources),
                                                             *_ways_for(registry, name)), exc.sources) from None
    return done[-1]


def _fetch_failed(name: str, sources: tuple[SourceFailure, ...]) -> str:
    """The one-line error over the per-source lines: what happened, in a few words."""
    n = len(sources)
    if all(s.unreachable for s in sources):
        where = "its source" if n == 1 else f"any of its {n} sources"
        return f"could not download {_cut(name)}: could not reach {where} (no network?)"
    return f"could not download {_cut(name)}: " + ("its source failed" if n == 1 else f"all {n} sources failed")


def _ways_for(registry: Registry, name: str) -> tuple[str, ...]:
    try:
        spec = registry.get(name)
    except WeightsError:
        return ways_to_get_weights()
    if not isinstance(spec.file, str) or not FILE_RE.fullmatch(spec.file) or not NAME_RE.fullmatch(name):
        return ways_to_get_weights()
    return ways_to_get_weights(name, spec.file, spec.mean if isinstance(spec.mean, str) and NAME_RE.fullmatch(
        spec.mean) else None)


@dataclass
class VerifyResult:
    name: str
    ok: bool
    message: str


def verify(name: str) -> VerifyResult:
    try:
        rec = installed(_check_name(name))
    except WeightsError as exc:
        return VerifyResult(_cut(name), False, str(exc))
    if rec is None:
        return VerifyResult(name, False, "not installed")
    if not rec.path.is_file():
        return VerifyResult(name, False, f"file missing: {rec.path}")
    actual = file_digest(rec.path)
    if actual != rec.sha256:
        return VerifyResult(name, False, f"sha256 mismatch (recorded {rec.sha256[:12]}..., now {actual[:12]}...)")
    try:
        state, meta = read_weights(rec.path)
        check_state(state, full=meta.get("architecture", ARCH_FULL) == ARCH_FULL)
    except WeightsError as exc:
        return VerifyResult(name, False, str(exc))
    return VerifyResult(name, True, f"ok (sha256 {actual[:12]}..., {len(state)} tensors)")


CONFIG = "config.json"  # the store's settings: {"default": NAME}


def default_name(registry: Registry | None = None) -> str:
    """The weights used when none are named: the one set by ``ilgnet weights default NAME``,
    else the registry's (``ilgnet-ava1``)."""
    try:
        config = read_json_object(store_home() / CONFIG, 64 << 10)
    except (OSError, UnreadableFile):
        config = {}
    chosen = config.get("default")
    if isinstance(chosen, str) and NAME_RE.fullmatch(chosen):
        return chosen
    return (registry or load_registry()).default


def set_default(name: str) -> str:
    """Make ``name`` (installed, or known to the registry) the weights used when none are named."""
    _check_name(name)
    registry = load_registry()
    rec = installed(name)
    if rec is None and name not in registry.weights:
        raise WeightsError(f"weights {_cut_name(name)} are neither installed nor known (see 'ilgnet weights list')")
    if rec is not None and rec.architecture == ARCH_TRUNK:
        raise WeightsError(f"{_cut(name)} holds only a trunk for training; it cannot score photos")
    atomic_write_bytes(store_home() / CONFIG, json.dumps({"default": name}, indent=2).encode() + b"\n")
    return name


def ensure_default(*, allow_download: bool = True, progress: ProgressFn | None = None) -> str:
    """Name of the default weights (:func:`default_name`), fetched on first use if allowed.

    Never silently another set: when the default is absent and cannot be fetched, the error
    names the installed ones and asks for ``-w``."""
    registry = load_registry()
    default = default_name(registry)
    if installed(default) is not None:
        return default
    if default not in registry.weights:
        raise NoWeightsError(f"the default weights {_cut_name(default)} are not installed any more; "
                             "choose others: ilgnet weights default NAME")
    try:
        return _fetch_for_use(default, registry, allow_download=allow_download, progress=progress)
    except NoWeightsError as exc:
        others = [i.name for i in installed_all() if i.architecture != ARCH_TRUNK]
        if not others:
            raise
        shown = ", ".join(others[:6]) + (" ..." if len(others) > 6 else "")
        raise NoWeightsError(f"{exc}; installed instead: {shown} (use -w NAME, or make one the default: "
                             f"ilgnet weights default NAME)", exc.details) from None


def _one_line(exc: BaseException) -> str:
    return first_line(exc, 300)


def remove(name: str) -> bool:
    """Delete ``weights/NAME.*``; False if there was nothing (an invalid name is never installed).

    Only the two store files are unlinked (a link itself, never what it points to): neither the
    name nor the record's ``path`` can reach outside the store.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return False
    removed = False
    for p in (weights_dir() / f"{name}.safetensors", weights_dir() / f"{name}.json"):
        if p.is_symlink() or p.exists():
            p.unlink()
            removed = True
    return removed
