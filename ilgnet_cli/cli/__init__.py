"""The ``ilgnet`` command line: a thin Typer layer over the library modules.

Exit codes: 0 success, 1 failure (nothing could be done), 2 usage error, 130 interrupted.
Errors are one line on stderr; ``--json`` output goes to stdout.
"""

from __future__ import annotations

import os
import sys

# Each module registers its commands on the app when imported.
from ilgnet_cli.cli import data, learn, score, training, weights  # noqa: F401, E402
from ilgnet_cli.cli.common import app, err

__all__ = ["app", "main"]


def main() -> None:
    # Scoring runs the model's OpenMP threads beside the decoding workers on the same cores;
    # spinning OpenMP threads would burn cycles the decoders need (measured: ~3% more images/s
    # on 2 cores, model-only speed unchanged). Read by libgomp when torch loads, hence here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
