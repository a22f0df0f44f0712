"""ClickHouse cannot take writes for a while: the history backs off and catches up, once.

With embedded chDB there is no server to stop: the history's data directory sits on a small
filesystem that is then filled, so every insert fails (NOT_ENOUGH_SPACE) until space comes
back. That is what a full disk or a server refusing inserts looks like to the history stage;
it does not simulate a server that hangs without answering (docs/operations.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deploy.settings import Settings
from tests.integration.faults.conftest import on_services
from tests.support.faults import SCALE, Feed, events_in_redis, reconcile, scaled, small_disk
from tests.support.server import running_api
from tests.support.services import Services
from tests.support.worker import PIPELINE_TOPICS as TOPICS
from tests.support.worker import WorkerProcess

ALL = ["history", "identity", "profiles"]


def test_history_backs_off_while_clickhouse_refuses_and_catches_up_once(
    services: Services, prefix: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    settings: Settings = on_services(services, prefix)
    with small_disk(tmp_path / "chdb-disk", 64 * SCALE) as disk, running_api(settings) as api:
        worker = WorkerProcess(settings, tmp_path, ALL)
        worker.env["CDP_CLICKHOUSE__PATH"] = str(disk.path / "chdb")
        workers.append(worker.start())
        feed = Feed(api, customers=50)
        feed.send(scaled(500))
        worker.wait_caught_up(TOPICS)

        disk.fill()
        feed.send(scaled(2000))
        # The rest keeps working: every event is resolved and folded into its profile...
        worker.wait_for(
            lambda: events_in_redis(settings) == scaled(2500),
            "2500 events folded (times the scale)",
        )
        # ...while the history waits, retrying, with the disk named in its log.
        worker.wait_for(
            lambda: "NOT_ENOUGH_SPACE" in worker.log.read_text(errors="replace"),
            "the history's retry logged",
        )
        assert "processor.retry" in worker.tail(20_000)

        disk.free()
        worker.wait_caught_up(TOPICS)
        assert worker.stop() == 0
        counts = reconcile(settings, worker, feed)
    assert counts["history"] == scaled(2500)


def _on_a_small_disk(tmp_path: Path, script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` in a process of its own (chDB is one data directory per process) with
    a 64 MB disk as its first argument; its last line of output, as JSON."""
    with small_disk(tmp_path / "disk", 64) as disk:
        done = subprocess.run(
            [sys.executable, "-c", script, str(disk.path), *args],
            cwd=Path(__file__).resolve().parents[3],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


#: Script lines that fill the disk at ``disk`` with a ballast file, up to its last byte.
_FILL_THE_DISK = """
with open(disk / "ballast", "wb") as ballast:
    try:
        while True:
            ballast.write(bytes(1 << 20))
            ballast.flush()
    except OSError:
        pass
"""

#: In a process of its own (chDB is one data directory per process): snapshots stored, the
#: disk filled, then a delete of the 500 older versions (``argv[2]``).
_DELETE_ON_A_FULL_DISK = (
    """
import json, os, sys
from pathlib import Path
from runtime.exceptions import StoreUnavailable
from sinks.clickhouse import connect, mutate
disk = Path(sys.argv[1])
client = connect(None, disk / "chdb")
client.command("CREATE DATABASE d")
client.command("CREATE TABLE d.s (id String, v UInt64) ENGINE = ReplacingMergeTree(v) ORDER BY id")
client.insert("d.s", [[str(i), 1] for i in range(1000)], column_names=["id", "v"])
client.insert("d.s", [[str(i), 2] for i in range(500)], column_names=["id", "v"])
"""
    + _FILL_THE_DISK
    + """older = sys.argv[2]
out = {}
try:
    mutate(client, "d", "s", older, timeout_s=2)
    out["full"] = "applied"
except StoreUnavailable as exc:
    out["full"] = str(exc)
out["rows_while_full"] = client.command("SELECT count() FROM d.s")
os.unlink(disk / "ballast")
mutate(client, "d", "s", older, timeout_s=60)
out["rows_after"] = client.command("SELECT count() FROM d.s")
print(json.dumps(out), flush=True)
os._exit(0)
"""
)


@pytest.mark.parametrize(
    "older",
    [
        # The history's: a lightweight delete of the snapshots a newer one supersedes.
        "DELETE FROM d.s WHERE (id, v) NOT IN (SELECT id, max(v) FROM d.s GROUP BY id)",
        # The erasure's: a mutation that rewrites the parts.
        "ALTER TABLE d.s DELETE WHERE v = 1 AND toUInt64(id) < 500",
    ],
    ids=["lightweight", "mutation"],
)
def test_a_delete_on_a_full_disk_fails_for_a_retry_instead_of_waiting_without_end(
    tmp_path: Path, older: str
) -> None:
    # ClickHouse's own wait for a delete it cannot start (no space for its result) has no
    # end, and every call of the process's embedded client queues behind it.
    out = _on_a_small_disk(tmp_path, _DELETE_ON_A_FULL_DISK, older)
    assert out["full"].startswith("a delete on d.s is not applied after 2 s"), out
    assert out["rows_while_full"] == 1500  # nothing deleted while the disk is full
    assert out["rows_after"] == 1000  # once space is back: one row per id


#: The history's own supersede where ClickHouse has lightweight updates (chDB does): a patch
#: part, written like an insert, so a full disk fails it at once instead of leaving a
#: mutation to wait for.
_PATCH_DELETE_ON_A_FULL_DISK = (
    """
import json, os, sys
from datetime import UTC, datetime
from pathlib import Path
from runtime.exceptions import StoreUnavailable
from sinks.clickhouse import connect
from sinks.history import Batch, HistoryWriter, migrate, patches_on
disk = Path(sys.argv[1])
client = connect(None, disk / "chdb")
migrate(client, "h")
writer = HistoryWriter(client, "h")
columns = ["profile_id", "snapshot", "version", "at"]
def shots(ids, version):
    at = datetime.now(UTC)
    return [[str(i), json.dumps({"profile_id": str(i), "v": version}), version, at] for i in ids]
writer.write(Batch("profile_snapshots", columns, shots(range(1000), 1), "one"))
"""
    + _FILL_THE_DISK
    + """out = {"patches": patches_on(client, "h")}
newer = Batch("profile_snapshots", columns, shots(range(500), 2), "two")
try:
    writer.write(newer)
    out["full"] = "stored"
except StoreUnavailable as exc:
    out["full"] = str(exc)
out["rows_while_full"] = client.command("SELECT count() FROM h.profile_snapshots")
os.unlink(disk / "ballast")
writer.write(newer)  # the retry: the insert is deduplicated by its token if it was stored
out["rows_after"] = client.command("SELECT count() FROM h.profile_snapshots")
out["newer_after"] = client.command("SELECT count() FROM h.profile_snapshots WHERE version = 2")
out["mutations"] = client.command("SELECT count() FROM system.mutations WHERE database = 'h'")
print(json.dumps(out), flush=True)
os._exit(0)
"""
)


def test_a_patch_delete_of_superseded_snapshots_on_a_full_disk_fails_for_a_retry(
    tmp_path: Path,
) -> None:
    out = _on_a_small_disk(tmp_path, _PATCH_DELETE_ON_A_FULL_DISK)
    assert out["patches"] is True
    assert out["full"].startswith("ClickHouse refused the profile_snapshots batch"), out
    # Nothing half-done is visible: the older snapshots stay until the newer replace them.
    assert out["rows_while_full"] in (1000, 1500), out
    assert out["rows_after"] == 1000, out  # one row per profile once space is back
    assert out["newer_after"] == 500, out
    assert out["mutations"] == 0, out  # the supersede was a patch, not a mutation
