"""Fixtures every test file may use: an empty store per test, the CLI runner, photo folders, the
tiny stand-in model and real-size random ILGNet weights, caffemodels and the local HTTP server.

Helpers that tests import are plain modules beside this one (helpers.py, localserver.py,
caffe_schema.py, trained.py...): pytest's default import mode puts tests/ on sys.path.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import camera_photos, layers_state, random_ilgnet_layers, shared_path, tiny_weights
from localserver import LocalServer


@pytest.fixture(autouse=True)
def ilgnet_home(tmp_path, monkeypatch):
    """Every test gets an empty weights store and no network access to real hosts."""
    home = tmp_path / "ilgnet-home"
    monkeypatch.setenv("ILGNET_HOME", str(home))
    monkeypatch.setenv("ILGNET_DATA", str(tmp_path / "ilgnet-data"))
    # Scores in tests compare across runs and code paths: fp32 everywhere unless a test asks for
    # bf16 (the gate's tests set ILGNET_NATIVE_BF16=1 to exercise it).
    monkeypatch.setenv("ILGNET_NATIVE_BF16", "0")
    monkeypatch.delenv("ILGNET_OFFLINE", raising=False)
    monkeypatch.delenv("ILGNET_REGISTRY", raising=False)
    return home


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process umask for the test; the old one comes back after it."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.fixture
def server():
    srv = LocalServer()
    try:
        yield srv
    finally:
        srv.close()


class Registry:
    """``registry({name: entry}, default=...)`` points ILGNET_REGISTRY at a registry of these
    entries (the path); ``registry.entry(sources, ...)`` is one entry as weights/registry.json
    writes them."""

    def __init__(self, folder: Path, monkeypatch) -> None:
        self.folder, self.monkeypatch = folder, monkeypatch

    def __call__(self, entries: dict, default: str = "test-ava1") -> Path:
        import json

        path = self.folder / "registry.json"
        path.write_text(json.dumps({"default": default, "weights": entries}))
        self.monkeypatch.setenv("ILGNET_REGISTRY", str(path))
        return path

    @staticmethod
    def entry(sources: list, checksum: str | None = None, *, size: int | None = None, kind: str = "caffemodel",
              arch: str = "ilgnet", mean: str = "ava1", file: str = "ILGnet-test.caffemodel") -> dict:
        return {"description": "test weights", "kind": kind, "architecture": arch, "file": file,
                "sources": sources, "checksum": checksum, "size": size, "mean": mean}


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Registry:
    return Registry(tmp_path, monkeypatch)


# --------------------------------------------------------------------------- the CLI


@dataclass
class Result:
    """What one ``ilgnet`` run gave."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def errors(self) -> list[str]:
        """The non-blank lines of stderr."""
        return [line for line in self.stderr.splitlines() if line.strip()]


class Cli:
    """``ilgnet ARGS``, the one way tests run the command line.

    In-process by default: ``ilgnet_cli.cli.main()`` itself (so usage errors are the program's
    one line, exit codes its own), with stdin, stdout, stderr and ``env`` swapped for the call;
    seconds faster than a new interpreter importing torch. ``subprocess=True`` runs the real
    program (``python -m ilgnet_cli``) where the process itself matters: signals, crashes, native
    libraries writing to fd 2, memory limits (``data_limit``: RLIMIT_DATA in bytes), torchrun
    (``torchrun=N`` processes). :meth:`start` starts one and returns the Popen (to signal it).
    """

    COLUMNS = "200"  # reports are compared as text: one width whatever the terminal running pytest

    def __call__(self, *args: object, env: dict[str, str] | None = None, input: str | None = None,
                 timeout: float = 600, subprocess: bool = False, data_limit: int | None = None,
                 torchrun: int = 0) -> Result:
        argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]
        if subprocess or data_limit is not None or torchrun:
            return self._subprocess(argv, env, input, timeout, data_limit, torchrun)
        return self._in_process(argv, env, input)

    def _env(self, env: dict[str, str] | None) -> dict[str, str]:
        return {**os.environ, "COLUMNS": self.COLUMNS, "NO_COLOR": "1", **(env or {})}

    def _command(self, argv: list[str], torchrun: int) -> list[str]:
        if not torchrun:
            return [sys.executable, "-m", "ilgnet_cli", *argv]
        with socket.socket() as sock:  # a free port for the rendezvous
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(torchrun), "--master-port",
                str(port), "-m", "ilgnet_cli", *argv]

    def _subprocess(self, argv, env, input, timeout, data_limit, torchrun) -> Result:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))

        proc = subprocess.run(self._command(argv, torchrun), input=input, capture_output=True, text=True,
                              errors="surrogateescape", timeout=timeout, env=self._env(env),
                              preexec_fn=limit if data_limit is not None else None)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def start(self, *args: object, env: dict[str, str] | None = None) -> subprocess.Popen:
        argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]
        return subprocess.Popen(self._command(argv, 0), env=self._env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="surrogateescape")

    def _in_process(self, argv: list[str], env: dict[str, str] | None, input: str | None) -> Result:
        from typer.testing import CliRunner

        from ilgnet_cli import cli

        handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}  # main() installs its own
        saved_argv, omp = sys.argv, os.environ.get("OMP_WAIT_POLICY")
        with CliRunner().isolation(input=input, env={"COLUMNS": self.COLUMNS, "NO_COLOR": "1", **(env or {})}) as (
                out, err, _):
            sys.argv = ["ilgnet", *argv]
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            finally:
                sys.stdout.flush()  # print() output is buffered in the wrapper until flushed
                sys.stderr.flush()
                sys.argv = saved_argv
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
                if omp is None:
                    os.environ.pop("OMP_WAIT_POLICY", None)
            stdout = out.getvalue().decode("utf-8", "replace")
            stderr = err.getvalue().decode("utf-8", "replace")
        return Result(code, stdout, stderr)


@pytest.fixture
def cli() -> Cli:
    return Cli()


# --------------------------------------------------------------------------- photos


@pytest.fixture(scope="session")
def camera() -> Callable[[int], list[Path]]:
    """``camera(n)``: the first n shared camera JPEGs (real photos with EXIF), or skip."""
    return camera_photos


@pytest.fixture(scope="session")
def small_photos(tmp_path_factory) -> Callable[[int, int], list[Path]]:
    """``small_photos(n, size)``: the first n camera JPEGs downscaled to fit size x size, EXIF
    and times kept; made once per session (decoding the originals is what costs)."""

    def get(n: int, size: int) -> list[Path]:
        folder = tmp_path_factory.getbasetemp() / f"small-photos-{size}"
        folder.mkdir(exist_ok=True)
        out = []
        for src in camera_photos(n):
            target = folder / src.name
            if not target.exists():
                _small_copy(src, target, size)
            out.append(target)
        return out

    return get


@pytest.fixture
def photo_folder(tmp_path, small_photos) -> Callable[..., Path]:
    """``photo_folder(n=4, name="shoot", *, names=None, size=None)``: a folder of copies of the
    first ``n`` shared camera JPEGs (their own names unless ``names`` are given; EXIF and times
    kept). ``size``: downscaled to fit size x size (EXIF kept), for tests that need photos, not
    these photos' full pixels (decoding them is then ten times cheaper). Each call with another
    ``name`` makes another folder under tmp_path."""

    def make(n: int = 4, name: str = "shoot", *, names: list[str] | None = None, size: int | None = None) -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        sources = camera_photos(n) if size is None else small_photos(n, size)
        for i, src in enumerate(sources):
            shutil.copy2(src, folder / (names[i] if names else src.name))
        return folder

    return make


@pytest.fixture
def copies(tmp_path) -> Callable[..., list[str]]:
    """``copies(names, folder=None, source=0, size=(320, 240))``: one camera photo (the
    ``source``-th, downscaled: fast thumbnails) under each of ``names`` (str, or bytes for names
    that are not UTF-8) in ``folder`` (default tmp_path/photos); the paths, as str."""

    def make(names: list, folder: Path | None = None, source: int | Path = 0,
             size: tuple[int, int] = (320, 240)) -> list[str]:
        from PIL import Image

        folder = folder or tmp_path / "photos"
        folder.mkdir(parents=True, exist_ok=True)
        src = folder / ".src.jpg"
        photo = source if isinstance(source, Path) else camera_photos(source + 1)[source]
        with Image.open(photo) as img:
            img.convert("RGB").resize(size).save(src, quality=85)
        paths = []
        for name in names:
            target = os.path.join(os.fsencode(folder), name) if isinstance(name, bytes) else str(folder / name)
            shutil.copy(src, target)
            paths.append(os.fsdecode(target))
        src.unlink()
        return paths

    return make


def _small_copy(src: Path, target: Path, size: int) -> None:
    from PIL import Image

    with Image.open(src) as img:
        exif = img.getexif()
        small = img.convert("RGB")
        small.thumbnail((size, size))
        small.save(target, "JPEG", quality=90, exif=exif.tobytes())
    st = os.stat(src)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def evil_folder(tmp_path, copies) -> Path:
    """Attacker-controlled text in a folder: markup in a file name, script in EXIF, a broken
    file with markup in its name."""
    from PIL import Image

    folder = tmp_path / "evil"
    (src,) = copies(["<img src=x onerror=alert(1)>.jpg"], folder, size=(480, 360))
    img = Image.open(src)
    exif = img.getexif()
    exif[0x010F] = "</script><script>alert(2)</script>"  # Make
    exif[0x0110] = '"><b onmouseover=alert(3)>'  # Model
    img.save(folder / "maker.jpg", exif=exif.tobytes(), quality=90)
    (folder / "broken <i>.jpg").write_bytes(b"not an image <script>alert(4)</script>")
    return folder


# --------------------------------------------------------------------------- models


@pytest.fixture
def tiny():
    """The tiny stand-in model as loaded weights (tests/helpers.py: TinyNet): the scoring path
    at full speed. A new one per test (tests may change it)."""
    return tiny_weights()


TINY_VARIANTS = {"tiny": {}, "tiny-calm": {"gain": 0.1}, "tiny-fragile": {"offset": 20.0}}


@pytest.fixture
def tiny_cli(monkeypatch):
    """Make ``--weights tiny`` mean the tiny stand-in in in-process CLI runs: what the CLI does
    around the model (options, reports, exit codes), without 150.9 M parameters. Also
    ``tiny-calm`` (small logits: every shortcut stays faithful) and ``tiny-fragile`` (logits
    bf16 cannot carry). Returns the weights ``tiny`` loads (a test may change them)."""
    from ilgnet_cli.model import store

    loaded = {"tiny": tiny_weights()}
    original = store.load_model

    def load_model(name_or_path, device="cpu"):
        name = str(name_or_path)
        if name in TINY_VARIANTS:
            if name not in loaded:
                loaded[name] = tiny_weights(name=name, **TINY_VARIANTS[name])
            return loaded[name].to(device)
        return original(name_or_path, device)

    monkeypatch.setattr(store, "load_model", load_model)
    return loaded["tiny"]


@pytest.fixture(scope="session")
def caffemodels(tmp_path_factory):
    """Random-weight ILGNet caffemodels for deploy.prototxt: V2 (`layer`) and V1 (`layers`)."""
    from caffe_schema import write_caffemodel

    folder = tmp_path_factory.mktemp("caffemodels")
    layers = random_ilgnet_layers()
    v2, v1 = folder / "random_v2.caffemodel", folder / "random_v1.caffemodel"
    write_caffemodel(v2, layers)
    write_caffemodel(v1, layers, v1=True)
    return {"v2": v2, "v1": v1, "layers": layers}


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory):
    """Random (calibrated) real-size ILGNet weights as .safetensors: the real model end to end."""
    from ilgnet_cli.model.store import save_weights

    state = layers_state(random_ilgnet_layers(seed=1))
    return save_weights(tmp_path_factory.mktemp("weights") / "random.safetensors", state, "ava1")


@pytest.fixture(scope="session")
def ava1_weights(weights_file, tmp_path_factory):
    """``weights_file``'s tensors as the authors' AVA1 weights say they were trained (their
    registry entry's provenance: the AVA1 training list, from ImageNet): weights ``ilgnet eval``
    may compare with the paper on the AVA1 test list."""
    from ilgnet_cli.model.provenance import Provenance
    from ilgnet_cli.model.registry import load_registry
    from ilgnet_cli.model.store import read_weights, save_weights

    provenance = load_registry().weights["ilgnet-ava1"].provenance
    assert isinstance(provenance, Provenance) and provenance.known
    state, _ = read_weights(weights_file)
    return save_weights(tmp_path_factory.mktemp("ava1") / "ilgnet-ava1.safetensors", state, "ava1",
                        provenance=provenance)


@pytest.fixture(scope="session")
def ilgnet(weights_file):
    """``weights_file`` loaded (shared: tests must not change it)."""
    from ilgnet_cli.model import store

    return store.load_model(str(weights_file))
