"""The weights store: a folder of verified ``.safetensors`` files plus the registry of known sets.

Layout (``$ILGNET_HOME``, default: the platform's user *data* folder; see :mod:`ilgnet_cli.runtime.paths`)::

    weights/NAME.safetensors   tensors + metadata (architecture, mean, labels, provenance, source sha256)
    weights/NAME.json          install record: sha256 and size of the .safetensors, source, provenance
    config.json                the store's settings ({"default": NAME}, digests pinned on first fetch)

A taste (``ilgnet learn``) is a few-KB ``NAME.safetensors`` holding only its head and its base's
sha256; loading it composes it with the base. Weights are only ever read with safetensors:
nothing in the store can execute code.

Crash safety: an install writes the tensors to a random temp name, then its record under a
pending name (``.NAME.pending.json``), then renames the tensors in, then the record. Whatever
moment a kill, a full disk or a signal strikes, readers see the old set or the new one, and
:func:`verify` finishes or rolls back what was cut short (and removes orphaned temp files). The
sha256 a run uses (and the score cache is keyed by) is always the file's own, verified on first
load and remembered by inode, size, mtime and ctime; never the record's word for it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ilgnet_cli._version import __version__
from ilgnet_cli.errors import IlgnetError
from ilgnet_cli.model.caffe_import import CaffeModelError, caffe_to_state_dict, read_caffemodel
from ilgnet_cli.model.ilgnet import INPUT_SIZE, LABELS, empty_ilgnet, state_shapes
from ilgnet_cli.model.provenance import IDS_TENSOR, UNKNOWN, Provenance, training_ids
from ilgnet_cli.model.records import (
    MAX_RECORD,
    Installed,
    _check_name,
    _config,
    _now,
    _orphans,
    _pending_path,
    _pin,
    _record_path,
    _store_file,
    _unrecorded,
    default_name,
    home,
    installed,
    installed_all,
    set_default,
    tastes_of,
    weights_dir,
)
from ilgnet_cli.model.registry import (
    ARCH_FULL,
    ARCH_TASTE,
    ARCH_TRUNK,
    FILE_RE,
    NAME_RE,
    Registry,
    WeightsError,
    load_registry,
)
from ilgnet_cli.model.taste import HEAD_BIAS, HEAD_WEIGHT, TasteModel
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
from ilgnet_cli.runtime.fsutil import (
    UnreadableFile,
    atomic_write_bytes,
    check_target,
    current_umask,
    read_json_object,
)
from ilgnet_cli.runtime.paths import cache_home, offline
from ilgnet_cli.runtime.text import clip, first_line, quoted

# The store's API in one place (records and registry live in torch-free modules of their own).
__all__ = ["ARCH_FULL", "ARCH_TASTE", "ARCH_TRUNK", "NAME_RE", "Installed", "LoadedWeights", "Registry",
           "WeightsError", "add_safetensors", "default_name", "ensure_default", "fetch", "home", "import_caffemodel",
           "install_taste", "installed", "installed_all", "load_model", "load_registry", "remove", "repair_store",
           "resolve", "resolve_weights", "set_default", "tastes_of", "verify", "weights_dir"]

MEAN_TENSOR = "_mean.image"  # a mean image from a file travels inside the weights file
EXTRA_TENSORS = (MEAN_TENSOR, IDS_TENSOR)  # tensors a weights file carries that are not the model's


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


# --------------------------------------------------------------------------- writing


def _format_mean(mean_bgr: tuple[float, float, float]) -> str:
    return ",".join(repr(float(v)) for v in mean_bgr)


def _mean_key(mean: Mean) -> str:
    if mean.name in MEAN_IMAGES:
        return mean.name
    return "image" if mean.image is not None else "channels"


def _write_safetensors(tmp: Path, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    try:
        save_file(arrays, str(tmp), metadata=meta)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own untyped errors (ENOSPC among them)
        text = first_line(exc)
        reason = "no space left on the device" if "No space left" in text or "os error 28" in text else text
        raise WeightsError(f"cannot write {clip(tmp.name.split('.safetensors')[0].lstrip('.'))}.safetensors in "
                           f"{clip(str(tmp.parent))}: {reason}") from None


def save_weights(path: str | Path, state: Mapping[str, np.ndarray | torch.Tensor], mean: Mean | str,
                 *, architecture: str = ARCH_FULL, metadata: dict[str, str] | None = None,
                 provenance: Provenance | None = None, extra: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write tensors + metadata as safetensors, atomically (a random temp name, then a rename).

    The metadata says which mean the weights expect: ``mean`` is ``ava1``/``ava2`` (the authors'
    mean images, shipped with ilgnet), ``image`` (a mean image stored in the file as
    ``_mean.image``) or ``channels`` (the per-channel values in ``mean_bgr``); and what they were
    trained on (``provenance``; ``extra`` may carry its ids tensor).
    """
    path = Path(path)
    tmp = _write_temp(path, state, mean, architecture=architecture, metadata=metadata, provenance=provenance,
                      extra=extra)
    try:
        check_target(path, image_ok=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_temp(path: Path, state: Mapping[str, np.ndarray | torch.Tensor], mean: Mean | str, *,
                architecture: str, metadata: dict[str, str] | None, provenance: Provenance | None,
                extra: Mapping[str, np.ndarray] | None) -> Path:
    """The weights file written beside ``path`` under a random temp name (mode as the final
    file should have); removed again on any failure, a signal included."""
    mean = parse_mean(mean)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "architecture": architecture, "input_size": str(INPUT_SIZE),
            "mean": _mean_key(mean), "mean_bgr": _format_mean(mean.bgr), "labels": ",".join(LABELS),
            "imported_at": _now(), "ilgnet_version": __version__, **(metadata or {})}
    if provenance is not None:
        meta["provenance"] = provenance.dumps()
    arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v, dtype=np.float32)
              for k, v in state.items()}
    if meta["mean"] == "image":
        arrays[MEAN_TENSOR] = np.ascontiguousarray(mean.image, dtype=np.float32)
    for key, value in (extra or {}).items():
        arrays[key] = np.ascontiguousarray(value)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # O_EXCL, random
    os.close(fd)
    tmp = Path(name)
    try:
        _write_safetensors(tmp, arrays, meta)
        # safetensors writes 0600 whatever the umask: new files get 0666 & ~umask, a replaced file its mode
        try:
            mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() and not path.is_symlink() else None
        except OSError:
            mode = None
        os.chmod(tmp, mode if mode is not None else 0o666 & ~current_umask())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _install(name: str, state: Mapping[str, np.ndarray | torch.Tensor], mean: Mean, *, architecture: str,
             source: str, source_sha256: str, metadata: dict[str, str], provenance: Provenance,
             extra: Mapping[str, np.ndarray] | None = None, base: str = "", base_sha256: str = "",
             replace: bool = True) -> Installed:
    """Install ``name`` as one step as readers see it (see the module docstring)."""
    if architecture not in (ARCH_FULL, ARCH_TRUNK, ARCH_TASTE):
        raise WeightsError(f"unknown architecture {quoted(architecture)}")
    target, record_path, pending = _store_file(name, ".safetensors"), _record_path(name), _pending_path(name)
    if not replace and (target.exists() or record_path.exists()):
        raise WeightsError(f"weights {quoted(name)} are installed already; choose another name or --replace")
    tmp = _write_temp(target, state, mean, architecture=architecture,
                      metadata={**metadata, "source_sha256": source_sha256}, provenance=provenance, extra=extra)
    try:
        sha = file_digest(tmp)
        record = Installed(name=name, path=target, sha256=sha, size=tmp.stat().st_size, architecture=architecture,
                           mean_bgr=mean.bgr, source=source, mean=mean.describe(), source_sha256=source_sha256,
                           installed_at=_now(), provenance=provenance.to_json(), base=base, base_sha256=base_sha256)
        atomic_write_bytes(pending, json.dumps(record.to_json(), indent=2).encode())
        check_target(target)
        os.replace(tmp, target)
        os.replace(pending, record_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if pending.exists() and not _matches(pending, target):
            pending.unlink(missing_ok=True)
        raise
    _remember_verified(target, sha)
    return record


def _matches(pending: Path, target: Path) -> bool:
    """Whether a pending record describes the file now at ``target`` (the rename happened)."""
    try:
        rec = read_json_object(pending, MAX_RECORD)
        return isinstance(rec.get("sha256"), str) and target.is_file() and file_digest(target) == rec["sha256"]
    except (OSError, UnreadableFile):
        return False


def resolve_mean(mean: str | Mean | None, default: str = "ava1") -> Mean:
    """``ava1|ava2|imagenet|FILE.npy|FILE.binaryproto|B,G,R`` -> Mean (a one-line WeightsError if unusable)."""
    try:
        return parse_mean(mean or default)
    except MeanError as exc:
        raise WeightsError(str(exc)) from None


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





# --------------------------------------------------------------------------- installing


def _known_provenance(source_sha256: str, registry: Registry | None = None) -> tuple[str, Provenance] | None:
    """(registry name, provenance) of a file whose sha256 a registry entry publishes or an earlier
    fetch pinned; None for a file ilgnet does not know."""
    registry = registry or load_registry()
    pinned = _config().get("pinned", {})
    for name, spec in registry.weights.items():
        digests = {pinned.get(name)} if isinstance(pinned, dict) else set()
        if spec.checksum and spec.checksum.startswith("sha256:"):
            digests.add(spec.checksum.split(":", 1)[1].lower())
        if source_sha256 in digests:
            return name, spec.provenance
    return None


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors header: an 8-byte little-endian length, then a JSON object."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= 100 << 20


def import_caffemodel(path: str | Path, name: str | None = None, mean: str | None = None,
                      *, trunk: bool | None = None, source: str | None = None, trained_on: str | None = None,
                      provenance: Provenance | None = None, replace: bool = True) -> Installed:
    """Convert a caffemodel into the store.

    ``trunk=None`` decides by content: a full ILGNet, else ImageNet GoogLeNet's shared trunk
    (``bvlc_googlenet.caffemodel``), else an error listing what does not match. What the weights
    were trained on: ``provenance`` (a fetch knows it), else that of a registry entry whose
    published or pinned sha256 the file has, else ``trained_on`` (a registry name the user
    declares), else unknown.
    """
    from ilgnet_cli.model.caffe_import import LayerMismatchError

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no such file: {clip(str(path))}")
    registry = load_registry()
    declared = None
    if trained_on is not None:
        declared = registry.get(trained_on).provenance
    try:
        layers = read_caffemodel(path)
    except CaffeModelError as exc:
        if _looks_like_safetensors(path):
            raise WeightsError(f"{clip(path.name)} is a safetensors file, not a caffemodel: store it with "
                               f"'ilgnet weights add {clip(str(path))} --name NAME'") from None
        raise WeightsError(str(exc)) from None
    names = {layer.name for layer in layers}
    if trunk is None:
        trunk = "temp_cjy" not in names and "loss3/classifier" in names
    ignored: list[str]
    try:
        state, ignored = caffe_to_state_dict(layers, trunk_only=trunk)
    except LayerMismatchError as exc:
        raise WeightsError(f"{clip(path.name)}: {exc}") from None
    del layers
    try:
        check_values(state)
    except WeightsError as exc:
        raise WeightsError(f"{clip(path.name)}: {exc}") from None
    name = _check_name(name or re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).lower())
    mean_value = resolve_mean(mean, "imagenet" if trunk else "ava1")
    src_sha = file_digest(path)
    if provenance is None:
        known = _known_provenance(src_sha, registry)
        if known is not None:
            provenance = known[1]
        elif declared is not None:
            provenance = dataclasses.replace(declared, declared=True)
        else:
            provenance = UNKNOWN
    meta = {"source_file": path.name, "ignored_layers": str(len(ignored))}
    return _install(name, state, mean_value, architecture=ARCH_TRUNK if trunk else ARCH_FULL,
                    source=source or str(path), source_sha256=src_sha, metadata=meta, provenance=provenance,
                    replace=replace)


def add_safetensors(path: str | Path, name: str, mean: str | None = None, *, replace: bool = True,
                    trained_on: str | None = None) -> Installed:
    """Install an ILGNet ``.safetensors`` (e.g. a training run's best checkpoint) after checking it;
    its provenance (and ids tensor) comes with it; a file without one is unknown, unless it is a
    file the registry knows or ``trained_on`` (a registry name) declares it."""
    path = Path(path)
    _check_name(name)
    state, meta = read_weights(path)
    if meta.get("architecture") == ARCH_TASTE:
        raise WeightsError(f"{clip(path.name)} is a taste head: install it with 'ilgnet learn', not 'weights add'")
    check_state(state, full=meta.get("architecture", ARCH_FULL) == ARCH_FULL)
    mean_value = resolve_mean(mean) if mean else _meta_mean(meta, path)
    keep = {k: v for k, v in meta.items()
            if k not in ("format", "mean", "mean_bgr", "imported_at", "source_sha256", "provenance")}
    keep["source_file"] = path.name
    src_sha = file_digest(path)
    provenance = Provenance.loads(meta.get("provenance"))
    if not provenance.known and (known := _known_provenance(src_sha)) is not None:
        provenance = known[1]
    if not provenance.known and trained_on is not None:
        provenance = dataclasses.replace(load_registry().get(trained_on).provenance, declared=True)
    extra = {}
    ids = _read_extra(path, IDS_TENSOR)
    if ids is not None:
        extra[IDS_TENSOR] = ids
    return _install(name, state, mean_value, architecture=meta.get("architecture", ARCH_FULL), source=str(path),
                    source_sha256=src_sha, metadata=keep, provenance=provenance, extra=extra, replace=replace)


def install_taste(name: str, base: LoadedWeights, weight: np.ndarray, bias: float, *, metadata: dict[str, str],
                  provenance: Provenance, replace: bool = False) -> Installed:
    """Install a learned head on ``base`` as ``name`` (a few KB; the base is referenced by sha256).
    An existing set is replaced only with ``replace``, and never the base itself."""
    _check_name(name)
    if name == base.name:
        raise WeightsError(f"--name {name} is the base weights themselves; choose another name")
    if base.architecture == ARCH_TASTE:
        raise WeightsError(f"{clip(base.name)} is a taste itself; learn on top of full weights")
    state = {HEAD_WEIGHT: np.asarray(weight, np.float32).reshape(-1), HEAD_BIAS: np.asarray([bias], np.float32)}
    return _install(name, state, base.mean, architecture=ARCH_TASTE, source=f"ilgnet learn (base {base.name})",
                    source_sha256=base.sha256, metadata={**metadata, "base": base.name, "base_sha256": base.sha256},
                    provenance=provenance, base=base.name, base_sha256=base.sha256, replace=replace)


# --------------------------------------------------------------------------- reading


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Model tensors and metadata of a .safetensors file (memory-mapped, not copied); the mean
    image and ids tensors stay out. Any corruption is a one-line WeightsError."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {clip(str(path))}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        state = load_file(str(path))
        for key in EXTRA_TENSORS:
            state.pop(key, None)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own untyped errors
        raise WeightsError(f"{clip(path.name)} is not a valid safetensors file (corrupt or truncated?): "
                           f"{first_line(exc)}") from None
    # Half precision (a training run's fp16/bf16 checkpoint) is widened to the fp32 the model
    # runs in; check_state refuses what is still not finite fp32 (ints, bools, inf from fp64).
    for key, value in state.items():
        if value.is_floating_point() and value.dtype != torch.float32:
            state[key] = value.float()
    return state, meta


def _read_extra(path: Path, key: str) -> np.ndarray | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            return fh.get_tensor(key) if key in fh.keys() else None
    except Exception:  # noqa: BLE001 - safetensors raises its own untyped errors
        return None


def check_state(state: Mapping[str, torch.Tensor], *, full: bool, values: bool = True) -> None:
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
        raise WeightsError(clip("weights do not fit ILGNet (" + "; ".join(parts) + ")", 400))
    if values:
        check_values(state)


def check_values(state: Mapping[str, torch.Tensor] | Mapping[str, np.ndarray]) -> None:
    """Every tensor fp32 and finite: a NaN or inf weight makes every score NaN. Checked a slice
    at a time, so that no 600 MB temporary is made."""
    for key, value in state.items():
        tensor = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
        if tensor.dtype != torch.float32:
            raise WeightsError(f"weights tensor {clip(key)} is {str(tensor.dtype).removeprefix('torch.')}, "
                               "not floating point; refusing it")
        flat = tensor.reshape(-1)
        for start in range(0, flat.numel(), 1 << 22):
            if not bool(torch.isfinite(flat[start:start + (1 << 22)]).all()):
                raise WeightsError(f"weights tensor {clip(key)} has non-finite values (NaN or inf); "
                                   "these weights would score every photo NaN")


# Verified files: a weights file's sha256 and its checked values, remembered by what changes when
# the file does (a copy, an edit, a rename over it): device, inode, size, mtime and ctime.
VERIFIED = "verified.json"
MAX_VERIFIED = 4 << 20


def _stamp(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _verified_cache() -> dict:
    try:
        data = read_json_object(cache_home() / VERIFIED, MAX_VERIFIED)
    except (OSError, UnreadableFile):
        return {}
    return data


def _remember_verified(path: Path, sha: str) -> None:
    try:
        data = _verified_cache()
        data[os.path.realpath(path)] = {"stamp": _stamp(path), "sha256": sha}
        while len(data) > 500:
            data.pop(next(iter(data)))
        atomic_write_bytes(cache_home() / VERIFIED, json.dumps(data).encode())
    except (OSError, IlgnetError):
        pass  # only a memo: the file is verified again next time


def verified_sha256(path: Path) -> str | None:
    """The file's sha256 when it was verified before and has not changed since, else None."""
    entry = _verified_cache().get(os.path.realpath(path))
    try:
        if isinstance(entry, dict) and entry.get("stamp") == _stamp(path) and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
    except OSError:
        return None
    return None


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




# --------------------------------------------------------------------------- loading


@dataclass
class LoadedWeights:
    """ILGNet with its weights, the preprocessing that belongs to them (:meth:`transforms`) and
    what they were trained on."""

    model: torch.nn.Module
    mean: Mean
    sha256: str  # of the file, verified (a taste's: its own file, which pins its base's)
    name: str
    path: Path
    provenance: Provenance = field(default_factory=lambda: UNKNOWN)
    architecture: str = ARCH_FULL
    base: LoadedWeights | None = None  # a taste's base

    def to(self, device: torch.device | str) -> LoadedWeights:
        self.model.to(device)
        return self

    def transforms(self, decode: DecodeMode | str = DecodeMode.EXACT, crops: Crops | str = Crops.CENTRE) -> Transform:
        """What these weights are fed: their mean, and the decode mode and crops asked for
        (default: the authors' pipeline, centre crop)."""
        return Transform(self.mean, decode=DecodeMode(decode), crops=Crops(crops))

    def training_ids(self) -> set[int] | None:
        """Every AVA image id these weights (and what they started from) trained on; None when
        that is not known."""
        if self.base is not None:
            base_ids = self.base.training_ids()
            return None if base_ids is None or not self.provenance.known else base_ids
        return training_ids(self.provenance, _read_extra(self.path, IDS_TENSOR))


def _looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or Path(value).suffix.lower() in (".safetensors", ".caffemodel")


def resolve(name_or_path: str) -> tuple[str, Path]:
    """An installed name or a path to a .safetensors file -> (display name, path).

    A store name always means the store entry, even when a file of that name sits in the
    working folder; a file is taken only when the value looks like a path (a ``/`` in it, or a
    ``.safetensors`` name that is not installed)."""
    if isinstance(name_or_path, str) and NAME_RE.fullmatch(name_or_path):
        _repair_pending(name_or_path)
        rec = installed(name_or_path)
        if rec is not None:
            return rec.name, rec.path
    candidate = Path(name_or_path).expanduser()
    if _looks_like_path(name_or_path):
        if candidate.suffix.lower() == ".caffemodel":
            raise WeightsError(f"{clip(candidate.name)}: import it first: ilgnet weights import {clip(str(candidate))}")
        return candidate.stem, candidate
    raise WeightsError(f"weights {quoted(name_or_path)} are not installed (see 'ilgnet weights list')")


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
        raise NoWeightsError(f"{clip(name)} is not installed and downloads are off (--offline or ILGNET_OFFLINE)",
                             _ways_for(registry, name))
    try:
        return fetch(name, registry=registry, progress=progress).name
    except NoWeightsError:
        raise  # already says what failed, then the ways
    except Exception as exc:  # noqa: BLE001 - any failure ends in the same three options
        raise NoWeightsError(f"could not fetch {clip(name)}: {first_line(exc, 300)}",
                             _ways_for(registry, name)) from None


def load_model(name_or_path: str, device: torch.device | str = "cpu") -> LoadedWeights:
    """An eval-mode model with complete weights (a taste composed with its base), the mean that
    belongs to them, their verified sha256 and their provenance.

    The network is built without memory of its own and takes the file's (memory-mapped) tensors:
    loading never pays for random initial weights. The file's digest and finite values are checked
    on first load and remembered until the file changes."""
    name, path = resolve(name_or_path)
    sha = verified_sha256(path) if path.is_file() else None
    state, meta = read_weights(path)
    architecture = meta.get("architecture", ARCH_FULL)
    if architecture == ARCH_TRUNK:
        raise WeightsError(f"{clip(name)} holds only the {ARCH_TRUNK} (for training), not a scoring model")
    if architecture == ARCH_TASTE:
        return _load_taste(name, path, state, meta, sha, device)
    if architecture != ARCH_FULL:
        raise WeightsError(f"{clip(name)}: unknown architecture {quoted(architecture)}")
    check_state(state, full=True, values=sha is None)
    if sha is None:
        sha = file_digest(path)
        _remember_verified(path, sha)
    model = empty_ilgnet()
    model.load_state_dict(state, assign=True)  # the loaded tensors themselves: no second copy
    model.eval().to(device)
    return LoadedWeights(model=model, mean=_meta_mean(meta, path), sha256=sha, name=name, path=path,
                         provenance=Provenance.loads(meta.get("provenance")), architecture=ARCH_FULL)


def _load_taste(name: str, path: Path, state: dict[str, torch.Tensor], meta: dict[str, str], sha: str | None,
                device: torch.device | str) -> LoadedWeights:
    if set(state) != {HEAD_WEIGHT, HEAD_BIAS}:
        raise WeightsError(f"{clip(name)}: a taste holds {HEAD_WEIGHT} and {HEAD_BIAS} only")
    check_values(state)
    base_name, base_sha = meta.get("base", ""), meta.get("base_sha256", "")
    candidates = ([base_name] if NAME_RE.fullmatch(base_name or "") else []) + [
        i.name for i in installed_all() if i.sha256 == base_sha and i.name != base_name]
    for candidate in candidates:
        if installed(candidate) is None:
            continue
        base = load_model(candidate, device)
        if base.sha256 == base_sha:
            try:
                model = TasteModel(base.model, state[HEAD_WEIGHT], state[HEAD_BIAS])
            except ValueError as exc:
                raise WeightsError(f"{clip(name)}: {exc}") from None
            if sha is None:
                sha = file_digest(path)
                _remember_verified(path, sha)
            return LoadedWeights(model=model.eval().to(device), mean=base.mean, sha256=sha, name=name, path=path,
                                 provenance=Provenance.loads(meta.get("provenance")), architecture=ARCH_TASTE,
                                 base=base)
    raise WeightsError(f"taste {clip(name)} needs its base weights {quoted(base_name)} (sha256 {base_sha[:12]}...), "
                       "which are not installed (or changed); install them again")


# --------------------------------------------------------------------------- fetch / verify


def fetch(name: str, *, registry: Registry | None = None, progress: ProgressFn | None = None,
          stats: DownloadStats | None = None, retries: int = 4, backoff: float = 1.0) -> Installed:
    """Download a registry entry and convert it into the store: its sources in order (the first
    canonical, then mirrors), resuming partial downloads, checking the published checksum where
    there is one. Where none is published, the file must parse as the architecture it claims, and
    its sha256 is pinned in the store's settings on the first fetch."""
    from ilgnet_cli.runtime.download import MAX_WEIGHTS_BYTES

    registry = registry or load_registry()
    if offline():
        raise NoWeightsError(f"ILGNET_OFFLINE is set: not downloading {clip(name)}", _ways_for(registry, name))
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
            digest = file_digest(path)
            pinned = _config().get("pinned", {})
            before = pinned.get(name) if isinstance(pinned, dict) else None
            if checksum is None and isinstance(before, str) and before != digest:
                return (f"sha256 {digest[:12]}... differs from the file fetched before ({before[:12]}..., pinned "
                        "in the store's config.json); remove the pin there if the publisher changed the file")
            if spec.kind == "caffemodel":
                done.append(import_caffemodel(path, name, spec.mean, trunk=spec.architecture == ARCH_TRUNK,
                                              source=stats.url or path.name, provenance=spec.provenance))
            else:
                done.append(add_safetensors(path, name, spec.mean))
            if checksum is None:
                _pin(name, digest)
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
        return f"could not download {clip(name)}: could not reach {where} (no network?)"
    return f"could not download {clip(name)}: " + ("its source failed" if n == 1 else f"all {n} sources failed")


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
    repaired: list[str] = field(default_factory=list)  # what verify finished, rolled back or removed


def _repair_pending(name: str) -> str | None:
    """Finish or roll back an install cut short (kill -9, power loss); what was done, or None."""
    try:
        pending = _pending_path(name)
    except WeightsError:
        return None
    if not pending.exists():
        return None
    target = _store_file(name, ".safetensors")
    try:
        if _matches(pending, target):
            os.replace(pending, _record_path(name))
            return f"{name}: finished an install that was cut short (the new weights are in place)"
        pending.unlink()
        return f"{name}: rolled back an install that was cut short (the previous weights stay)"
    except OSError as exc:
        return f"{name}: could not repair an interrupted install ({exc.strerror or exc})"


def repair_store() -> list[str]:
    """What verify found wrong in the store as a whole and mended: interrupted installs finished
    or rolled back, orphaned temp files removed. Weights files without a record are reported."""
    notes = []
    folder = weights_dir()
    if folder.is_dir():
        for p in sorted(folder.glob(".*.pending.json")):
            name = p.name[1:-len(".pending.json")]
            if NAME_RE.fullmatch(name) and (note := _repair_pending(name)):
                notes.append(note)
    for tmp in _orphans():
        try:
            size = tmp.stat().st_size
            tmp.unlink()
            notes.append(f"removed {tmp.name}, the temp file of an install that never finished ({size / 1e6:.0f} MB)")
        except OSError:
            continue
    return notes


def verify(name: str) -> VerifyResult:
    try:
        _check_name(name)
        repaired = [n for n in [_repair_pending(name)] if n]
        rec = installed(name)
    except WeightsError as exc:
        return VerifyResult(clip(name), False, str(exc))
    if rec is None:
        if name in _unrecorded():
            return VerifyResult(name, False, f"{name}.safetensors has no install record (an install cut short?); "
                                             f"install it again with 'ilgnet weights add', or remove it", repaired)
        return VerifyResult(name, False, "not installed", repaired)
    if not rec.path.is_file():
        return VerifyResult(name, False, f"file missing: {rec.path}", repaired)
    actual = file_digest(rec.path)
    if actual != rec.sha256:
        return VerifyResult(name, False, f"sha256 mismatch (recorded {rec.sha256[:12]}..., now {actual[:12]}...)",
                            repaired)
    try:
        state, meta = read_weights(rec.path)
        arch = meta.get("architecture", ARCH_FULL)
        if arch == ARCH_TASTE:
            check_values(state)
        else:
            check_state(state, full=arch == ARCH_FULL)
    except WeightsError as exc:
        return VerifyResult(name, False, str(exc), repaired)
    _remember_verified(rec.path, actual)
    return VerifyResult(name, not repaired, f"ok (sha256 {actual[:12]}..., {len(state)} tensors)", repaired)


# --------------------------------------------------------------------------- the default, settings


def ensure_default(*, allow_download: bool = True, progress: ProgressFn | None = None) -> str:
    """Name of the default weights (:func:`default_name`), fetched on first use if allowed.

    Never silently another set: when the default is absent and cannot be fetched, the error
    names the installed ones and asks for ``-w``."""
    registry = load_registry()
    default = default_name(registry)
    _repair_pending(default)
    if installed(default) is not None:
        return default
    if default not in registry.weights:
        raise NoWeightsError(f"the default weights {quoted(default)} are not installed any more; "
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


def remove(name: str) -> bool:
    """Delete ``weights/NAME.*``; False if there was nothing (an invalid name is never installed).

    Only the store files are unlinked (a link itself, never what it points to): neither the
    name nor the record's ``path`` can reach outside the store."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return False
    removed = False
    for p in (weights_dir() / f"{name}.safetensors", weights_dir() / f"{name}.json",
              weights_dir() / f".{name}.pending.json"):
        if p.is_symlink() or p.exists():
            p.unlink()
            removed = True
    return removed


