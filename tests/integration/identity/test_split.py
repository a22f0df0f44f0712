"""Undoing a wrong merge on real Kafka, Redis and embedded ClickHouse, through `cdp run`.

Two people are merged because a cashier typed the store's email into the second one's
record. The split rebuilds both from history as if the merge had never happened: each gets
back their own orders and identifiers, history counts them as two, the explain log tells
the split, and the same wrong evidence sent again does not merge them a second time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from deploy import topics
from deploy.local.kafka import free_port
from deploy.settings import Settings
from deploy.split import SNAPSHOT_FIRST_ENV
from tests.conftest import make_settings
from tests.support.keys import key_of, known_sources, known_tokens
from tests.support.services import Services
from tests.support.spawned import Spawned

EMAIL = "till7@store.example"
ADMIN = {"Authorization": "Bearer tk_identity_admin"}
READER = {"Authorization": "Bearer tk_reader"}
SEGMENTS = {"Authorization": "Bearer tk_segments"}


def _env(settings: Settings, home: Path, port: int) -> dict[str, str]:
    s = settings
    return {
        "CDP_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "CDP_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix,
        "CDP_KAFKA__PARTITIONS": "1",
        "CDP_REDIS__URL": s.redis.url.get_secret_value(),
        "CDP_WORKER__NAMESPACE": s.worker.namespace,
        "CDP_WORKER__SNAPSHOT_INTERVAL_S": "0.5",
        "CDP_CLICKHOUSE__PATH": str(home / "chdb"),
        "CDP_API__PORT": str(port),
        "CDP_INGEST__SOURCES": json.dumps([x.model_dump(mode="json") for x in known_sources()]),
        "CDP_API__TOKENS": json.dumps([t.model_dump(mode="json") for t in known_tokens()]),
        "XDG_STATE_HOME": str(home / "state"),
        "CDP_PRIVACY__ENABLED": "false",
        "PATH": os.environ.get("PATH", ""),
        # Every split waits for history to snapshot its new profiles before it deletes the
        # group's tombstones: the interleaving a loaded machine produces now and then.
        SNAPSHOT_FIRST_ENV: "1",
    }


class Shop:
    def __init__(self, base: str, run: Spawned) -> None:
        self.base, self.run, self.sent = base, run, 0

    def send(self, anon: str, kind: str, **fields: Any) -> None:
        self.sent += 1
        body = {"type": kind, "anonymousId": anon, "messageId": f"m-{self.sent}", **fields}
        r = httpx.post(
            self.base + "/v1/batch",
            json={"batch": [body]},
            auth=(key_of("test-web"), ""),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        # one at a time, each resolved before the next: the order is the story
        self.run.wait_for(f"event {self.sent}", lambda: self.events() >= self.sent)

    def orders_without_waiting(self, anon: str, count: int, total: int) -> None:
        """Post ``count`` orders one request after another, not waiting for them to land."""
        for _ in range(count):
            self.sent += 1
            body = {
                "type": "track",
                "anonymousId": anon,
                "messageId": f"m-{self.sent}",
                "event": "Order Completed",
                "properties": {"total": total, "order_id": f"o-{self.sent}"},
            }
            r = httpx.post(
                self.base + "/v1/batch",
                json={"batch": [body]},
                auth=(key_of("test-web"), ""),
                timeout=30,
            )
            assert r.status_code == 200, r.text

    def order(self, anon: str, total: int) -> None:
        self.send(anon, "track", event="Order Completed", properties={"total": total})

    def events(self) -> int:
        """Events folded into the people's profiles (each merged profile counted once)."""
        found = [self.profile(anon) for anon in ("anon-a", "anon-b", "anon-c", "anon-d")]
        return sum({p["profile_id"]: p["events"] for p in found if p}.values())

    def profile(self, anon: str) -> dict[str, Any] | None:
        r = httpx.get(
            self.base + "/v1/profiles/lookup",
            params={"type": "anonymous_id", "value": anon},
            headers=READER,
            timeout=30,
        )
        return r.json() if r.status_code == 200 else None

    def buyers(self) -> int:
        seg = {"definition": {"event": "order_completed", "op": "gte", "value": 1}}
        r = httpx.post(self.base + "/v1/segments/count", json=seg, headers=SEGMENTS, timeout=60)
        assert r.status_code == 200, r.text
        return int(r.json()["count"])


def test_a_wrong_merge_is_undone_from_history_and_stays_undone(
    services: Services, tmp_path: Path, prefix: str
) -> None:
    settings = make_settings(services, prefix)
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"partitions": 1})}
    )
    topics.create_all(settings.kafka)
    port = free_port()
    run = Spawned(
        ["run", "--api-workers", "1", "--stream-workers", "1"],
        _env(settings, tmp_path, port),
        tmp_path,
    ).start()
    try:
        base = f"http://127.0.0.1:{port}"
        run.wait_for("the API", lambda: _healthy(base))
        shop = Shop(base, run)
        shop.send(
            "anon-a", "identify", traits={"phone": "13800138001", "email": EMAIL, "name": "Ann"}
        )
        shop.send("anon-b", "identify", traits={"phone": "13900139002", "name": "Bo"})
        shop.order("anon-b", 30)
        shop.send("anon-b", "identify", traits={"email": EMAIL})  # the cashier's mistake
        shop.order("anon-b", 50)
        shop.order("anon-a", 20)

        merged = shop.profile("anon-a")
        assert merged is not None and merged == shop.profile("anon-b")
        assert merged["order_count"] == 3 and merged["total_spend"] == 100
        run.wait_for("history counts one buyer", lambda: shop.buyers() == 1)
        explain = httpx.get(
            base + "/v1/identity/explain",
            params={"profile_id": merged["profile_id"]},
            headers=READER,
            timeout=30,
        ).json()
        gone = [e["other"] for e in explain["history"] if e["decision"] == "merged"]
        assert len(gone) == 1

        refused = httpx.post(
            base + "/v1/identity/splits",
            json={"profile_id": merged["profile_id"], "merged": gone[0]},
            headers=READER,
            timeout=60,
        )
        assert refused.status_code == 403, refused.text
        wrong = httpx.post(
            base + "/v1/identity/splits",
            json={"profile_id": merged["profile_id"], "merged": "999999"},
            headers=ADMIN,
            timeout=60,
        )
        assert wrong.status_code == 422 and wrong.json()["field"] == "merged", wrong.text

        # Bo keeps buying while the split runs: every order lands once, on Bo.
        with ThreadPoolExecutor(1) as pool:
            during = pool.submit(shop.orders_without_waiting, "anon-b", 15, 10)
            done = httpx.post(
                base + "/v1/identity/splits",
                json={"profile_id": merged["profile_id"], "merged": gone[0], "reason": "T-1"},
                headers=ADMIN,
                timeout=120,
            )
            during.result()
        print("split:", done.json())  # attempts, moved rows: shown with -rP
        assert done.status_code == 200, done.text
        assert len(done.json()["profiles"]) == 2
        run.wait_for("the orders posted during the split", lambda: shop.events() >= shop.sent)
        assert shop.events() == shop.sent

        ann, bo = shop.profile("anon-a"), shop.profile("anon-b")
        assert ann is not None and bo is not None
        assert ann["profile_id"] == merged["profile_id"] and bo["profile_id"] == gone[0]
        assert (ann["order_count"], ann["total_spend"]) == (1, 20)
        assert (bo["order_count"], bo["total_spend"]) == (2 + 15, 80 + 150)
        assert ann["traits"]["name"] == "Ann" and bo["traits"]["name"] == "Bo"
        assert f"email:{EMAIL}" in ann["identifiers"]
        assert f"email:{EMAIL}" not in bo["identifiers"]
        assert "phone:+8613900139002" in bo["identifiers"]
        assert "phone:+8613900139002" not in ann["identifiers"]
        run.wait_for("history counts two buyers", lambda: shop.buyers() == 2)
        told = httpx.get(
            base + "/v1/identity/explain",
            params={"profile_id": bo["profile_id"]},
            headers=READER,
            timeout=30,
        ).json()
        assert any(e["decision"] == "split" for e in told["history"]), told

        # The same wrong evidence again: refused (rule split), and nothing moves.
        shop.send("anon-b", "identify", traits={"email": EMAIL})
        shop.order("anon-b", 10)
        ann, bo = shop.profile("anon-a"), shop.profile("anon-b")
        assert ann is not None and bo is not None and ann["profile_id"] != bo["profile_id"]
        assert (ann["order_count"], bo["order_count"]) == (1, 2 + 15 + 1)
        assert f"email:{EMAIL}" not in bo["identifiers"]

        # A family's phone: detach the child's device id from the parent, with the CLI.
        shop.send("anon-c", "identify", traits={"phone": "13700137003", "name": "Cai"})
        shop.send("anon-d", "identify", traits={"phone": "13700137003"})
        shop.order("anon-d", 40)
        parent = shop.profile("anon-c")
        assert parent is not None and parent == shop.profile("anon-d")
        cli = subprocess.run(
            [sys.executable, "-m", "deploy", "identity", "split", parent["profile_id"],
             "--detach", "anonymous_id:anon-d", "--api", base, "--reason", "T-2"],
            env={**os.environ, **_env(settings, tmp_path, port), "CDP_TOKEN": "tk_identity_admin"},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert len(json.loads(cli.stdout)["profiles"]) == 2
        cai, child = shop.profile("anon-c"), shop.profile("anon-d")
        assert cai is not None and child is not None
        assert cai["profile_id"] == parent["profile_id"] != child["profile_id"]
        assert (cai["order_count"], child["order_count"]) == (0, 1)
        assert "phone:+8613700137003" in cai["identifiers"]
        assert child["identifiers"] == ["anonymous_id:anon-d"]
        assert shop.events() == shop.sent
    finally:
        run.kill()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=5).is_success
    except httpx.TransportError:
        return False
