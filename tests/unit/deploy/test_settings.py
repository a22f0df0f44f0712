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


def test_abuse_limits_come_from_cdp_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_INGEST__RATE_LIMITS__KEY_EVENTS_PER_S", "0")
    monkeypatch.setenv("CDP_INGEST__RATE_LIMITS__ADDRESS_BURST", "50")
    monkeypatch.setenv("CDP_INGEST__TRUSTED_PROXIES", '["10.0.0.0/8", "192.0.2.1"]')
    monkeypatch.setenv("CDP_INGEST__REFUSAL_LETTERS__PER_ADDRESS", "2")
    ingest = Settings().ingest
    assert ingest.rate_limits.key_events_per_s == 0
    assert ingest.rate_limits.address_burst == 50
    assert ingest.rate_limits.address_requests_per_s == 1000  # the default, untouched
    assert [str(n) for n in ingest.trusted_proxies] == ["10.0.0.0/8", "192.0.2.1/32"]
    assert ingest.refusal_letters.per_address == 2


def test_the_api_knows_how_many_processes_share_its_port() -> None:
    assert Settings(api={"workers": 3}).api.processes() == 3  # type: ignore[arg-type]
    assert Settings().api.processes() >= 1
