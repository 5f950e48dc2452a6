"""The CLI's shared pieces: one progress-bar factory for every command."""

from __future__ import annotations

from rich.console import Console

from ilgnet_cli.cli.common import progress_bar


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
    assert progress_bar(quiet=True).disable and not bar.disable


def test_download_bar_counts_bytes():
    bar = progress_bar(data=True)
    task = bar.add_task("downloading", total=2_000_000)
    bar.update(task, completed=1_000_000)
    assert "1.0/2.0 MB" in _render(bar)
