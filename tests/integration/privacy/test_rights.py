"""Access requests, the consent ledger, dual approval and the audit log, through `cdp run`
(its history process owns the embedded ClickHouse the export and the audit query read) on
real Kafka, Redis and chDB, with field encryption on."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local.kafka import free_port
from privacy.crypto import MasterKeys
from runtime.auth import hash_token
from tests.integration.privacy.test_erasure import A, B, calls, values_of
from tests.support.keys import key_of, known_sources, known_tokens
from tests.support.services import Services

#: Requests exports in clear; may approve others' requests, never its own.
CLEAR = {"Authorization": "Bearer tk_dpo_clear"}
APPROVER = {"Authorization": "Bearer tk_dpo2"}
DPO = {"Authorization": "Bearer tk_dpo"}
AUDITOR = {"Authorization": "Bearer tk_auditor"}
EXTRA_TOKENS = {
    "tk_dpo_clear": ["privacy:export", "privacy:erase", "pii:read", "privacy:approve"],
    "tk_auditor": ["audit:read"],
}


class Run:
    """A `cdp run` with one API process, its env and base URL."""

    def __init__(self, env: dict[str, str], base: str, log: Path) -> None:
        self.env, self.base, self.log = env, base, log
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "deploy", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def wait_for(self, condition: Callable[[], bool], what: str, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if condition():
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{what}: not after {timeout_s} s"
            time.sleep(0.2)


def start(services: Services, prefix: str, tmp_path: Path, **extra: str) -> Iterator[Run]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    MasterKeys.generate().save(tmp_path / "state" / "cdp" / "master-keys.json")
    port = free_port()
    tokens = [t.model_dump(mode="json") for t in known_tokens()]
    tokens += [{"name": n, "sha256": hash_token(n), "scopes": s} for n, s in EXTRA_TOKENS.items()]
    env = {
        **os.environ,
        "CDP_KAFKA__BOOTSTRAP_SERVERS": services.kafka_bootstrap,
        "CDP_KAFKA__TOPIC_PREFIX": prefix,
        "CDP_KAFKA__PARTITIONS": "1",
        "CDP_REDIS__URL": services.redis_url,
        "CDP_WORKER__NAMESPACE": prefix.rstrip("."),
        "CDP_CLICKHOUSE__PATH": str(tmp_path / "chdb"),
        "CDP_API__PORT": str(port),
        "CDP_API__TOKENS": json.dumps(tokens),
        "CDP_INGEST__SOURCES": json.dumps([s.model_dump(mode="json") for s in known_sources()]),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "CDP_LOG_LEVEL": "warning",
        **extra,
    }
    run = Run(env, f"http://127.0.0.1:{port}", tmp_path / "run.log")
    with run.log.open("wb") as out:
        run.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy", "run", "--api-workers", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        run.wait_for(
            lambda: httpx.get(run.base + "/healthz", timeout=5).status_code == 200, "healthy"
        )
        yield run
    finally:
        run.proc.send_signal(signal.SIGTERM)
        try:
            run.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.proc.kill()


@pytest.fixture
def run(services: Services, prefix: str, tmp_path: Path) -> Iterator[Run]:
    yield from start(services, prefix, tmp_path)


def send(run: Run, people: list[tuple[dict[str, str], str]]) -> None:
    for person, tag in people:
        for source, batch in calls(person, tag):
            got = httpx.post(
                run.base + "/v1/batch",
                json={"batch": batch},
                auth=(key_of(source), ""),
                timeout=30,
            )
            assert got.status_code == 200, got.text


def export(run: Run, headers: dict[str, str], **params: str) -> httpx.Response:
    return httpx.get(
        run.base + "/v1/privacy/subjects/export", params=params, headers=headers, timeout=120
    )


def lines(answer: httpx.Response) -> list[dict[str, Any]]:
    assert answer.status_code == 200, answer.text
    return [json.loads(line) for line in answer.text.splitlines()]


def test_access_export_holds_every_event_sent_and_clear_needs_a_second_person(
    run: Run,
) -> None:
    send(run, [(A, "a"), (B, "b")])
    sent = {m["messageId"] for _, batch in calls(A, "a") for m in batch}
    phone = {"type": "phone", "value": A["phone"]}

    def all_events_stored() -> bool:  # asked by another token than the audit counts below
        got = export(run, APPROVER, **phone)
        return got.status_code == 200 and len(
            [x for x in lines(got) if x["kind"] == "event"]
        ) == len(sent)

    run.wait_for(all_events_stored, "the person's events in the history")
    masked = lines(export(run, DPO, **phone))
    kinds = [x["kind"] for x in masked]
    assert kinds[:3] == ["profile", "identity", "segments"]
    events = [x for x in masked if x["kind"] == "event"]
    assert {e["event_id"] for e in events} == sent  # reconciled: each sent event, once
    assert len(events) == len(sent)
    assert [x["purpose"] for x in masked if x["kind"] == "consent"] == ["marketing"]
    text = json.dumps(masked)
    assert A["phone"] not in text and "****" in text  # masked without pii:read
    assert B["member"] not in text and B["phone"][-4:] + '"' not in text

    # In clear: pii:read alone is not enough.
    refused = export(run, CLEAR, **phone)
    assert refused.status_code == 403 and refused.json()["code"] == "approval_required"
    asked = httpx.post(
        run.base + "/v1/privacy/approvals",
        json={"action": "export", "subject": phone},
        headers=CLEAR,
        timeout=30,
    )
    assert asked.status_code == 201, asked.text
    approval = asked.json()["id"]
    own = httpx.post(
        run.base + f"/v1/privacy/approvals/{approval}/approve", headers=CLEAR, timeout=30
    )
    assert own.status_code == 403 and "another token" in own.json()["message"]
    not_approved = export(run, CLEAR, approval=approval, **phone)
    assert not_approved.status_code == 403
    ok = httpx.post(
        run.base + f"/v1/privacy/approvals/{approval}/approve", headers=APPROVER, timeout=30
    )
    assert ok.status_code == 200 and ok.json()["approved_by"] == "tk_dpo2", ok.text
    clear = lines(export(run, CLEAR, approval=approval, **phone))
    assert {e["event_id"] for e in clear if e["kind"] == "event"} == sent
    assert f"phone:{A['phone']}" in clear[0]["identifiers"]
    assert clear[0]["traits"]["name"] == A["name"]
    again = export(run, CLEAR, approval=approval, **phone)
    assert again.status_code == 403  # an approval is used once

    # As a ZIP: one JSON-lines file per kind.
    zipped = export(run, DPO, format="zip", **phone)
    assert zipped.status_code == 200
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
        names = set(archive.namelist())
        assert {"profile.jsonl", "event.jsonl", "consent.jsonl"} <= names
        assert len(archive.read("event.jsonl").splitlines()) == len(sent)

    # The consent ledger: each change with its evidence, and the state it ends in.
    ledger = httpx.get(
        run.base + "/v1/privacy/subjects/consents", params=phone, headers=DPO, timeout=30
    ).json()
    assert ledger["current"] == {"marketing": True}
    assert [c["evidence"]["event_id"] for c in ledger["history"]] == [
        next(e["event_id"] for e in events if e["type"] == "identify" and e["consent"])
    ]

    # The audit log: who exported, in clear or not; who approved; no personal value.
    def audited() -> list[dict[str, Any]]:
        got = httpx.get(run.base + "/v1/audit", params={"limit": 1000}, headers=AUDITOR)
        assert got.status_code == 200, got.text
        return list(got.json()["records"])

    def exports() -> list[tuple[str, bool, str]]:
        return sorted(
            (r["actor"], r["detail"]["clear"], r["detail"]["format"])
            for r in audited()
            if r["action"] == "subject.export" and r["actor"] != "tk_dpo2"
        )

    run.wait_for(lambda: len(exports()) == 3, "three exports audited")
    records = audited()
    assert exports() == [
        ("tk_dpo", False, "jsonl"),
        ("tk_dpo", False, "zip"),
        ("tk_dpo_clear", True, "jsonl"),
    ]
    approvals = [(r["action"], r["actor"]) for r in records if r["action"].startswith("approval")]
    assert sorted(approvals) == [
        ("approval.approved", "tk_dpo2"),
        ("approval.requested", "tk_dpo_clear"),
    ]
    assert not [v for v in values_of(A) | values_of(B) if v in json.dumps(records)]
    refused_audit = httpx.get(run.base + "/v1/audit", headers=CLEAR, timeout=10)
    assert refused_audit.status_code == 403


def test_bulk_erasure_and_key_rotation_wait_for_a_second_person_and_expire(
    services: Services, prefix: str, tmp_path: Path
) -> None:
    people = [(A, "a"), (B, "b")]
    for run in start(
        services,
        prefix,
        tmp_path,
        CDP_PRIVACY__APPROVAL_THRESHOLD="1",
        CDP_PRIVACY__APPROVAL_TTL_S="600",
    ):
        send(run, people)

        def known(p: dict[str, str], run: Run = run) -> bool:
            got = httpx.post(
                run.base + "/v1/profiles/lookup",
                json={"type": "member_id", "value": p["member"]},
                headers={"Authorization": "Bearer tk_reader"},
                timeout=10,
            )
            return got.status_code == 200

        run.wait_for(lambda: known(A) and known(B), "both people resolved")
        bulk = httpx.post(
            run.base + "/v1/privacy/erasures/bulk",
            json={"subjects": [{"type": "email", "value": p["email"]} for p, _ in people]},
            headers=CLEAR,
            timeout=30,
        )
        assert bulk.status_code == 202 and bulk.json()["erasures"] == [], bulk.text
        approval = bulk.json()["approval"]["id"]
        own = httpx.post(
            run.base + f"/v1/privacy/approvals/{approval}/approve", headers=CLEAR, timeout=30
        )
        assert own.status_code == 403
        assert known(A) and known(B)  # nothing happened
        ok = httpx.post(
            run.base + f"/v1/privacy/approvals/{approval}/approve", headers=APPROVER, timeout=30
        )
        assert ok.status_code == 200, ok.text
        started = ok.json()["outcome"]
        assert len(started) == 2
        twice = httpx.post(
            run.base + f"/v1/privacy/approvals/{approval}/approve", headers=APPROVER, timeout=30
        )
        assert twice.status_code == 409

        def completed(ids: list[str] = started, run: Run = run) -> bool:
            states = [
                httpx.get(run.base + f"/v1/privacy/erasures/{e}", headers=DPO).json()["state"]
                for e in ids
            ]
            return states == ["completed"] * len(ids)

        run.wait_for(completed, "both erasures completed")
        assert not known(A) and not known(B)
        receipt = httpx.get(run.base + f"/v1/privacy/erasures/{started[0]}", headers=DPO).json()
        assert receipt["requested_by"] == "tk_dpo_clear" and receipt["approved_by"] == "tk_dpo2"

        # A master-key rotation needs an approved request too, used once.
        refused = run.cli("keys", "rotate-master")
        assert refused.returncode == 2 and "--approval" in refused.stderr
        asked = httpx.post(
            run.base + "/v1/privacy/approvals",
            json={"action": "rotate-master"},
            headers=CLEAR,
            timeout=30,
        ).json()["id"]
        pending = run.cli("keys", "rotate-master", "--approval", asked)
        assert pending.returncode == 1 and "not approved" in pending.stderr
        httpx.post(
            run.base + f"/v1/privacy/approvals/{asked}/approve", headers=APPROVER, timeout=30
        ).raise_for_status()
        rotated = run.cli("keys", "rotate-master", "--approval", asked)
        assert rotated.returncode == 0, rotated.stderr
        assert run.cli("keys", "rotate-master", "--approval", asked).returncode == 1

        # The operator's CLI erases too, and the audit topic has every step.
        c = {**A, "member": "M-CLI-3", "customer": "C-CLI-3", "phone": "+8613600136333"}
        c["email"] = "cli.three@example.com"
        send(run, [(c, "c")])
        run.wait_for(partial(known, c), "the third person resolved")
        erased = run.cli("privacy", "erase", "--type", "phone", "--value", c["phone"])
        assert erased.returncode == 0, erased.stderr
        assert json.loads(erased.stdout)["state"] == "completed"
        trail = run.cli("audit", "--action", "erasure.")
        actions = [json.loads(line)["action"] for line in trail.stdout.splitlines()]
        assert actions.count("erasure.requested") == 3 == actions.count("erasure.completed")
        keys_trail = run.cli("audit", "--action", "keys.")
        assert [json.loads(x)["action"] for x in keys_trail.stdout.splitlines()] == ["keys.rotated"]

    # An expired request can do nothing.
    for run in start(services, prefix + "x.", tmp_path / "short", CDP_PRIVACY__APPROVAL_TTL_S="1"):
        asked = httpx.post(
            run.base + "/v1/privacy/approvals",
            json={"action": "rotate-master"},
            headers=CLEAR,
            timeout=30,
        ).json()["id"]

        def expired(run: Run = run, asked: str = asked) -> bool:
            got = httpx.get(run.base + f"/v1/privacy/approvals/{asked}", headers=CLEAR)
            return got.status_code == 404

        run.wait_for(expired, "the request expired")
        late = httpx.post(
            run.base + f"/v1/privacy/approvals/{asked}/approve", headers=APPROVER, timeout=30
        )
        assert late.status_code == 404 and "expired" in late.json()["message"]
        assert run.cli("keys", "rotate-master", "--approval", asked).returncode == 1
