"""Dead letters re-driven once their cause is fixed: each event's effect happens exactly once."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx

from contracts.topics import AUDIT
from deploy.settings import Settings
from ingest.redrive import message_id
from ingest.sources import Source, hash_key
from runtime.readback import read_to_end
from tests.integration.test_stream import _events_in_redis
from tests.support.keys import known_sources
from tests.support.server import running_api
from tests.support.worker import WorkerProcess

ALL = ["history", "identity", "profiles"]
CAUGHT_UP = {"cdp.events.raw", "cdp.events.resolved", "cdp.identity.merges"}
OPS = {"Authorization": "Bearer tk_ops"}
NEW_KEY = "wk_kiosk_new_secret"


def kiosk() -> Source:
    """A source whose key the API does not know yet."""
    return Source(
        name="kiosk", channel="pos", user_id_type="member_id", key_sha256=hash_key(NEW_KEY)
    )


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def _send_refused(api: str) -> list[dict[str, Any]]:
    """Three requests under the unknown key: 5 events, two without a messageId."""
    bodies = [
        {
            "batch": [
                {"type": "track", "userId": "K-1", "event": "Store Visited", "messageId": "k1"}
            ]
        },
        {
            "batch": [
                {"type": "track", "userId": "K-2", "event": "Store Visited"},
                {"type": "identify", "userId": "K-2", "traits": {"age": 40}},
            ]
        },
        {
            "batch": [
                {"type": "track", "userId": "K-1", "event": "Store Visited", "messageId": "k4"},
                {"type": "track", "userId": "K-3", "event": "Store Visited", "messageId": "k5"},
            ]
        },
    ]
    for body in bodies:
        answer = httpx.post(api + "/v1/batch", json=body, headers=_basic(NEW_KEY), timeout=30)
        assert answer.status_code == 401, answer.text
    return bodies


def _history_events(worker: WorkerProcess) -> dict[str, int]:
    out = worker.cli(
        "history",
        "sql",
        "SELECT event_id, count() AS n FROM cdp.events FINAL GROUP BY event_id",
    )
    return {row["event_id"]: int(row["n"]) for row in map(json.loads, out.splitlines())}


def test_refused_for_an_unknown_key_then_redriven_once(
    settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    with running_api(settings) as api:
        _send_refused(api)
        # A known source's batch with one event the mapping rejects (a track without a name).
        mixed = httpx.post(
            api + "/v1/batch",
            json={
                "batch": [
                    {"type": "track", "userId": "M-9", "event": "Tick", "messageId": "m1"},
                    {"type": "track", "userId": "M-9", "messageId": "m2"},
                ],
                "context": {"ip": "10.0.0.1"},
            },
            headers=_basic("wk_test-pos_secret"),
            timeout=30,
        )
        assert mixed.status_code == 200 and mixed.json()["rejected"] == 1
        listed = httpx.get(
            api + "/v1/deadletters",
            params={"reason": "unauthorized", "since": "2020-01-01T00:00:00"},  # no offset: UTC
            headers=OPS,
        )
        assert listed.status_code == 200, listed.text
        # The key is unknown still: no source is named, and a re-drive would find none.
        assert listed.json()["count"] == 3
        assert {r["source"] for r in listed.json()["letters"]} == {None}
        later = {"reason": "unauthorized", "since": "2999-01-01T00:00:00Z"}
        assert httpx.get(api + "/v1/deadletters", params=later, headers=OPS).json()["count"] == 0
        denied = httpx.post(
            api + "/v1/deadletters/redrive",
            json={"reasons": ["unauthorized"]},
            headers={"Authorization": "Bearer tk_ops_read"},
        )
        assert denied.status_code == 403
        early = httpx.post(
            api + "/v1/deadletters/redrive", json={"reasons": ["unauthorized"]}, headers=OPS
        ).json()
        assert early["redriven"] == 0 and early["not_redrivable"] == {"key_unknown": 3}

    # The key is added: an API with the new source re-drives the refused requests.
    fixed = settings.model_copy(
        update={
            "ingest": settings.ingest.model_copy(update={"sources": [*known_sources(), kiosk()]})
        }
    )
    with running_api(fixed) as api:
        listed = httpx.get(api + "/v1/deadletters", params={"source": "kiosk"}, headers=OPS).json()
        assert listed["count"] == 3
        requests = {r["request_id"] for r in listed["letters"]}
        one = httpx.get(api + f"/v1/deadletters/{listed['letters'][0]['id']}", headers=OPS).json()
        assert one["letter"]["key_sha256"] == hash_key(NEW_KEY)
        assert one["letter"]["reason"] == "unauthorized" and one["redriven"] is None
        report = httpx.post(
            api + "/v1/deadletters/redrive", json={"source": "kiosk"}, headers=OPS
        ).json()
        assert report["selected"] == 3 and report["redriven"] == 3
        assert report["accepted"] == 5 and report["rejected_again"] == {}
        # The mapping still rejects the nameless track: dead-lettered again, linked.
        bad = httpx.get(
            api + "/v1/deadletters", params={"reason": "invalid_event"}, headers=OPS
        ).json()
        assert [r["field"] for r in bad["letters"]] == ["batch[1].event"]
        again = httpx.post(
            api + "/v1/deadletters/redrive", json={"ids": [bad["letters"][0]["id"]]}, headers=OPS
        ).json()
        assert again["redriven"] == 1 and again["rejected_again"] == {"invalid_event": 1}
        relisted = httpx.get(
            api + "/v1/deadletters", params={"reason": "invalid_event"}, headers=OPS
        ).json()
        assert relisted["count"] == 2
        assert relisted["letters"][1]["redrive_of"] == bad["letters"][0]["id"]
        assert relisted["letters"][1]["field"] == "batch[1].event"
        # Asked again without force: nothing is sent twice.
        repeat = httpx.post(
            api + "/v1/deadletters/redrive", json={"source": "kiosk"}, headers=OPS
        ).json()
        assert (repeat["redriven"], repeat["already_redriven"]) == (0, 3)

    worker = WorkerProcess(settings, tmp_path, ALL).start()
    workers.append(worker)
    worker.wait_caught_up(CAUGHT_UP)
    # 5 re-driven events and the accepted m1: each folded once.
    assert _events_in_redis(settings) == 6

    # Re-driven again by force from the CLI (as an interrupted re-drive run again would):
    # the same deterministic ids, which the stream drops as duplicates.
    worker.env["CDP_INGEST__SOURCES"] = json.dumps(
        [s.model_dump(mode="json") for s in [*known_sources(), kiosk()]]
    )
    worker.env["CDP_PRIVACY__ENABLED"] = "false"
    listed = json.loads(worker.cli("deadletters", "list", "--reason", "invalid_event", "--json"))
    assert [r["redrive_of"] is None for r in listed["letters"]] == [True, False]
    assert listed["letters"][0]["redriven"]["rejected"] == 1
    shown = json.loads(worker.cli("deadletters", "show", listed["letters"][1]["id"]))
    assert shown["letter"]["payload"]["messageId"] == "m2"
    assert shown["letter"]["payload"]["context"] == {"ip": "10.0.0.1"}  # the batch's, kept
    forced = json.loads(worker.cli("deadletters", "redrive", "--source", "kiosk", "--force"))
    assert (forced["redriven"], forced["accepted"]) == (3, 5)
    raw = read_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic("cdp.events.raw"))
    redriven_ids = [e["event_id"] for e in raw if e["source"] == "kiosk"]
    assert len(redriven_ids) == 10 and len(set(redriven_ids)) == 5  # published twice
    worker.wait_caught_up(CAUGHT_UP)
    assert _events_in_redis(settings) == 6
    assert worker.stop() == 0

    # The two messages sent without an id got ids derived from their request and place.
    derived = set(redriven_ids) - {"k1", "k4", "k5"}
    assert len(derived) == 2
    assert derived <= {message_id(r, i) for r in requests for i in (0, 1)}
    assert _history_events(worker) == dict.fromkeys({"k1", "k4", "k5", "m1", *derived}, 1)

    audit = read_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic(AUDIT.name))
    done = [a for a in audit if a["action"] == "deadletters.redrive.done"]
    by_token = [a["detail"]["redriven"] for a in done if a["actor"] == "tk_ops"]
    assert sorted(by_token) == [0, 0, 1, 3]
    reads = [a for a in audit if a["action"] == "deadletters.read"]
    assert {a["target"] for a in reads} >= {listed["letters"][1]["id"]}
    assert [a["detail"]["accepted"] for a in done if a["actor"].startswith("cli:")] == [5]
