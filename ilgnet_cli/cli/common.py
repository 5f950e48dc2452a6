"""What every command shares: the Typer apps, consoles, one-line errors, the download bar."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ilgnet_cli._version import __version__
from ilgnet_cli.runtime.text import display


class _InOrder(typer.core.TyperGroup):
    """Commands in the order they are declared (a photographer's first, the research loop after)."""

    def list_commands(self, ctx):  # noqa: ANN001, ANN201 - Click's signature
        order = ["score", "learn", "weights", "download", "partition", "prepare", "train", "eval"]
        names = list(self.commands)
        return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


app = typer.Typer(
    name="ilgnet",
    cls=_InOrder,
    help="Score photos for aesthetic quality with ILGNet (Jin et al., WCSP 2016), and train/evaluate it on AVA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's plain help: option names and help on their own lines, paragraphs rewrapped, so that
    # `--help` reads well in an 80-column terminal (Rich's boxed table squeezed it into a column).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
weights_app = typer.Typer(help="Manage model weights: list, fetch, import, add, default, verify, remove.",
                          no_args_is_help=True, rich_markup_mode=None)
app.add_typer(weights_app, name="weights")
download_app = typer.Typer(help="Download datasets.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(download_app, name="download")

out = Console(soft_wrap=True)  # lines of text are never hard-wrapped (tables fit the width)
# Messages are never hard-wrapped: a piped log keeps each warning and each printed command whole.
err = Console(stderr=True, soft_wrap=True)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (systemd, a closed terminal, ``timeout``), handled like Ctrl-C: the run
    stops, what finished is reported and kept, temp files are removed, exit 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_received: list[int] = []


def _on_signal(signum: int, _frame: object) -> None:
    _received.append(signum)
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, _on_signal)


@contextmanager
def signals_deferred():
    """Ctrl-C, SIGTERM and SIGHUP wait (blocked, not lost) until the block ends. Importing torch
    runs native code that calls back into Python; an interrupt raised inside such a callback
    cannot unwind through C++ and aborts the process (SIGABRT, no partial report, no clean-up)."""
    sigs = {s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None}
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a pending signal is handled here, in Python


def load_torch() -> None:
    """Import torch with signals deferred; an interrupt during it ends the command like any
    other (128 + N, one line)."""
    with errors_as_messages(), signals_deferred():
        import torch  # noqa: F401


def exit_code(exc: BaseException | None) -> int:
    """128 + the signal that ended the run (Ctrl-C: 130)."""
    signum = getattr(exc, "signum", None) or (_received[-1] if _received else signal.SIGINT)
    return 128 + int(signum)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def errors_as_messages():
    """Turn the library's errors into one-line messages and exit codes: a usage error exits 2,
    any other :class:`~ilgnet_cli.errors.IlgnetError` (and OSError) 1; anything else is a bug and
    keeps its traceback."""
    from ilgnet_cli.errors import IlgnetError, UsageError

    try:
        yield
    # Messages quote file names: printed literally (no Rich markup, terminal controls escaped).
    except UsageError as exc:
        raise fail(escape(display(str(exc))), 2) from None
    except IlgnetError as exc:  # everything the library raises on purpose; anything else is a bug
        failed = fail(escape(display(str(exc))))
        for line in getattr(exc, "details", ()):  # the one exception to "one line": the first-run help block
            err.print(escape(display(line)), highlight=False, soft_wrap=True)
        raise failed from None
    except OSError as exc:  # disk full, permissions, a path that vanished: one line, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        raise fail(escape(display(f"{where}{exc.strerror or exc}"))) from None
    except KeyboardInterrupt as exc:
        err.print("interrupted")
        raise typer.Exit(exit_code(exc)) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"ilgnet {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """ILGNet image aesthetics: `ilgnet score ~/Photos`."""


def progress_bar(*fields: str, quiet: bool = False, data: bool = False) -> Progress:
    """Every command's progress bar: what (the task's description), bar, done/total (or bytes and
    speed with ``data``), the command's own ``fields`` (Rich templates over ``task.fields``), time
    left. On stderr and transient, so reports on stdout stay clean; ``quiet`` hides it, and so does
    a stderr that is not a terminal (a log or a pipe gets nothing from a transient bar but the
    blank line Rich leaves when it stops: it came before every summary and error message)."""
    counts = (DownloadColumn(), TransferSpeedColumn()) if data else (MofNCompleteColumn(),)
    return Progress(TextColumn("{task.description}"), BarColumn(), *counts, *(TextColumn(f) for f in fields),
                    TimeRemainingColumn(), console=err, transient=True, disable=quiet or not err.is_terminal)


class _LazyProgress:
    """A download progress bar that only appears once bytes arrive (no blank line otherwise)."""

    def __init__(self) -> None:
        self.progress = progress_bar(data=True)
        self.task: TaskID | None = None

    def update(self, done: int, total: int | None) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("downloading", total=total)
        self.progress.update(self.task, completed=done, total=total)

    def __enter__(self) -> _LazyProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.progress.stop()


def download_progress() -> tuple[_LazyProgress, Callable[[int, int | None], None]]:
    lazy = _LazyProgress()
    return lazy, lazy.update

def ava_dir(ava: Path | None) -> Path:
    from ilgnet_cli.runtime.paths import default_ava

    return ava if ava is not None else default_ava()
