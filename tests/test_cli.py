"""What only the command line shows: help and version, usage errors as one line naming the help
to read (exit 2), failures as one line (exit 1) with hostile text shown escaped, the exit code
of a signal, the options every command shares, and the progress bars."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from helpers import one_line
from rich.console import Console

from ilgnet_cli import __version__
from ilgnet_cli.cli.common import Interrupted, exit_code, progress_bar

RAW_CONTROLS = ("\x1b", "\x07", "\r", "\u202e", "\x9b", "\x7f")


def test_version_and_help_list_the_commands(cli):
    result = cli("--version")
    assert result.code == 0 and result.stdout.strip() == f"ilgnet {__version__}"
    result = cli("--help")
    assert result.code == 0
    commands = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert commands[:8] == ["score", "learn", "weights", "download", "partition", "prepare", "train", "eval"]
    result = cli("weights", "--help")
    for command in ("list", "fetch", "import", "add", "default", "verify", "remove"):
        assert f"  {command} " in result.stdout
    bare = cli()
    assert bare.code == 2 and "Usage: ilgnet" in bare.output  # no command: the help, as a usage error


@pytest.mark.parametrize(("args", "message"), [
    (["score"], "Missing argument 'PATH...'"),
    (["score", "x.jpg", "--format", "pdf"], "'pdf' is not one of 'table', 'csv', 'json', 'html'"),
    (["score", "x.jpg", "--top", "0"], "--top"),
    (["score", "x.jpg", "--no-such-option"], "No such option: --no-such-option"),
    (["eval", "--tta", "5crop"], "'5crop' is not one of"),
    (["train", "--precision", "fp32"], "No such option"),
])
def test_usage_errors_are_one_line_naming_the_help(cli, args, message):
    """Click's own four-line block is gone when ilgnet runs as a program: one line, then exit 2."""
    result = cli(*args)
    assert result.code == 2, result.output
    line = one_line(result.stderr, message)
    assert line.startswith("error: ") and line.endswith(f"(see 'ilgnet {args[0]} --help')")


def test_the_real_program_prints_them_the_same_way(cli):
    result = cli("score", "x.jpg", "--format", "pdf", subprocess=True)
    assert result.code == 2 and result.stdout == ""
    assert one_line(result.stderr).endswith("(see 'ilgnet score --help')")


@pytest.mark.parametrize(("args", "message"), [
    (["score", "x.jpg", "--device", "tpu"], "unknown device 'tpu'"),
    (["score", "x.jpg", "--copy-top", "a", "--link-top", "b"], "either --copy-top or --link-top"),
    (["score", "x.jpg", "--exact", "--precision", "bf16"], "fp32"),
    (["score", "x.jpg", "--exact", "--decode", "fast"], "--exact is --decode exact"),
    (["score", "x.jpg", "--format", "html"], "--format html needs --output"),
    (["eval", "--precision", "auto"], "auto is for scoring"),
    (["learn", "x"], "--name NAME is required"),
    (["learn", "--name", "mine"], "give rated photos"),
])
def test_requests_that_cannot_be_done_as_asked_are_usage_errors(cli, args, message):
    result = cli(*args)
    assert result.code == 2, result.output
    one_line(result.stderr, "error: ", message)


def test_failures_are_one_line_with_hostile_text_shown_escaped(tmp_path, cli):
    """A path that tries to drive the terminal or to be read as Rich markup prints literally."""
    missing = tmp_path / "[red]gone[/red]\x1b]0;pwned\x07\u202e"
    result = cli("score", missing, "--device", "cpu", "--offline")
    assert result.code == 1
    line = one_line(result.stderr, "no such file or folder", "[red]gone[/red]\\x1b]0;pwned\\x07\\u202e")
    assert not any(c in result.stderr for c in RAW_CONTROLS) and line.startswith("error: ")
    folder = tmp_path / "[bold]dir[blink]\x1b[2J"
    folder.mkdir()
    result = cli("score", tmp_path, "--device", "cpu", "--offline", "-f", "csv", "-o", folder)  # a folder
    assert result.code == 2
    one_line(result.stderr, "[bold]dir[blink]\\x1b[2J", "it is a folder")
    assert not any(c in result.stderr for c in RAW_CONTROLS)


def test_a_signal_ends_a_run_with_128_plus_its_number():
    """SIGTERM (systemd, timeout) and SIGHUP (a closed terminal) are handled like Ctrl-C: what
    finished is reported and kept, and the exit code says which signal it was."""
    assert exit_code(Interrupted(signal.SIGTERM)) == 143
    assert exit_code(Interrupted(signal.SIGHUP)) == 129
    assert exit_code(KeyboardInterrupt()) in (130, 143, 129)  # the last signal received, Ctrl-C by default


@pytest.mark.parametrize("command", ["score", "learn", "train", "eval"])
def test_every_command_decodes_with_one_worker_per_core_by_default(cli, command):
    text = " ".join(cli(command, "--help").stdout.split())
    assert "--workers" in text and "one per CPU core" in text, command


def test_prepare_decodes_with_one_process_per_core_by_default(cli):
    from ilgnet_cli.runtime.system import default_workers

    text = " ".join(cli("prepare", "--help").stdout.split())
    assert f"--jobs <int range> Decoding processes. [default: {default_workers()};" in text


def _render(bar) -> str:
    console = Console(record=True, width=120, force_terminal=False, color_system=None)
    console.print(bar.make_tasks_table(bar.tasks))
    return console.export_text()


def test_progress_bar_shows_what_count_fields_and_hides_when_quiet():
    bar = progress_bar("loss {task.fields[loss]}", "{task.fields[rate]}")
    task = bar.add_task("training", total=40, loss="0.693", rate="12.5 it/s")
    bar.update(task, completed=3)
    text = _render(bar)
    assert "training" in text and "3/40" in text and "loss 0.693" in text and "12.5 it/s" in text
    assert bar.console.stderr  # reports on stdout stay clean
    assert progress_bar(quiet=True).disable and bar.disable == (not bar.console.is_terminal)


def test_download_bar_counts_bytes():
    bar = progress_bar(data=True)
    task = bar.add_task("downloading", total=2_000_000)
    bar.update(task, completed=1_000_000)
    assert "1.0/2.0 MB" in _render(bar)


def test_signals_wait_while_torch_loads_then_end_the_command(monkeypatch):
    # An interrupt raised inside native code's callback into Python aborts the process (seen once
    # as SIGABRT while `score` started): while torch loads, signals are blocked, then handled.
    from ilgnet_cli.cli import common

    monkeypatch.setattr(common, "_received", [])
    previous = signal.signal(signal.SIGTERM, common._on_signal)
    try:
        reached = []
        with pytest.raises(common.Interrupted), common.signals_deferred():
            # At the main thread: in the CLI no other thread exists yet (threads started while the
            # block lasts inherit it); pytest's process has torch's threads from other tests.
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
            time.sleep(0.05)
            reached.append(True)  # the signal waited for the block to end
        assert reached == [True]
        assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == set()  # nothing left blocked
    finally:
        signal.signal(signal.SIGTERM, previous)
