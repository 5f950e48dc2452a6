"""Start-up time and memory of the commands a new user runs first, as ratios to `import torch`
measured in the same run (issue #24).

    python benchmarks/bench_startup.py [--repeats 5]

Each command runs as its own process (`python -m ilgnet_cli ...`) with a fresh ILGNET_HOME holding
one set of real-size (150.9 M parameter) random weights; the photo is a 22 MP camera JPEG from
../shared. Wall time is the median over --repeats runs (after one warm-up run that fills the page
cache), peak RSS the largest of the main process (wait4's ru_maxrss). Targets: `--help` < 0.5x
and one photo <= 1.6x `import torch`; one photo's peak RSS <= 1.3 GB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT.parent / "shared" / "photos" / "camera" / "Canon_EOS-5D-Mark-III.jpg"


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB of the process itself, exit code)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - t, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not PHOTO.exists():
        sys.exit(f"needs {PHOTO}")
    work = Path(tempfile.mkdtemp(prefix="ilgnet-bench-startup-"))
    try:
        env = {**os.environ, "ILGNET_HOME": str(work / "home"), "ILGNET_DATA": str(work / "data"),
               "ILGNET_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        # Made in a child process: this one must never hold torch or the weights, or every command it
        # starts would inherit its peak RSS (Linux carries ru_maxrss across fork and exec).
        weights = work / "random.safetensors"
        make = ("import sys; sys.path[:0] = sys.argv[2:]; from helpers import random_ilgnet_layers; "
                "from ilgnet_cli.model.store import save_weights; "
                "state = {f'{n.replace(\"/\", \".\")}.{k}': v for n, _, (w, b) in random_ilgnet_layers(seed=1) "
                "for k, v in (('weight', w), ('bias', b))}; save_weights(sys.argv[1], state, 'ava1')")
        py = [sys.executable]
        subprocess.run([*py, "-c", make, str(weights), str(ROOT / "tests"), str(ROOT)], env=env, check=True)
        subprocess.run([*py, "-m", "ilgnet_cli", "weights", "add", str(weights), "--name", "rnd"], env=env,
                       check=True, capture_output=True)
        cases = {
            "import torch": [*py, "-c", "import torch"],
            "ilgnet --help": [*py, "-m", "ilgnet_cli", "--help"],
            "ilgnet --version": [*py, "-m", "ilgnet_cli", "--version"],
            "ilgnet weights list": [*py, "-m", "ilgnet_cli", "weights", "list"],
            "ilgnet score ONE_PHOTO -w rnd --no-cache": [*py, "-m", "ilgnet_cli", "score", str(PHOTO), "-w", "rnd",
                                                         "--no-cache"],
        }
        results = {}
        for label, cmd in cases.items():
            run(cmd, env)  # warm-up: page cache, the first load's verification
            times, rss = [], []
            for _ in range(args.repeats):
                t, m, code = run(cmd, env)
                if code != 0:
                    sys.exit(f"{label} exited {code}")
                times.append(t)
                rss.append(m)
            results[label] = (statistics.median(times), max(rss))
        base = results["import torch"][0]
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, median of {args.repeats} runs\n")
        print("| command | seconds | x import torch | peak RSS (MB) |")
        print("| --- | ---: | ---: | ---: |")
        for label, (t, m) in results.items():
            print(f"| `{label}` | {t:.2f} | {t / base:.2f} | {m:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
