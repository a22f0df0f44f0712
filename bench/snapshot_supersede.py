"""What keeping one snapshot per profile costs the history, per delete of superseded rows.

Embedded ClickHouse (chDB) in a temporary directory: ``profile_snapshots`` as the history
creates it, prefilled with ``--profiles`` snapshots, then ``--rounds`` rounds of the
history's write: ``--per`` newer snapshots of random profiles, inserted, and the delete of
the rows they supersede, done both ways in one run:

- mutation: a lightweight ``DELETE`` as a mutation of the parts (ClickHouse before 25.7,
  or a table without block columns), waited for;
- patch: the same ``DELETE`` written as a patch part (``sinks/history.py: PATCH_DELETE``).

Prints wall and CPU per round (the process: the client thread and chDB's own threads,
merges included) and checks the table holds one row per profile after each way.

    .venv/bin/python bench/snapshot_supersede.py --profiles 50000 --per 3500 --rounds 20
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sinks.clickhouse import connect
from sinks.history import Batch, HistoryWriter, migrate

COLUMNS = ["profile_id", "snapshot", "version", "at"]


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def shots(ids: list[int], version: int) -> list[list[Any]]:
    at = datetime.now(UTC)
    return [
        [
            str(i),
            json.dumps(
                {
                    "profile_id": str(i),
                    "traits": {"name": f"n{version}", "city": "Shanghai"},
                    "tags": ["member", "active"],
                    "counters": {"orders": version % 7},
                }
            ),
            version,
            at,
        ]
        for i in ids
    ]


def run(client: Any, db: str, patches: bool, args: argparse.Namespace) -> None:
    migrate(client, db)
    if not patches:
        client.command(
            f"ALTER TABLE {db}.profile_snapshots MODIFY SETTING "
            "enable_block_number_column = 0, enable_block_offset_column = 0"
        )
    writer = HistoryWriter(client, db)
    version = 1
    for first in range(0, args.profiles, 5_000):
        ids = list(range(first, min(first + 5_000, args.profiles)))
        writer.write(Batch("profile_snapshots", COLUMNS, shots(ids, version), f"pre{first}"))
        version += 1
    rnd = random.Random(args.seed)
    walls, cpus = [], []
    for n in range(args.rounds):
        batch = Batch(
            "profile_snapshots",
            COLUMNS,
            shots(rnd.sample(range(args.profiles), args.per), version),
            f"r{n}",
        )
        version += 1
        wall, cpu = time.perf_counter(), cpu_s()
        writer.write(batch)
        walls.append(time.perf_counter() - wall)
        cpus.append(cpu_s() - cpu)
    rows = int(client.command(f"SELECT count() FROM {db}.profile_snapshots"))
    ids = int(client.command(f"SELECT uniqExact(profile_id) FROM {db}.profile_snapshots"))
    label = "patch part" if patches else "mutation"
    wall_ms, cpu_ms = statistics.median(walls) * 1000, statistics.mean(cpus) * 1000
    print(
        f"{label:<11} insert + delete per round: wall median {wall_ms:6.0f} ms, "
        f"CPU mean {cpu_ms:6.0f} ms; rows {rows:,} for {ids:,} profiles"
    )
    if rows != ids:
        raise SystemExit(f"{label}: {rows} rows for {ids} profiles, not one each")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=50_000)
    parser.add_argument("--per", type=int, default=3_500, help="snapshots per insert")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        client = connect(None, Path(tmp) / "chdb")
        print(
            f"{args.profiles:,} profiles, {args.per:,} newer snapshots per round, "
            f"{args.rounds} rounds"
        )
        run(client, "mut", False, args)
        run(client, "patch", True, args)


if __name__ == "__main__":
    main()
