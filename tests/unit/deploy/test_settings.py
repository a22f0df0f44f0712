import re
from pathlib import Path

import pytest

from deploy.settings import ConfigError, Settings


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
