"""Care end to end on the real services: HTTP -> Kafka -> stream -> care worker -> webhook.

A real HTTP server (stdlib, in a thread) stands for the service desk. The occasions are
made due now by the events' dates (a birthday 7 days ahead, a cooperation that started on
this day years ago, a complaint resolved over 3 days ago): no clock is mocked.
"""

from __future__ import annotations

import base64
import json
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import redis

from care.rules import DEFAULT_DIR
from care.signature import IDEMPOTENCY_KEY, SIGNATURE, TIMESTAMP, verify
from deploy.settings import CareSettings, Settings
from runtime.readback import read_records
from tests.support.kafka import read_topic, read_until
from tests.support.keys import key_of
from tests.support.server import running_api
from tests.support.webhook import Receiver
from tests.support.worker import WorkerProcess

SECRET = "whsec_test"
CARE = {"Authorization": "Bearer tk_care"}
ZONE = ZoneInfo("Asia/Shanghai")
CARE_TOPICS = {"cdp.profiles.changes", "cdp.events.resolved"}
#: How long the occasions a test makes due today must stay on the same local day: from the
#: events sent until the care worker has scheduled them (a loaded machine included).
DAY_MARGIN = timedelta(minutes=10)


def rules_with_a_tag_rule(tmp_path: Path) -> Path:
    """The shipped rules plus one on a tag entry (none of the shipped ones is)."""
    folder = tmp_path / "care-rules"
    folder.mkdir()
    for f in DEFAULT_DIR.glob("*.yaml"):
        (folder / f.name).write_text(f.read_text())
    (folder / "repeat.yaml").write_text(
        "rules:\n- id: thank_repeat_buyer\n  title: Thank a repeat buyer\n"
        "  trigger: {tag_entered: repeat_buyer}\n  closes_on: [care_followup]\n"
    )
    return folder


def start(settings: Settings, tmp_path: Path, url: str, **care: str) -> list[WorkerProcess]:
    stream = WorkerProcess(settings, tmp_path, ["identity", "profiles"])
    worker = WorkerProcess(settings, tmp_path, ["care"])
    worker.env.update(
        {
            "CDP_CARE__WEBHOOK_URL": url,
            "CDP_CARE__WEBHOOK_SECRET": SECRET,
            "CDP_CARE__INTERVAL_S": "0.2",
            "CDP_CARE__BACKOFF_S": "0.2",
            "CDP_CARE__BACKOFF_MAX_S": "1",
            **{f"CDP_CARE__{k.upper()}": v for k, v in care.items()},
        }
    )
    return [stream.start(), worker.start()]


def send(api: str, batch: list[dict[str, Any]]) -> None:
    auth = base64.b64encode(f"{key_of('test-pos')}:".encode()).decode()
    r = httpx.post(
        api + "/v1/batch",
        json={"batch": batch},
        headers={"Authorization": f"Basic {auth}"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["rejected"] == 0, r.text


def clear_of_midnight() -> datetime:
    """Now, at least ``DAY_MARGIN`` before midnight in ``ZONE``. An anniversary sent at
    23:59:59 is yesterday's once the worker schedules it, so near midnight this waits for the
    local day to turn (a condition, not a duration)."""
    while True:
        now = datetime.now(UTC)
        local = now.astimezone(ZONE)
        if (local + DAY_MARGIN).date() == local.date():
            return now
        time.sleep(1)


def stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def triggers(now: datetime) -> list[dict[str, Any]]:
    """Events that make each shipped rule (and the tag rule) due now, and one that does not."""
    today = now.astimezone(ZONE).date()
    birthday = today + timedelta(days=7)
    resolved = now - timedelta(days=3, hours=1)

    def track(n: str, member: str, name: str, at: datetime, **props: Any) -> dict[str, Any]:
        return {
            "type": "track",
            "userId": member,
            "event": name,
            "messageId": n,
            "timestamp": stamp(at),
            "properties": props,
        }

    return [
        {
            "type": "identify",
            "userId": "M-BDAY",
            "messageId": "b1",
            # 1988: a leap year, so a 29 February birthday is a date too.
            "traits": {"birthday": f"1988-{birthday.month:02}-{birthday.day:02}"},
        },
        {
            "type": "group",
            "userId": "M-ACCT",
            "groupId": "ACME",
            "messageId": "a1",
            "traits": {"since": f"2016-{today.month:02}-{today.day:02}"},
        },
        track("c1", "M-COMP", "Ticket Opened", resolved - timedelta(days=1),
              ticket_id="T1", category="complaint"),
        track("c2", "M-COMP", "Ticket Resolved", resolved, ticket_id="T1"),
        # Resolved and already followed up: no task.
        track("f1", "M-DONE", "Ticket Opened", resolved - timedelta(days=1),
              ticket_id="T2", category="complaint"),
        track("f2", "M-DONE", "Ticket Resolved", resolved, ticket_id="T2"),
        track("f3", "M-DONE", "Follow Up Completed", resolved + timedelta(days=1), ticket_id="T2"),
        # Not a complaint: no task.
        track("q1", "M-ASK", "Ticket Opened", resolved - timedelta(days=1),
              ticket_id="T3", category="consultation"),
        track("q2", "M-ASK", "Ticket Resolved", resolved, ticket_id="T3"),
        track("o1", "M-REPEAT", "Order Completed", now, order_id="O1", total=20.0),
        track("o2", "M-REPEAT", "Order Completed", now, order_id="O2", total=30.0),
    ]  # fmt: skip


def tasks_on_topic(settings: Settings, expected: int, alive: Any) -> list[dict[str, Any]]:
    """The records of ``cdp.care.tasks`` once there are ``expected`` (and any extras)."""
    topic = settings.kafka.topic("cdp.care.tasks")
    deadline = time.monotonic() + 120
    while True:
        found = read_until(
            settings.kafka.bootstrap_servers, topic, lambda f: len(f) >= expected, timeout_s=5
        )
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        alive()


def last_state(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each task's last record (a task's records share a key, so one partition's order)."""
    return {r["task_id"]: r for r in records}


def wait(what: str, condition: Any, alive: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        alive()
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s:.0f} s"
        time.sleep(0.1)


def test_each_trigger_fires_once_is_delivered_signed_and_a_follow_up_closes_it(
    settings: Settings,
    api: str,
    receiver: Receiver,
    tmp_path: Path,
    workers: list[WorkerProcess],
) -> None:
    now = clear_of_midnight()
    send(api, triggers(now))
    workers += start(settings, tmp_path, receiver.url, rules=str(rules_with_a_tag_rule(tmp_path)))
    stream, care = workers

    def alive() -> None:
        stream.check()
        care.check()

    opened = tasks_on_topic(settings, 4, alive)
    by_rule = {t["rule"]: t for t in opened}
    assert sorted(by_rule) == [
        "birthday_in_7_days",
        "complaint_follow_up",
        "cooperation_anniversary",
        "thank_repeat_buyer",
    ], opened
    assert all(t["state"] == "open" for t in opened)
    today = now.astimezone(ZONE).date()
    assert by_rule["birthday_in_7_days"]["occasion"] == (today + timedelta(days=7)).isoformat()
    assert by_rule["cooperation_anniversary"]["occasion"] == today.isoformat()

    # The webhook got each task once, signed; the idempotency key is the task id.
    wait("4 deliveries", lambda: len(receiver.requests()) >= 4, alive)
    delivered = {}
    for headers, body in receiver.requests():
        h = {k.lower(): v for k, v in headers.items()}
        assert verify(
            SECRET.encode(), h[TIMESTAMP.lower()], body, h[SIGNATURE.lower()], int(time.time())
        )
        task = json.loads(body)
        assert h[IDEMPOTENCY_KEY.lower()] == task["task_id"]
        delivered[task["task_id"]] = task
    assert set(delivered) == {t["task_id"] for t in opened}

    # The same triggers again (a replay of what channels sent): nothing fires twice.
    again = [e for e in triggers(now) if e["messageId"] in {"b1", "a1", "c2"}]
    send(api, [{**e, "messageId": e["messageId"] + "-again"} for e in again])
    stream.wait_caught_up({"cdp.events.raw"})
    care.wait_caught_up(CARE_TOPICS)
    assert len(tasks_on_topic(settings, 4, alive)) == 4
    assert len(receiver.requests()) == 4

    # A follow-up event closes the birthday task; the API closes the anniversary's.
    bday = by_rule["birthday_in_7_days"]
    follow_up = {"type": "track", "userId": "M-BDAY", "event": "Care Followup", "messageId": "x1"}
    send(api, [{**follow_up, "properties": {"task_id": bday["task_id"]}}])
    records = tasks_on_topic(settings, 5, alive)
    closed = last_state(records)[bday["task_id"]]
    assert closed["state"] == "closed", records
    assert closed["closed_by"] and closed["closed_at"]

    acct = by_rule["cooperation_anniversary"]
    r = httpx.post(f"{api}/v1/care/tasks/{acct['task_id']}/close", headers=CARE, timeout=30)
    assert r.status_code == 200 and r.json()["state"] == "closed", r.text
    assert r.json()["closed_by"] == "api:tk_care"
    r = httpx.post(f"{api}/v1/care/tasks/{acct['task_id']}/close", headers=CARE, timeout=30)
    assert r.status_code == 409
    records = tasks_on_topic(settings, 6, alive)
    assert last_state(records)[acct["task_id"]]["state"] == "closed"

    r = httpx.get(f"{api}/v1/care/tasks", params={"profile": bday["profile_id"]}, headers=CARE)
    assert [(t["task_id"], t["state"]) for t in r.json()["tasks"]] == [(bday["task_id"], "closed")]
    r = httpx.get(f"{api}/v1/care/tasks", params={"state": "open"}, headers=CARE)
    assert {t["rule"] for t in r.json()["tasks"]} == {"complaint_follow_up", "thank_repeat_buyer"}
    r = httpx.get(f"{api}/v1/care/tasks/{bday['task_id']}", headers=CARE)
    assert r.json()["delivered_at"] is not None
    assert (
        httpx.get(f"{api}/v1/care/tasks", headers={"Authorization": "Bearer tk_reader"}).status_code
        == 403
    )
    assert (
        httpx.post(
            f"{api}/v1/care/tasks/{bday['task_id']}/close",
            headers={"Authorization": "Bearer tk_care_read"},
        ).status_code
        == 403
    )

    # The CLI sees the same, and closes too.
    out = care.cli("care", "tasks", "--state", "open", "--json")
    still_open = {t["rule"]: t for t in json.loads(out)}
    assert set(still_open) == {"complaint_follow_up", "thank_repeat_buyer"}
    repeat = still_open["thank_repeat_buyer"]["task_id"]
    out = care.cli("care", "close", repeat)
    assert "closed" in out and "cli:" in out
    assert last_state(tasks_on_topic(settings, 7, alive))[repeat]["state"] == "closed"

    # The receiver hears of each close once, signed, keyed "<task id>:closed".
    closed_ids = {bday["task_id"], acct["task_id"], repeat}
    wait("3 closes delivered", lambda: len(receiver.requests()) >= 7, alive)
    closes = {}
    for headers, body in receiver.requests()[4:]:
        h = {k.lower(): v for k, v in headers.items()}
        assert verify(
            SECRET.encode(), h[TIMESTAMP.lower()], body, h[SIGNATURE.lower()], int(time.time())
        )
        task = json.loads(body)
        assert task["state"] == "closed" and task["closed_at"], task
        assert h[IDEMPOTENCY_KEY.lower()] == f"{task['task_id']}:closed"
        closes[task["task_id"]] = task
    assert set(closes) == closed_ids
    r = httpx.get(f"{api}/v1/care/tasks/{bday['task_id']}", headers=CARE)
    assert r.json()["close_delivered_at"] is not None
    care.wait_caught_up(CARE_TOPICS)
    assert len(receiver.requests()) == 7
    for w in workers:
        assert w.stop(signal.SIGTERM) == 0


def test_a_failing_webhook_is_retried_then_dead_lettered(
    settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    failing = Receiver(500)
    failing.thread.start()
    hooked = settings.model_copy(
        update={"care": CareSettings(webhook_url=failing.url, webhook_secret=SECRET)}
    )
    with running_api(hooked) as api:
        failing_webhook(settings, api, failing, tmp_path, workers)


def failing_webhook(
    settings: Settings, api: str, failing: Receiver, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    try:
        now = datetime.now(UTC)
        send(api, [e for e in triggers(now) if e["messageId"] == "b1"])
        workers += start(settings, tmp_path, failing.url, max_attempts="3")
        stream, care = workers

        def alive() -> None:
            stream.check()
            care.check()

        (task,) = tasks_on_topic(settings, 1, alive)
        letters = read_topic(
            settings.kafka.bootstrap_servers,
            settings.kafka.topic("cdp.events.deadletter"),
            1,
            timeout_s=120,
            where=lambda v: v["reason"] == "delivery_failed",
            alive=alive,
        )
        assert len(letters) == 1
        key, letter = letters[0]
        assert key == "care" and letter["request_id"] == task["task_id"]
        assert letter["payload"]["task_id"] == task["task_id"]
        assert "3 attempt(s) failed, last: HTTP 500" in letter["message"]
        got = failing.requests()
        assert len(got) == 3
        assert {dict(h)[IDEMPOTENCY_KEY] for h, _ in got} == {task["task_id"]}
        # Given up: no fourth attempt while the worker keeps running.
        care.wait_caught_up(CARE_TOPICS)
        assert len(failing.requests()) == 3

        # Once the receiver is fixed, the task is delivered again on request.
        failing.status = 200
        r = httpx.post(f"{api}/v1/care/tasks/{task['task_id']}/redeliver", headers=CARE)
        assert r.status_code == 202, r.text
        wait("the redelivery", lambda: len(failing.requests()) == 4, alive)
        r = httpx.get(f"{api}/v1/care/tasks/{task['task_id']}", headers=CARE)
        assert r.json()["state"] == "open"
    finally:
        failing.server.shutdown()
        failing.server.server_close()


def test_date_rules_are_scheduled_over_profiles_that_existed_before(
    settings: Settings, api: str, receiver: Receiver, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """`cdp care schedule` (and a care worker at start) schedules the date rules over every
    stored profile, whatever the changes topic still holds."""
    stream = WorkerProcess(settings, tmp_path, ["identity", "profiles"])
    workers.append(stream.start())
    send(api, [e for e in triggers(clear_of_midnight()) if e["messageId"] in {"b1", "a1"}])
    stream.wait_caught_up({"cdp.events.raw"})

    out = stream.cli("care", "schedule")
    assert "date rules scheduled over 2 profiles" in out
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    try:
        ns = settings.worker.namespace
        due = {m.decode(): s for m, s in client.zrange(f"{ns}:care:due", 0, -1, withscores=True)}
        assert sorted(m.split("|")[1] for m in due) == [
            "birthday_in_7_days",
            "cooperation_anniversary",
        ]
        assert all(score <= time.time() * 1000 for score in due.values())  # due now
        assert client.get(f"{ns}:care:backfilled")
    finally:
        client.close()


def test_an_erasure_removes_the_persons_care_tasks(
    settings: Settings, api: str, receiver: Receiver, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """The receipt on cdp.privacy.erasures makes the care worker tombstone the person's tasks
    on the compacted topic and forget them in Redis."""
    send(api, [e for e in triggers(clear_of_midnight()) if e["messageId"] in {"b1", "a1"}])
    workers += start(settings, tmp_path, receiver.url)
    history = WorkerProcess(settings, tmp_path, ["history"])
    workers.append(history.start())

    def alive() -> None:
        for w in workers:
            w.check()

    by_rule = {t["rule"]: t for t in tasks_on_topic(settings, 2, alive)}
    bday, acct = by_rule["birthday_in_7_days"], by_rule["cooperation_anniversary"]

    dpo = {"Authorization": "Bearer tk_dpo"}
    asked = httpx.post(
        f"{api}/v1/privacy/erasures",
        json={"type": "member_id", "value": "M-BDAY"},
        headers=dpo,
        timeout=30,
    )
    assert asked.status_code == 202, asked.text
    location = api + asked.headers["Location"]
    history.wait_for(
        lambda: httpx.get(location, headers=dpo, timeout=10).json()["state"] == "completed",
        "the erasure completed",
    )

    def tombstoned() -> bool:
        topic = settings.kafka.topic("cdp.care.tasks")
        records = read_records(settings.kafka.bootstrap_servers, topic, timeout_s=60)
        return (bday["task_id"].encode(), None) in records

    wait("the task's tombstone", tombstoned, alive)
    r = httpx.get(f"{api}/v1/care/tasks/{bday['task_id']}", headers=CARE, timeout=10)
    assert r.status_code == 404
    r = httpx.get(f"{api}/v1/care/tasks", headers=CARE, timeout=10)
    assert [t["task_id"] for t in r.json()["tasks"]] == [acct["task_id"]]  # another person's
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    try:
        ns, pid = settings.worker.namespace, bday["profile_id"]
        keys = [f"task:{bday['task_id']}", f"open:{pid}", f"of:{pid}", f"pending:{pid}"]
        assert client.exists(*(f"{ns}:care:{k}" for k in keys)) == 0
        assert not any(f"|{pid}" in m.decode() for m in client.zrange(f"{ns}:care:due", 0, -1))
    finally:
        client.close()
