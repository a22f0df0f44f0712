"""Run the fault suite at a larger volume and report each case's reconciliation and time.

The cases are the fault suite's (``tests/integration/faults``: Redis restarted with its AOF,
Redis's disk full, the Kafka broker restarted, ClickHouse refusing writes, a rebalance with a
worker killed -9), each on real services it starts itself, sending ``--scale`` times the
suite's events. Every case asserts the exact reconciliation (acknowledged = in Kafka =
counted once in the profiles = stored once in the history); this run prints those counts
and how long each case took, start to reconciled.

    .venv/bin/python bench/faults.py --scale 10
    .venv/bin/python bench/faults.py --scale 5 --cases "redis or kafka"

Needs root (the disk cases mount a small tmpfs), Java for Kafka and redis-server.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10, help="times the suite's volumes")
    parser.add_argument("--cases", default=None, help="a pytest -k expression")
    args = parser.parse_args()
    report = Path(tempfile.mkdtemp(prefix="faults-")) / "report.jsonl"
    env = {
        **os.environ,
        "CDP_FAULTS_SCALE": str(args.scale),
        "CDP_FAULTS_REPORT": str(report),
        "XDG_STATE_HOME": tempfile.mkdtemp(prefix="faults-state-"),
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0"]
    command += ["tests/integration/faults"] + (["-k", args.cases] if args.cases else [])
    began = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, check=False)
    print(f"\nscale {args.scale}: {time.monotonic() - began:.0f} s, pytest exit {done.returncode}")
    rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    print(f"{'case':<75} {'sent':>7} {'folded':>7} {'history':>7} {'503s':>5}")
    for row in rows:
        case = row["case"].rpartition("::")[2]
        print(
            f"{case:<75} {row['sent']:>7} {row['folded']:>7} {row['history']:>7} "
            f"{row['refused']:>5}"
        )
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
