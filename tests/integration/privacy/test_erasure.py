"""Erasure of a person on real Kafka, Redis and embedded ClickHouse, in clear and sealed.

A person with merged ids across two channels, tags and a history is erased by one of their
identifiers; afterwards no Redis key, no ClickHouse row and no compacted topic holds their
identifiers or values, everyone else is exactly as before, new events carrying their
identifiers do not rebuild them (until they come back with a consent), and a replay of the
raw topic from offset 0 does not either.
"""

from __future__ import annotations

import signal
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from contracts.privacy import AuditRecord, Erasure, ErasureState
from deploy import topics
from deploy.privacy import blinding
from deploy.settings import Settings
from identity.normalize import parse_identifier
from privacy.erasure import HOLD_ENV
from runtime.readback import read_records
from tests.conftest import make_settings
from tests.integration.privacy.test_end_to_end import (
    PII,
    ROLES,
    TOPICS,
    clickhouse_text,
    one_partition,
    private,
    redis_bytes,
    unsealed,
)
from tests.support.keys import key_of
from tests.support.server import running_api
from tests.support.services import Services
from tests.support.worker import WorkerProcess

DPO = {"Authorization": "Bearer tk_dpo"}
A = {
    "member": "M-ERASE-0001",
    "customer": "C-ERASE-0001",
    "phone": "+8613800138555",
    "email": "erin.ash@example.com",
    "name": "Erin Ash",
    "street": "88 Wisteria Lane",
}
B = {
    "member": "M-KEEP-0002",
    "customer": "C-KEEP-0002",
    "phone": "+8613900139666",
    "email": "bo.keep@example.com",
    "name": "Bo Keep",
    "street": "12 Harbour Road",
}


def calls(p: dict[str, str], tag: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """A person on two channels: the POS knows the member id, the web shop the customer id;
    the email links them (one merge)."""
    pos = [
        {
            "type": "identify",
            "messageId": f"{tag}-pos-identify",
            "userId": p["member"],
            "traits": {
                "phone": p["phone"],
                "name": p["name"],
                "address": p["street"],
                "birthday": "1990-06-30",
                "city": "Shanghai",
            },
            "context": {"consent": {"categoryPreferences": {"marketing": True}}},
        },
        *(
            {
                "type": "track",
                "messageId": f"{tag}-pos-order-{n}",
                "userId": p["member"],
                "event": "Order Completed",
                "properties": {"order_id": f"{tag}-o{n}", "total": 300 + n},
            }
            for n in range(3)
        ),
    ]
    web = [
        {
            "type": "identify",
            "messageId": f"{tag}-web-identify",
            "userId": p["customer"],
            "traits": {"email": p["email"]},
        },
        {
            "type": "track",
            "messageId": f"{tag}-web-order",
            "userId": p["customer"],
            "event": "Order Completed",
            "properties": {"order_id": f"{tag}-w1", "total": 99, "receiver_phone": p["phone"]},
        },
    ]
    # The POS sends the email too, after the web shop: the two profiles merge.
    pos.append(
        {
            "type": "identify",
            "messageId": f"{tag}-pos-email",
            "userId": p["member"],
            "traits": {"email": p["email"]},
        }
    )
    return [("test-pos", pos[:4]), ("test-web", web), ("test-pos", pos[4:])]


def post(base: str, source: str, batch: list[dict[str, Any]]) -> None:
    answer = httpx.post(
        base + "/v1/batch", json={"batch": batch}, auth=(key_of(source), ""), timeout=30
    )
    assert answer.status_code == 200 and answer.json()["accepted"] == len(batch), answer.text


def lookup(base: str, type_: str, value: str) -> httpx.Response:
    return httpx.post(
        base + "/v1/profiles/lookup", json={"type": type_, "value": value}, headers=PII, timeout=10
    )


def values_of(p: dict[str, str]) -> set[str]:
    return {p["member"], p["customer"], p["phone"], p["phone"][3:], p["email"], p["name"],
            p["street"]}  # fmt: skip


def stored_forms(settings: Settings, p: dict[str, str]) -> set[str]:
    """How the stores write the person's identifiers: blind indexes when sealed."""
    if not settings.privacy_enabled():
        return set()
    blind = blinding(settings).blind
    pairs = [("member_id", "member"), ("customer_id", "customer"), ("phone", "phone")]
    pairs.append(("email", "email"))
    return {blind(parse_identifier(t, p[k], "CN")).value for t, k in pairs}


def found(blob: bytes | str, needles: set[str]) -> list[str]:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    return sorted(n for n in needles if n.lower() in text.lower())


def compacted_bytes(settings: Settings) -> bytes:
    out = bytearray()
    for name in ("cdp.keys", "cdp.privacy.erasures", "cdp.segments.definitions", "cdp.audit"):
        topic = settings.kafka.topic(name)
        for key, value in read_records(settings.kafka.bootstrap_servers, topic, timeout_s=60):
            out += (key or b"") + b"\n" + (value or b"") + b"\n"
    return bytes(out)


def rows_by_table(text: str, pids: set[str]) -> dict[str, list[str]]:
    """The dumped ClickHouse rows per table, without those naming ``pids``."""
    tables: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if not line.startswith("("):
            current = line.split()[0]
            tables[current] = []
        elif not any(f"'{p}'" in line for p in pids):
            tables[current].append(line)
    return tables


def rows_naming(text: str, pids: set[str]) -> dict[str, int]:
    """How many of the dumped ClickHouse rows per table name one of ``pids``."""
    others = rows_by_table(text, pids)
    return {t: len(rows) - len(others[t]) for t, rows in rows_by_table(text, set()).items()}


def started(
    settings: Settings,
    home: Path,
    workers: list[WorkerProcess],
    app_id: str | None = None,
    hold: str | None = None,
) -> WorkerProcess:
    """A worker with every role, encryption as in ``settings``."""
    if app_id:
        worker_settings = settings.worker.model_copy(update={"app_id": app_id})
        settings = settings.model_copy(update={"worker": worker_settings})
    worker = WorkerProcess(settings, home, ROLES)
    # A static group member: restarted after a kill, it takes its partitions back at once.
    worker.env["CDP_WORKER__INSTANCE_ID"] = f"erasure-test-{app_id or 'main'}"
    if not settings.privacy_enabled():
        worker.env["CDP_PRIVACY__ENABLED"] = "false"
    if app_id:
        worker.env["CDP_WORKER__APP_ID"] = app_id
    if hold:
        worker.env[HOLD_ENV] = hold
    workers.append(worker.start())
    return worker


@pytest.mark.parametrize("sealed", [False, True], ids=["clear", "sealed"])
def test_erasure_removes_a_person_everywhere_and_nobody_else(
    services: Services, tmp_path: Path, workers: list[WorkerProcess], sealed: bool
) -> None:
    # One partition: each person's two channels meet in the order they were sent (one merge).
    settings = one_partition(make_settings(services, f"t{uuid.uuid4().hex[:10]}."))
    settings = private(settings) if sealed else unsealed(settings)
    topics.create_all(settings.kafka)
    worker = started(settings, tmp_path, workers)
    with running_api(settings) as base:
        for source, batch in calls(A, "a") + calls(B, "b"):
            post(base, source, batch)
        worker.wait_caught_up(TOPICS)
        a_profile = lookup(base, "phone", A["phone"]).json()
        b_profile = lookup(base, "phone", B["phone"]).json()
        assert a_profile["traits"]["email"] == A["email"]
        assert a_profile["identifiers"] and len(a_profile["identifiers"]) == 4
    a_pid, b_pid = a_profile["profile_id"], b_profile["profile_id"]
    # Someone else's state, and the whole history, before the erasure.
    worker.stop()
    before = clickhouse_text(settings, tmp_path)
    assert f"'{a_pid}'" in before
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    ns = settings.worker.namespace
    b_hash_before = client.hgetall(f"{ns}:pf:{b_pid}")

    worker = started(settings, tmp_path, workers)
    with running_api(settings) as base:
        # Erase by the phone, masked or not the identifier the person was asked by.
        asked = httpx.post(
            base + "/v1/privacy/erasures",
            params={"wait": 60},
            json={"type": "phone", "value": "138 0013 8555", "reference": "DSR-1"},
            headers=DPO,
            timeout=90,
        )
        assert asked.status_code == 200, asked.text
        erasure = Erasure.model_validate(asked.json())
        assert erasure.state is ErasureState.COMPLETED and erasure.receipt is not None
        receipt = erasure.receipt
        assert a_pid in receipt.profiles and len(receipt.profiles) == 2  # the merged one too
        assert receipt.identifiers == 4 and receipt.shared_identifiers_kept == 0
        assert receipt.clickhouse["events"] == 7
        assert receipt.redis["profiles"] == 1 and receipt.redis["identifiers"] == 4
        assert receipt.keys_shredded == (4 if sealed else 0)
        fates = {f.topic.removeprefix(settings.kafka.topic_prefix): f.fate for f in receipt.kafka}
        assert fates["cdp.keys"] == "tombstoned"
        assert fates["cdp.events.raw"] == ("unreadable" if sealed else "until_retention")
        # The receipt can be read again; an unknown id and a bad body are JSON errors.
        again = httpx.get(base + asked.headers["Location"], headers=DPO, timeout=10)
        assert again.status_code == 200 and again.json() == asked.json()
        assert lookup(base, "phone", A["phone"]).status_code == 404
        assert lookup(base, "member_id", A["member"]).status_code == 404
        assert lookup(base, "phone", B["phone"]).json() == b_profile
        bad = httpx.post(
            base + "/v1/privacy/erasures", json={"type": "phone"}, headers=DPO, timeout=10
        )
        assert bad.status_code == 400 and bad.json()["message"]
        gone = httpx.post(
            base + "/v1/privacy/erasures",
            json={"type": "phone", "value": A["phone"]},
            headers=DPO,
            timeout=10,
        )
        assert gone.status_code == 404 and gone.json()["field"] == "value"
        reader = httpx.post(
            base + "/v1/privacy/erasures",
            json={"profile_id": b_pid},
            headers={"Authorization": "Bearer tk_reader"},
            timeout=10,
        )
        assert reader.status_code == 403

        # New events with the erased identifiers build nothing: counted, not kept.
        post(base, "test-pos", [{"type": "track", "userId": A["member"], "event": "Visit"}])
        suppressed = f"{ns}:suppressed:events"
        worker.wait_for(lambda: client.get(suppressed) == b"1", "the event counted as suppressed")
        worker.wait_caught_up(TOPICS)
        assert lookup(base, "member_id", A["member"]).status_code == 404
    worker.stop()

    erased_pids = set(receipt.profiles)
    needles = values_of(A) | stored_forms(settings, A)
    after = clickhouse_text(settings, tmp_path)
    redis_dump = redis_bytes(settings, at_least=20)
    assert found(after, needles) == []
    assert found(redis_dump, needles) == []
    assert found(compacted_bytes(settings), needles) == []
    keys = [k.decode() for k in client.scan_iter(match=f"{ns}:*")]
    per_profile = [f"{ns}:{kind}:{p}:" for p in erased_pids for kind in ("pf", "p", "wm", "rf")]
    named = [k for k in keys if any((k + ":").startswith(prefix) for prefix in per_profile)]
    assert named == []
    marks = [
        f.decode()
        for k in client.scan_iter(match=f"{ns}:wmb:*")
        for f in client.hkeys(k)
        if f.decode().split(":")[0] in erased_pids
    ]
    assert marks == []  # no fold watermark of theirs either
    # Everyone else: the same rows in every table (the audit table gained the erasure's).
    kept_before, kept_after = rows_by_table(before, erased_pids), rows_by_table(after, erased_pids)
    kept_after.pop("audit", None), kept_before.pop("audit", None)
    assert {t: sorted(r) for t, r in kept_after.items()} == {
        t: sorted(r) for t, r in kept_before.items()
    }
    assert client.hgetall(f"{ns}:pf:{b_pid}") == b_hash_before
    # The audit log has the request and its completion, and no personal value.
    audit = [
        AuditRecord.model_validate_json(v)
        for _, v in read_records(
            settings.kafka.bootstrap_servers, settings.kafka.topic("cdp.audit"), timeout_s=60
        )
        if v
    ]
    actions = [(r.action, r.target, r.actor) for r in audit]
    assert ("erasure.requested", erasure.id, "tk_dpo") in actions
    assert ("erasure.completed", erasure.id, "system") in actions

    # A replay of the raw topic from offset 0 (another group, a fresh history) brings
    # nobody back: the person's old events are suppressed, the others' are retries.
    # Past the retry window (its fingerprints gone), every old event is processed again.
    for day in client.scan_iter(match=f"{ns}:ev:w:*"):
        client.delete(day)
    (tmp_path / "replay").mkdir()
    replay = started(settings, tmp_path / "replay", workers, app_id="replay")
    replay.wait_caught_up({"cdp.events.raw"})
    replay.wait_caught_up(TOPICS)
    replay.stop()
    assert found(redis_bytes(settings, at_least=20), needles) == []
    assert found(clickhouse_text(settings, tmp_path / "replay"), needles) == []
    # The visit after the erasure, then all eight of the person's events again.
    assert int(client.get(f"{ns}:suppressed:events") or 0) == 1 + 8

    # The person comes back with a consent: a new profile, none of the old history.
    worker = started(settings, tmp_path, workers)
    with running_api(settings) as base:
        post(
            base,
            "test-pos",
            [
                {
                    "type": "identify",
                    "userId": A["member"],
                    "traits": {"phone": A["phone"]},
                    "context": {"consent": {"categoryPreferences": {"marketing": True}}},
                }
            ],
        )
        worker.wait_caught_up(TOPICS)
        back = lookup(base, "member_id", A["member"])
        assert back.status_code == 200, back.text
        assert back.json()["profile_id"] not in erased_pids
        assert "email" not in back.json()["traits"]
    client.close()


def says(worker: WorkerProcess, text: str) -> bool:
    return text in worker.tail()


def someone(n: int) -> dict[str, str]:
    return {
        "member": f"M-KILL-{n:04d}",
        "customer": f"C-KILL-{n:04d}",
        "phone": f"+86137001370{n:02d}",
        "email": f"kill.{n}@example.com",
        "name": f"Kim {n}",
        "street": f"{n} Kill Street",
    }


def test_an_erasure_killed_at_any_step_completes_on_restart_exactly_once(
    services: Services, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    settings = private(one_partition(make_settings(services, f"t{uuid.uuid4().hex[:10]}.")))
    topics.create_all(settings.kafka)
    # The first person is erased without interruption: the receipt every other must match.
    holds = [None, "plan", "suppress", "count", "redis", "keys", "clickhouse"]
    people = [someone(n) for n in range(len(holds))]
    worker = started(settings, tmp_path, workers)
    with running_api(settings) as base:
        for n, p in enumerate(people):
            for source, batch in calls(p, f"k{n}"):
                post(base, source, batch)
        worker.wait_caught_up(TOPICS)
    worker.stop()
    # Each receipt must count exactly the rows its person had. The counts differ between
    # people: a profile's tags are evaluated once per micro-batch, so how many tag changes a
    # person's events left depends on where the batches happened to cut them.
    history_before = clickhouse_text(settings, tmp_path)

    def shape(e: Erasure) -> dict[str, Any]:
        assert e.receipt is not None
        r = e.receipt.model_dump(exclude={"completed_at", "profiles", "clickhouse"})
        r["kafka"] = [(f["topic"], f["fate"]) for f in r["kafka"]]
        return {**r, "profiles": len(e.receipt.profiles)}

    receipts: dict[str, Erasure] = {}
    for p, hold in zip(people, holds, strict=True):
        worker = started(settings, tmp_path, workers, hold=hold)
        with running_api(settings) as base:
            asked = httpx.post(
                base + "/v1/privacy/erasures",
                json={"type": "email", "value": p["email"]},
                headers=DPO,
                timeout=30,
            )
            assert asked.status_code == 202, asked.text
            location = base + asked.headers["Location"]
            if hold:
                worker.wait_for(partial(says, worker, "erasure.held"), f"held after {hold}")
                worker.stop(signal.SIGKILL)
                worker = started(settings, tmp_path, workers)

            def completed(url: str = location) -> bool:
                return httpx.get(url, headers=DPO, timeout=10).json()["state"] == "completed"

            worker.wait_for(completed, f"the erasure interrupted after {hold} completed")
            erasure = Erasure.model_validate(httpx.get(location, headers=DPO, timeout=10).json())
            receipts[str(hold)] = erasure
            assert erasure.receipt is not None
            had = rows_naming(history_before, set(erasure.receipt.profiles))
            assert erasure.receipt.clickhouse == {t: had[t] for t in erasure.receipt.clickhouse}
            assert lookup(base, "email", p["email"]).status_code == 404
            assert lookup(base, "member_id", p["member"]).status_code == 404
        worker.stop()

    reference = shape(receipts["None"])
    assert reference["profiles"] == 2 and reference["keys_shredded"] == 4
    assert receipts["None"].receipt is not None
    assert receipts["None"].receipt.clickhouse["events"] == 7
    assert {hold: shape(e) for hold, e in receipts.items()} == {
        hold: reference for hold in receipts
    }
    # Exactly once: one completed record per erasure, one audited completion.
    records = [
        Erasure.model_validate_json(v)
        for _, v in read_records(
            settings.kafka.bootstrap_servers,
            settings.kafka.topic("cdp.privacy.erasures"),
            timeout_s=60,
        )
        if v
    ]
    done = sorted(r.id for r in records if r.state is ErasureState.COMPLETED)
    assert done == sorted(e.id for e in receipts.values())
    audit = [
        AuditRecord.model_validate_json(v)
        for _, v in read_records(
            settings.kafka.bootstrap_servers, settings.kafka.topic("cdp.audit"), timeout_s=60
        )
        if v
    ]
    completions = sorted(r.target for r in audit if r.action == "erasure.completed")
    assert completions == done
