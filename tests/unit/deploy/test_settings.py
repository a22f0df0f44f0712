import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from deploy.settings import ConfigError, KafkaSettings, Settings


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


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        # A JSON value an env file cut at its first line end.
        ("CDP_API__TOKENS", '[{"name": "recsys",', "CDP_API__TOKENS is not valid JSON: "),
        ("CDP_KAFKA", "{bad", "CDP_KAFKA is not valid JSON: "),
        ("CDP_IDENTITY__BLOCKLIST", "x@y.z", "CDP_IDENTITY__BLOCKLIST is not valid JSON: "),
        ("CDP_API__PORT", "80a", "CDP_API__PORT: Input should be a valid integer"),
        ("CDP_API", '{"port": "x"}', "CDP_API at port: Input should be a valid integer"),
        ("CDP_API__TOKENS", '[{"name": "r"}]', "CDP_API__TOKENS at [0].sha256: Field required"),
        ("cdp_shutdown_timeout_s", "-1", "CDP_SHUTDOWN_TIMEOUT_S: Input should be greater than 0"),
        ("CDP_LOG_LEVEL", "loud", "CDP_LOG_LEVEL: should be one of debug, info, warning"),
    ],
)
def test_a_wrong_setting_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv("CDP_API__HOST", "localhost")  # right, and named nowhere
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        Settings.load()
    assert str(caught.value).startswith(says)
    assert "HOST" not in str(caught.value)


def test_a_sources_file_that_is_not_a_list_of_sources_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "sources.json"
    monkeypatch.setenv("CDP_INGEST__SOURCES_FILE", str(path))
    cases = {
        "": f"CDP_INGEST__SOURCES_FILE ({path}) cannot be read as JSON",
        "{}": f"CDP_INGEST__SOURCES_FILE ({path}) should hold a JSON list of sources",
        '[{"name": "pos"}]': f"CDP_INGEST__SOURCES_FILE ({path}) at [0]: channel: Field required",
    }
    for text, says in cases.items():
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(says)):
            Settings.load().ingest.all_sources()


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


def test_topic_retention_is_the_registrys_unless_the_settings_say_otherwise() -> None:
    kafka = KafkaSettings(retention_days={"cdp.events.raw": 14, "cdp.events.deadletter": 0})
    assert kafka.retention_ms("cdp.events.raw") == str(14 * 86_400_000)
    assert kafka.retention_ms("cdp.events.deadletter") == "-1"  # 0: kept forever
    assert kafka.retention_ms("cdp.events.resolved") == str(7 * 86_400_000)
    assert kafka.retention_ms("cdp.keys") is None  # the contract decides
    assert kafka.topic_configs("cdp.events.raw") == {
        "min.insync.replicas": "1",
        "retention.ms": str(14 * 86_400_000),
    }
    assert kafka.topic_configs("cdp.keys")["retention.ms"] == "-1"


def test_topic_retention_comes_from_a_cdp_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_KAFKA__RETENTION_DAYS", '{"cdp.events.raw": 3.5}')
    assert Settings().kafka.retention_ms("cdp.events.raw") == str(int(3.5 * 86_400_000))


@pytest.mark.parametrize(
    ("retention", "problem"),
    [
        ({"cdp.keys": 30}, "not settable"),
        ({"cdp.segments.definitions": 30}, "not settable"),
        ({"cdp.events.nope": 30}, "no topic of the registry"),
        ({"cdp.events.raw": -1}, "0 (forever) or more"),
    ],
)
def test_retention_of_a_topic_kept_by_contract_or_unknown_is_refused(
    retention: dict[str, float], problem: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(problem)):
        KafkaSettings(retention_days=retention)


def test_history_retention_is_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().clickhouse.history_retention_days == 0
    monkeypatch.setenv("CDP_CLICKHOUSE__HISTORY_RETENTION_DAYS", "730")
    assert Settings().clickhouse.history_retention_days == 730
