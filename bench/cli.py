"""How long `labkit --help` and `labkit SUBCOMMAND --help` take, against a bare `python -c pass`.

The target is at most 0.3 s on 2 cores: the parser imports neither torch, Keras nor nbformat (labkit/cli.py).
For comparison, the row "import labkit.models" shows what importing torch and Keras costs.

    python bench/cli.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES = [
    ("python -c pass", ["-c", "pass"]),
    ("labkit --help", ["-m", "labkit.cli", "--help"]),
    *[(f"labkit {sub} --help", ["-m", "labkit.cli", sub, "--help"]) for sub in ("info", "fetch", "evaluate", "explain", "release")],
    ("import labkit.models (torch, Keras)", ["-c", "import labkit.models"]),
]


def seconds(args: list[str], repeats: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, capture_output=True, env=env, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'command':<40} {'best':>8} {'median':>8}   ({args.repeats} runs, {os.cpu_count()} cores)")
    for name, argv in CASES:
        times = sorted(seconds(argv, 1 if "models" in name else args.repeats))
        print(f"{name:<40} {times[0]:>7.3f}s {times[len(times) // 2]:>7.3f}s")


if __name__ == "__main__":
    main()
