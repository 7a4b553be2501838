"""Benchmark how fast the CLI answers when it has nothing heavy to do: wall time of `--help`,
a stage's `--help`, shell completion and a missing recipe, each a fresh `python -m udaseg`
process, against `python -c pass` (the interpreter's own start-up) as the ratio.

    .venv/bin/python bench/cli_startup.py [--repeat 5]

Each command runs --repeat times; the median is reported (the machine may be shared, so the
load average is printed too). Exit codes are checked: a command that fails otherwise than
expected aborts the benchmark rather than timing an error path.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMMANDS = [  # (label, argv after the interpreter, extra environment, expected exit code)
    ("python -c pass", ["-c", "pass"], {}, 0),
    ("udaseg --help", ["-m", "udaseg", "--help"], {}, 0),
    ("udaseg train --help", ["-m", "udaseg", "train", "--help"], {}, 0),
    ("completion of `udaseg tr`", ["-m", "udaseg"],
     {"_UDASEG_COMPLETE": "complete_bash", "COMP_WORDS": "udaseg tr", "COMP_CWORD": "1"}, 0),
    ("udaseg train --config missing.toml", ["-m", "udaseg", "train", "--config", "missing.toml"], {}, 1),
    ("udaseg fit-gmm --set gmm.components=0", ["-m", "udaseg", "fit-gmm", "--set", "gmm.components=0"], {}, 1),
    ("reference: import torch", ["-c", "import torch"], {}, 0),
]


def wall(argv: list[str], env: dict, expected: int, cwd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), **env},
                          capture_output=True)
    seconds = time.perf_counter() - start
    if proc.returncode != expected:
        raise SystemExit(f"{argv}: exit code {proc.returncode}, expected {expected}\n{proc.stderr.decode()[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as cwd:
        for label, argv, env, expected in COMMANDS:
            times = [wall(argv, env, expected, cwd) for _ in range(args.repeat)]
            rows.append((label, statistics.median(times), min(times)))
    base = rows[0][1]
    print(f"date {datetime.date.today()}; machine {platform.node()}, {os.cpu_count()} CPU cores, "
          f"{platform.machine()}, Python {platform.python_version()}; load average {load_before:.1f} before / "
          f"{os.getloadavg()[0]:.1f} after; median of {args.repeat} runs")
    print("| command | median wall (s) | min (s) | ratio to `python -c pass` |")
    print("|---|---:|---:|---:|")
    for label, median, fastest in rows:
        print(f"| {label} | {median:.3f} | {fastest:.3f} | {median / base:.1f} |")


if __name__ == "__main__":
    main()
