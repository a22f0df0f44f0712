import pytest

from deploy.settings import Settings


def test_settings_come_from_cdp_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_KAFKA__BOOTSTRAP_SERVERS", "k:1")
    monkeypatch.setenv("CDP_KAFKA__TOPIC_PREFIX", "staging.")
    monkeypatch.setenv("CDP_INGEST__LIMITS__MAX_BATCH_EVENTS", "10")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "k:1"
    assert settings.kafka.topic("cdp.events.raw") == "staging.cdp.events.raw"
    assert settings.ingest.limits.max_batch_events == 10


def test_secrets_do_not_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_REDIS__URL", "redis://:hunter2@h:6379/0")
    assert "hunter2" not in repr(Settings())
