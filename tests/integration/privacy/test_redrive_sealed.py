"""Dead letters sealed under their day's key: shown masked, opened for a re-drive, and the
re-driven events sealed again before they reach Kafka."""

from __future__ import annotations

import httpx

from deploy.settings import Settings
from runtime.readback import read_to_end
from tests.integration.privacy.test_end_to_end import private
from tests.integration.test_redrive import NEW_KEY, OPS, kiosk
from tests.integration.test_redrive import _basic as basic
from tests.support.server import running_api

EMAIL = "secret.person@example.com"


def test_a_sealed_letter_is_masked_opened_and_redriven_sealed(settings: Settings) -> None:
    sealed = private(settings)
    body = {"batch": [{"type": "identify", "userId": "K-7", "traits": {"email": EMAIL}}]}
    with running_api(sealed) as api:
        assert httpx.post(api + "/v1/batch", json=body, headers=basic(NEW_KEY)).status_code == 401
    dead = read_to_end(
        settings.kafka.bootstrap_servers, settings.kafka.topic("cdp.events.deadletter")
    )
    assert len(dead) == 1 and dead[0]["sealed"] and EMAIL not in str(dead)

    added = sealed.ingest.model_copy(update={"sources": [*sealed.ingest.sources, kiosk()]})
    with running_api(sealed.model_copy(update={"ingest": added})) as api:
        listed = httpx.get(api + "/v1/deadletters", headers=OPS).json()
        assert [(r["source"], r["sealed"]) for r in listed["letters"]] == [("kiosk", True)]
        shown = httpx.get(api + f"/v1/deadletters/{listed['letters'][0]['id']}", headers=OPS)
        assert shown.status_code == 200 and EMAIL not in shown.text  # masked: no pii:read
        assert "secret.person" not in shown.text and "example.com" in shown.text
        report = httpx.post(
            api + "/v1/deadletters/redrive", json={"source": "kiosk"}, headers=OPS
        ).json()
        assert (report["redriven"], report["accepted"]) == (1, 1)
    raw = read_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic("cdp.events.raw"))
    assert len(raw) == 1 and raw[0]["source"] == "kiosk"
    assert EMAIL not in str(raw)  # sealed again before it reached Kafka
    assert any(i["type"] == "email" and i["sealed"] for i in raw[0]["identifiers"])
