"""Start-up time: what a command costs before it does anything.

    python benchmarks/startup.py [--repeats 5]

Runs each command in a fresh process ``--repeats`` times and prints one JSON line with
the median wall times in seconds: ``energydsl --help``, ``import energydsl``, ``energydsl
fmt --check`` on one spec (no torch), and ``import energydsl; energydsl.load`` (torch, the
first public name used).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SPEC = str(Path(__file__).resolve().parents[1] / "specs" / "sparse_coding.energy")
COMMANDS = {
    "energydsl --help": [sys.executable, "-m", "energydsl.cli", "--help"],
    "import energydsl": [sys.executable, "-c", "import energydsl"],
    "energydsl fmt --check": [sys.executable, "-m", "energydsl.cli", "fmt", "--check", SPEC],
    "import energydsl; energydsl.load": [sys.executable, "-c", "import energydsl; energydsl.load"],
}


def median_seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    print(json.dumps({name: median_seconds(command, repeats) for name, command in COMMANDS.items()}))


if __name__ == "__main__":
    main()
