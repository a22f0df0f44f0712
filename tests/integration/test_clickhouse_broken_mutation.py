"""A mutation entry a full disk left empty: embedded ClickHouse still opens (real chDB).

chDB runs one embedded server per process, so each open is a process of its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

OPEN_AND_COUNT = """
import sys
from pathlib import Path
from sinks.clickhouse import connect
client = connect(None, Path(sys.argv[1]))
client.command("CREATE DATABASE IF NOT EXISTS d")
client.command("CREATE TABLE IF NOT EXISTS d.t (a UInt64) ENGINE = MergeTree ORDER BY a")
if sys.argv[2] == "insert":
    client.command("INSERT INTO d.t VALUES (1), (2)")
print(client.query("SELECT count() FROM d.t").result_rows[0][0])
"""


def open_and_count(path: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", OPEN_AND_COUNT, str(path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_an_empty_mutation_entry_is_set_aside_and_the_data_opens(tmp_path: Path) -> None:
    path = tmp_path / "chdb"
    assert open_and_count(path, "insert") == "2"
    table = next(path.glob("store/*/*/all_*")).parent
    (table / "mutation_999.txt").write_bytes(b"")  # what ENOSPC left of a delete's entry
    assert open_and_count(path, "read") == "2"
    assert not (table / "mutation_999.txt").exists()
    assert (table / "broken_mutation_999.txt").exists()
