"""File imports through the ingest intake into real Kafka and Redis: report, dead letters,
idempotence, resumption after a crash, bounded memory, and the HTTP route."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from deploy.settings import PrivacySettings, Settings
from ingest.sources import Source, hash_key
from privacy.crypto import MasterKeys, is_blind, is_sealed
from runtime.readback import read_to_end
from tests.support.kafka import read_topic
from tests.support.keys import key_of
from tests.support.server import running_api
from tests.support.worker import WorkerProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "ingest" / "mapping_examples"
HEADER = ["huiyuanhao", "riqi", "danhao", "jine_fen", "mendian", "pinlei"]
POS = Source(
    name="t-pos-export",
    channel="pos",
    user_id_type="member_id",
    timezone="Asia/Shanghai",
    key_sha256=hash_key(key_of("t-pos-export")),
)


def _sales(path: Path, rows: int, bad_every: int = 0) -> Path:
    """A POS sales export: one sale per row; every ``bad_every``-th amount is not a number."""
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(HEADER)
        for i in range(1, rows + 1):
            amount = "n/a" if bad_every and i % bad_every == 0 else str(1000 + i % 50_000)
            out.writerow(
                [f"M-{i % 5000}", "2026-03-01 14:22:05", f"S-{i}", amount, "SH-01", "shoes"]
            )
    return path


def _mapping(into: Path) -> Path:
    text = (EXAMPLES / "pos-export.yaml").read_text(encoding="utf-8")
    path = into / "pos-export.yaml"
    path.write_text(text.replace("sources: [pos-local]", f"sources: [{POS.name}]"))
    return path


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    """The environment `cdp import` runs in: this test's services, topics and sources."""
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps([POS.model_dump(mode="json")]))
    folder = tmp_path / "mappings"
    folder.mkdir()
    _mapping(folder)
    worker = WorkerProcess(settings, tmp_path, ["identity"]).env
    return {
        **worker,
        "CDP_INGEST__SOURCES_FILE": str(sources),
        "CDP_INGEST__MAPPINGS": str(folder),
        "CDP_PRIVACY__ENABLED": "false",
    }


def cdp_import(env: dict[str, str], path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "deploy", "import", str(path), "--source", POS.name],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout))


def _raw(settings: Settings) -> list[dict[str, Any]]:
    """Everything in the raw topic now (an import returns once Kafka acknowledged)."""
    return read_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic("cdp.events.raw"))


def test_an_import_reports_reconciles_with_dead_letters_and_a_second_one_changes_nothing(
    settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    path = _sales(tmp_path / "sales.csv", 2500, bad_every=100)
    report = cdp_import(env, path)
    assert (report["rows_read"], report["accepted"], report["rejected"]) == (2500, 2475, 25)
    assert report["rejected_by_reason"] == {"invalid_event": 25}
    assert report["complete"] and not report["already_imported"]
    assert report["samples"][0] == {
        "row": 100,
        "field": "row[100].properties.jine_fen",
        "message": "properties.jine_fen: 'n/a' is not a number",
    }
    raw = _raw(settings)
    assert len(raw) == 2475 and len({e["event_id"] for e in raw}) == 2475
    sale = next(e for e in raw if e["properties"]["order_id"] == "S-1")
    assert (sale["type"], sale["properties"]["total"], sale["name"]) == (
        "order_completed",
        10.01,
        "XiaoShou",
    )
    assert sale["timestamp"].startswith("2026-03-01T06:22:05")  # Shanghai wall-clock time
    letters = read_topic(
        settings.kafka.bootstrap_servers,
        settings.kafka.topic("cdp.events.deadletter"),
        25,
        where=lambda v: v["request_id"] == report["import_id"],
    )
    assert sorted(v["index"] for _, v in letters) == list(range(100, 2501, 100))
    assert letters[0][1]["payload"]["jine_fen"] == "n/a"  # the row as it was read

    again = cdp_import(env, path)
    assert again["already_imported"] and again["accepted"] == 2475
    assert len(_raw(settings)) == 2475  # nothing more was sent


def test_an_import_killed_mid_file_resumes_after_the_last_acknowledged_row(
    settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    rows = 60_000
    path = _sales(tmp_path / "big.csv", rows)
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy", "import", str(path), "--source", POS.name],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    pattern = f"{settings.worker.namespace}:import:{POS.name}:*"
    deadline = time.monotonic() + 300
    progress = 0
    while progress < 5_000:
        assert proc.poll() is None, "the import ended before it could be stopped"
        assert time.monotonic() < deadline, "the import made no progress"
        keys = client.keys(pattern)
        progress = json.loads(client.get(keys[0]) or b"{}").get("rows_read", 0) if keys else 0
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    report = cdp_import(env, path)
    assert report["complete"] and report["rows_read"] == report["accepted"] == rows
    assert 0 < report["resumed_at_row"] < rows
    raw = _raw(settings)
    # Chunks in flight at the kill may be sent again: the same ids, so the same events.
    assert len({e["event_id"] for e in raw}) == rows


def test_a_million_row_file_is_imported_in_bounded_memory(
    settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    rows = 1_000_000
    path = _sales(tmp_path / "million.csv", rows)
    size_mb = path.stat().st_size / 1e6
    # VmHWM, the peak resident size of this process image: not ru_maxrss, which keeps the
    # peak of the forking test process across exec.
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['cdp', 'import', {str(path)!r}, '--source', {POS.name!r}]\n"
        "try:\n"
        "    runpy.run_module('deploy', run_name='__main__')\n"
        "finally:\n"
        "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "    print('peak_kb', hwm.split()[1], file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=1800
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["rows_read"] == report["accepted"] == rows
    peak_mb = int(out.stderr.rsplit("peak_kb", 1)[1].split()[0]) / 1024
    # The file is ~55 MB; the importer holds a few chunks of rows, not the file (held as
    # parsed rows it would take several times the file).
    assert size_mb > 50 and peak_mb < 250, (size_mb, peak_mb)


def test_a_source_posts_its_export_over_http(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "mappings"
    folder.mkdir()
    _mapping(folder)
    spool = tmp_path / "spool"
    spool.mkdir()
    ingest = settings.ingest.model_copy(
        update={
            "sources": [*settings.ingest.sources, POS],
            "mappings": folder,
            "import_dir": spool,
        }
    )
    body = (
        "huiyuanhao,riqi,danhao,jine_fen,mendian,pinlei\r\n"
        "M-1,2026-03-01 14:22:05,S-1,26850,SH-01,shoes\r\n"
        ",2026-03-01 14:22:05,S-2,100,SH-01,shoes\r\n"
        "M-2,2026-03-01 14:22:05,S-3,1e999,SH-01,shoes\r\n"
    ).encode("utf-8-sig")
    auth = (key_of(POS.name), "")
    with running_api(settings.model_copy(update={"ingest": ingest})) as api:
        answer = httpx.post(
            api + "/v1/imports",
            params={"name": "sales.csv"},
            headers={"Content-Type": "text/csv"},
            content=body,
            auth=auth,
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert (report["rows_read"], report["accepted"], report["rejected"]) == (3, 1, 2)
        assert report["file"] == "sales.csv"
        assert [s["field"] for s in report["samples"]] == [
            "row[2].huiyuanhao",  # the column, not the Segment key
            "row[3].properties.jine_fen",
        ]
        again = httpx.post(
            api + "/v1/imports", params={"format": "csv"}, content=body, auth=auth, timeout=60
        ).json()
        assert again["already_imported"] is True
        refused = httpx.post(api + "/v1/imports", content=body, auth=("nope", ""), timeout=60)
        assert refused.status_code == 401
        unknown = httpx.post(api + "/v1/imports", content=body, auth=auth, timeout=60)
        assert (unknown.status_code, unknown.json()["field"]) == (400, "format")
    (sale,) = _raw(settings)
    assert (sale["type"], sale["properties"]["total"]) == ("order_completed", 268.5)
    assert [(i["type"], i["value"]) for i in sale["identifiers"]] == [("member_id", "M-1")]
    assert os.listdir(spool) == []  # the upload is removed once imported


def test_an_import_with_field_encryption_on_rests_sealed_like_http_ingest(
    settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "mappings"
    folder.mkdir()
    _mapping(folder)
    text = (folder / "pos-export.yaml").read_text()
    (folder / "pos-export.yaml").write_text(
        text.replace("  message_id: [danhao]", "  message_id: [danhao]\n  traits: [shouji]")
    )
    ingest = settings.ingest.model_copy(
        update={"sources": [*settings.ingest.sources, POS], "mappings": folder}
    )
    keys = MasterKeys.generate()
    sealed = settings.model_copy(
        update={
            "ingest": ingest,
            "privacy": PrivacySettings(enabled=True, master_keys=SecretStr(keys.dumps())),
        }
    )
    body = (
        b"huiyuanhao,riqi,danhao,jine_fen,mendian,pinlei,shouji\n"
        b"M-1,2026-03-01 14:22:05,S-1,26850,SH-01,shoes,138 0013 8000\n"
        b"M-2,2026-03-01 14:22:05,S-2,oops,SH-01,shoes,139 0013 8000\n"
    )
    with running_api(sealed) as api:
        answer = httpx.post(
            api + "/v1/imports",
            params={"format": "csv"},
            content=body,
            auth=(key_of(POS.name), ""),
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert (answer.json()["accepted"], answer.json()["rejected"]) == (1, 1)
    (event,) = _raw(settings)
    assert all(is_blind(i["value"]) and i["sealed"] for i in event["identifiers"])
    assert is_sealed(event["traits"]["phone"])  # shouji, renamed by the mapping
    assert is_sealed(event["context"]["mapped_from"])  # what the POS sent, whole
    assert "138" not in json.dumps(event)
    (letter,) = read_to_end(
        settings.kafka.bootstrap_servers, settings.kafka.topic("cdp.events.deadletter")
    )
    assert letter["payload"] is None and is_sealed(letter["sealed"])
    assert "139" not in json.dumps(letter)
