"""The ``ilgnet`` command line: a thin Typer layer over the library modules.

Exit codes: 0 success, 1 failure (nothing could be done), 2 usage error, 128+N when ended by
signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP; the partial report is written first).
Errors are one line on stderr; ``--json`` output goes to stdout.
"""

from __future__ import annotations

import os
import sys

import typer

# Each module registers its commands on the app when imported.
from ilgnet_cli.cli import data, learn, score, training, weights  # noqa: F401, E402
from ilgnet_cli.cli.common import app, err, exit_code, install_signal_handlers

__all__ = ["app", "main"]

try:  # Typer >= 0.20 carries its own copy of Click
    from typer._click import exceptions as _click
except ImportError:  # pragma: no cover - older Typer on Click
    import importlib

    _click = importlib.import_module("click.exceptions")


def main() -> None:
    # Scoring runs the model's OpenMP threads beside the decoding workers on the same cores;
    # spinning OpenMP threads would burn cycles the decoders need (measured: ~3% more images/s
    # on 2 cores, model-only speed unchanged). Read by libgomp when torch loads, hence here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    install_signal_handlers()
    from typer.main import get_command

    from ilgnet_cli.runtime.text import display

    try:
        rv = get_command(app).main(prog_name="ilgnet", standalone_mode=False)
    except _click.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(2)
    except _click.UsageError as exc:  # one line, like every other error (Click's own takes four)
        where = exc.ctx.command_path if exc.ctx is not None else "ilgnet"
        err.print(f"[bold red]error:[/] {_escape(display(exc.format_message()))} (see '{where} --help')",
                  highlight=False, soft_wrap=True)
        sys.exit(2)
    except _click.ClickException as exc:
        err.print(f"[bold red]error:[/] {_escape(display(exc.format_message()))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort) as exc:
        err.print("interrupted")
        sys.exit(exit_code(exc))
    code = rv if isinstance(rv, int) else 0
    sys.exit(exit_code(None) if code == 130 else code)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
