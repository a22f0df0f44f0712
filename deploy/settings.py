"""Settings: built once at the entry point from ``CDP_*`` variables, then passed in."""

from __future__ import annotations

import json
import logging
import os
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from contracts.errors import CDPError
from contracts.topics import REGISTRY
from identity.rules import IdentityRules
from identity.store import RETRY_BUCKETS
from ingest.limits import Limits, RateLimits, RefusalLetters
from ingest.mapping import MappingError
from ingest.mappings import MappingRegistry
from ingest.sources import Source
from profiles.fold import FoldRules
from runtime.auth import Token


class ConfigError(CDPError):
    """A setting, or a file a setting names, is invalid (exit 2, one line, no traceback)."""


def _state_home() -> Path:
    # The environment reads outside Settings: where XDG says state and caches live.
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "cdp"


def cache_home() -> Path:
    """Where derived, re-creatable files are cached (``$XDG_CACHE_HOME/cdp``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cdp"


class KafkaSettings(BaseModel):
    """Kafka connection and topic defaults."""

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = "127.0.0.1:19092"
    #: Prepended to every registry topic name (tests use a fresh one per test).
    topic_prefix: str = ""
    partitions: int = 6
    replication_factor: int = 1
    #: How long a request waits for Kafka's acknowledgement before answering 503.
    publish_timeout_s: float = 10.0
    request_timeout_ms: int = 8_000
    linger_ms: int = 5
    #: How often a consumer heartbeats its group. A member joining (a worker process started,
    #: scaled out or restarted) rebalances the group, and the members go on reading only
    #: after each has noticed it on a heartbeat: at Kafka's 3 s a restart of ``cdp run``
    #: left one stream process alone for ~4 s before the other read anything, at 1 s ~1.4 s
    #: (docs/benchmarks.md). Kafka wants it under a third of the session timeout (faust's 60 s).
    heartbeat_interval_s: float = 1.0
    #: Days a topic keeps its records, by registry name (``{"cdp.events.raw": 14}``), over the
    #: registry's defaults; 0 keeps them forever. Applied when topics are created and to
    #: existing ones by ``cdp topics create`` and ``cdp run`` (docs/privacy.md, "Retention").
    #: Compacted topics kept forever by contract (keys, segment definitions) are not settable.
    retention_days: dict[str, float] = Field(default_factory=dict)

    @field_validator("retention_days")
    @classmethod
    def _settable(cls, value: dict[str, float]) -> dict[str, float]:
        for name, days in value.items():
            topic = REGISTRY.get(name)
            if topic is None:
                raise ValueError(f"{name!r} is no topic of the registry: {sorted(REGISTRY)}")
            if topic.retention_days is None:
                raise ValueError(f"{name} keeps its records as its contract says: not settable")
            if days < 0:
                raise ValueError(f"{name}: days must be 0 (forever) or more")
        return value

    def topic(self, name: str) -> str:
        """Return the deployed name of a registry topic."""
        return REGISTRY[name].qualified(self.topic_prefix)

    def retention_ms(self, name: str) -> str | None:
        """The ``retention.ms`` this deployment gives a registry topic (``-1``: forever), or
        None where the contract's own configs decide."""
        days = self.retention_days.get(name, REGISTRY[name].retention_days)
        if days is None:
            return None
        return "-1" if days == 0 else str(round(days * 24 * 3600 * 1000))

    def topic_configs(self, name: str) -> dict[str, str]:
        """The configs a registry topic is created with: its contract's, and its retention."""
        configs = dict(REGISTRY[name].configs)
        retention = self.retention_ms(name)
        if retention is not None:
            configs["retention.ms"] = retention
        return configs


class RedisSettings(BaseModel):
    """Redis connection."""

    model_config = ConfigDict(frozen=True)

    url: SecretStr = SecretStr("redis://127.0.0.1:16379/0")


class ClickHouseSettings(BaseModel):
    """ClickHouse: embedded chDB at ``path`` unless a server ``url`` is given."""

    model_config = ConfigDict(frozen=True)

    url: SecretStr | None = None
    path: Path | None = None
    #: An identifier that goes into SQL: letters, digits, underscore only.
    database: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")] = "cdp"
    #: Days the history keeps each event (by its time) and the profile and tag changes it
    #: caused (by when they were made); 0 keeps them forever (docs/privacy.md, "Retention").
    history_retention_days: int = Field(default=0, ge=0)


class ApiSettings(BaseModel):
    """HTTP API listener."""

    model_config = ConfigDict(frozen=True)

    host: str = "127.0.0.1"
    port: int = 8088
    #: API processes serving the port (``cdp api``); 0 means one per CPU.
    workers: int = Field(default=0, ge=0)
    #: uvicorn's event loop and HTTP parser (the pure-Python "asyncio"/"h11" are slower).
    loop: Literal["uvloop", "asyncio"] = "uvloop"
    http: Literal["httptools", "h11"] = "httptools"
    #: Where the process owning the embedded ClickHouse serves; segment routes forward there
    #: (set by ``cdp run`` for its extra API processes).
    history_owner: str | None = None
    #: Bearer tokens of the read APIs (hashes only); ``cdp tokens new`` mints one.
    tokens: list[Token] = Field(default_factory=list)

    def processes(self) -> int:
        """How many API processes serve the port: ``workers``, else one per CPU."""
        return self.workers or os.cpu_count() or 1


class IngestSettings(BaseModel):
    """Ingest: sources (write keys), limits, normalisation."""

    model_config = ConfigDict(frozen=True)

    #: JSON file holding a list of sources; merged with ``sources``.
    sources_file: Path | None = None
    sources: list[Source] = Field(default_factory=list)
    #: A directory of source mappings (``*.yaml``) or one mapping file (docs/sources.md);
    #: re-read when a file changes, without a restart.
    mappings: Path | None = None
    #: Where ``POST /v1/imports`` keeps an uploaded file while it is imported (removed
    #: after); the system's temporary directory when unset.
    import_dir: Path | None = None
    #: The largest file ``POST /v1/imports`` takes (``cdp import`` reads files of any size).
    import_max_bytes: int = Field(default=10 * 1024**3, gt=0)
    limits: Limits = Limits()
    #: Region used to read phone numbers given without a country code.
    default_region: str = "CN"
    #: Origins whose pages may send events from the browser (CORS on ingest routes only);
    #: ``*`` by default, since a source's write key is what authorises an event.
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    #: Proxies (addresses or networks) whose ``X-Forwarded-For`` names the client; none by
    #: default, so the client is the socket peer (anyone can send the header).
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    #: The prefix that is one IPv6 client: a subscriber gets a /64 (2^64 addresses to rotate
    #: through), so limiting single IPv6 addresses would limit nothing.
    client_ipv6_prefix: int = Field(default=64, ge=16, le=128)
    #: Requests per client address and events per write key (docs/privacy.md, "Abuse limits").
    rate_limits: RateLimits = RateLimits()
    #: How refused requests are dead-lettered: by sample, the others counted in summaries.
    refusal_letters: RefusalLetters = RefusalLetters()

    def all_sources(self) -> list[Source]:
        """Return inline sources plus those in ``sources_file``."""
        loaded: list[Source] = []
        if self.sources_file is not None:
            where = f"CDP_INGEST__SOURCES_FILE ({self.sources_file})"
            try:
                raw = json.loads(self.sources_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{where} cannot be read as JSON: {exc}") from None
            if not isinstance(raw, list):
                raise ConfigError(f"{where} should hold a JSON list of sources")
            for i, item in enumerate(raw):
                try:
                    loaded.append(Source.model_validate(item))
                except ValidationError as exc:
                    why = "; ".join(
                        f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}"
                        for e in exc.errors()
                    )
                    raise ConfigError(f"{where} at [{i}]: {why}") from None
        return [*self.sources, *loaded]

    def mapping_registry(self) -> MappingRegistry | None:
        """The source mappings, validated now (None when none are configured)."""
        if self.mappings is None:
            return None
        try:
            return MappingRegistry(self.mappings)
        except MappingError as exc:
            raise ConfigError(f"CDP_INGEST__MAPPINGS: {exc}") from None


class WorkerSettings(BaseModel):
    """Stream processors: consumer group, micro-batch sizes."""

    model_config = ConfigDict(frozen=True)

    #: Consumer group prefix; the group is ``<app_id>-<roles>`` so workers of the same
    #: roles share partitions.
    app_id: str = "cdp"
    batch_size: int = 1_000
    batch_within_s: float = 0.05
    sink_batch_size: int = 10_000
    #: How long the history gathers a batch for one insert per table: events reach
    #: ClickHouse this much later at most, and each insert is a part that ClickHouse merges
    #: later. 1 s against 0.5 s: -8% CPU per event in the history process in `cdp run`
    #: (docs/benchmarks.md).
    sink_within_s: float = 1.0
    #: How often the history worker stores the snapshots published since (and snapshots
    #: the profiles changed outside the stream: timed tags, backfills, splits).
    snapshot_interval_s: float = 2.0
    #: The stream processor publishes each profile it tagged, as it stored it, to
    #: ``cdp.profiles.snapshots``, for services that keep a copy of profiles; the history
    #: then stores those instead of reading them back from Redis. Off by default: measured on
    #: two cores it costs ~5% more CPU per event than the read-back it replaces
    #: (docs/benchmarks.md).
    publish_snapshots: bool = False
    #: Redis key namespace for identity and profiles.
    namespace: str = "cdp"
    #: How long a client may retry an event and still have it recognised as a duplicate.
    identity_retry_window_s: int = 7 * 24 * 3600
    #: Sets per day of the retry window: about a day's events / 400 keeps each an 8-byte
    #: intset (see identity/store.py).
    identity_retry_buckets: int = Field(default=RETRY_BUCKETS, ge=1)
    #: Stream processor processes ``cdp run`` starts beside its own (one consumer group;
    #: up to one per partition of ``cdp.events.raw`` do work). Three by default even on two
    #: cores: each batch waits on Redis and on Kafka's acks, and another process works
    #: while one waits; on two cores three drained 3-12% more than two in each of four
    #: alternated rounds, ~210 MB of memory each (docs/benchmarks.md).
    processes: int = Field(default=3, ge=1)
    #: A stable name for this worker in its consumer group (KIP-345 static membership, e.g.
    #: a StatefulSet's pod name): restarted under the same name it takes its partitions back
    #: at once instead of after the session timeout. Must differ between running workers of
    #: a group. ``cdp run`` names its stream processes ``<this or the host name>-<slot>``.
    instance_id: str | None = None
    #: Keep faust's per-event Monitor sensor (off: it costs CPU on every message).
    faust_monitor: bool = False


class TagSettings(BaseModel):
    """The tag catalog and its evaluation."""

    model_config = ConfigDict(frozen=True)

    #: Evaluate tags in the profiles processor (off: profiles only, no tag indexes).
    enabled: bool = True
    #: Directory of catalog ``*.yaml`` files; the shipped catalog when unset.
    catalog: Path | None = None
    #: How often the profiles worker re-evaluates profiles whose timed tags fell due.
    due_interval_s: float = 1.0
    #: Backfill new or changed tags over existing profiles when a profiles worker starts.
    backfill_on_start: bool = True


class SegmentSettings(BaseModel):
    """Saved segments: scheduled refresh and live membership events."""

    model_config = ConfigDict(frozen=True)

    #: How often the history worker recomputes saved (non-live) segments and publishes who
    #: entered and left; 0 turns the refresh off.
    refresh_interval_s: float = 300.0
    #: How often the profiles worker re-reads the saved live segments it emits changes for.
    live_reload_s: float = 10.0
    #: A segment query (count, preview, export) running longer is stopped with a 504: one
    #: ClickHouse serves every history query and the history writer.
    query_timeout_s: float = Field(default=30.0, gt=0)


class CareSettings(BaseModel):
    """Care and follow-up tasks: their rules and the webhook they are delivered to."""

    model_config = ConfigDict(frozen=True)

    #: Run the care processor in ``cdp run`` (``cdp worker --role care`` runs it anyway).
    enabled: bool = True
    #: Directory of care rule ``*.yaml`` files; the shipped rules when unset (docs/care.md).
    rules: Path | None = None
    #: Where open tasks are POSTed; unset: tasks go to ``cdp.care.tasks`` and the API only.
    webhook_url: str | None = Field(default=None, pattern=r"^https?://")
    #: The HMAC-SHA256 key of the deliveries' ``X-CDP-Signature`` (needed with a URL).
    webhook_secret: SecretStr | None = None
    #: Attempts of one delivery before it goes to the dead letters.
    max_attempts: int = Field(default=8, ge=1, le=100)
    #: The wait after the first failed attempt; it doubles with each failure, up to the max.
    backoff_s: float = Field(default=2.0, gt=0)
    backoff_max_s: float = Field(default=600.0, gt=0)
    #: How long one attempt may take.
    timeout_s: float = Field(default=10.0, gt=0)
    #: How often the care worker looks for occasions that fell due and deliveries to send.
    interval_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _signed(self) -> CareSettings:
        if self.webhook_url and self.webhook_secret is None:
            raise ValueError("webhook_secret is required with webhook_url")
        return self


class LocalSettings(BaseModel):
    """The local real stack started by ``cdp up`` (and by the test fixtures)."""

    model_config = ConfigDict(frozen=True)

    state_dir: Path = Field(default_factory=_state_home)
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    redis_port: int = 16379
    kafka_heap: str = "512m"
    startup_timeout_s: float = 90.0


class MetricsSettings(BaseModel):
    """Prometheus metrics of the workers (the API serves them on its own port at ``/metrics``)."""

    model_config = ConfigDict(frozen=True)

    #: Where ``cdp worker`` and ``cdp run`` serve their metrics (and consumer lag); 0: off.
    port: int = Field(default=9108, ge=0, le=65535)
    host: str = "127.0.0.1"
    #: How often a scrape re-reads consumer lag, profile and tag counts (cached in between).
    state_interval_s: float = Field(default=10.0, ge=0)


class PrivacySettings(BaseModel):
    """Field encryption: blind indexes and per-subject keys (docs/privacy.md)."""

    model_config = ConfigDict(frozen=True)

    #: Seal sensitive values at ingest; reads mask them unless the token has ``pii:read``.
    #: Unset: on when master keys are configured (``master_keys``, or the key file exists:
    #: ``cdp up`` creates one for the local stack). False: off even then. True: on, and a
    #: process without master keys refuses to start.
    enabled: bool | None = None
    #: The master keys as JSON (index key and key-encryption keys); wins over the file.
    master_keys: SecretStr | None = None
    #: The master key file (``cdp keys init`` writes it); default ``<state_dir>/master-keys.json``.
    master_key_file: Path | None = None
    #: Which fields are sensitive; default: contracts/sensitive.yaml.
    classification: Path | None = None
    #: How long a process keeps an unwrapped data key: a shred reaches every process within it.
    cache_ttl_s: float = Field(default=60.0, gt=0)
    #: An erasure of more people than this in one request needs a second token's approval.
    approval_threshold: int = Field(default=10, ge=1)
    #: How long a request for approval stays open; expired, it can do nothing.
    approval_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    #: ``cdp keys rotate-master`` needs an approved request (``--approval``).
    rotation_needs_approval: bool = True


class Settings(BaseSettings):
    """Every setting of the platform; ``CDP_KAFKA__BOOTSTRAP_SERVERS`` and so on."""

    model_config = SettingsConfigDict(
        env_prefix="CDP_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    api: ApiSettings = ApiSettings()
    ingest: IngestSettings = IngestSettings()
    local: LocalSettings = LocalSettings()
    worker: WorkerSettings = WorkerSettings()
    identity: IdentityRules = IdentityRules()
    profiles: FoldRules = FoldRules()
    tags: TagSettings = TagSettings()
    segments: SegmentSettings = SegmentSettings()
    care: CareSettings = CareSettings()
    privacy: PrivacySettings = PrivacySettings()
    metrics: MetricsSettings = MetricsSettings()
    log_level: str = "info"
    log_json: bool = False
    #: How long ``cdp run``, ``cdp api`` and ``cdp worker`` may take to stop after
    #: SIGTERM/SIGINT, whatever is down; then they exit anyway (docs/operations.md).
    shutdown_timeout_s: float = Field(default=15.0, gt=0)
    #: How long they wait at start for Kafka and Redis to answer before giving up (exit 3).
    startup_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in logging.getLevelNamesMapping():
            raise ValueError("should be one of debug, info, warning, error, critical")
        return value.lower()

    @classmethod
    def load(cls) -> Settings:
        """Read the settings; ``ConfigError`` naming the ``CDP_`` variable when one is wrong."""
        try:
            return cls()
        except SettingsError as exc:
            raise ConfigError(_unparsable(exc)) from None
        except ValidationError as exc:
            raise ConfigError(_invalid(exc)) from None

    def log_level_faust(self) -> str:
        """Return the log level in faust's vocabulary."""
        return {"warning": "warn", "critical": "crit"}.get(self.log_level, self.log_level)

    def master_key_path(self) -> Path:
        """Where the master key file is (``cdp keys init`` writes it there)."""
        return self.privacy.master_key_file or self.local.state_dir / "master-keys.json"

    def privacy_enabled(self) -> bool:
        """Whether sensitive values are sealed (see ``PrivacySettings.enabled``)."""
        if self.privacy.enabled is not None:
            return self.privacy.enabled
        return self.privacy.master_keys is not None or self.master_key_path().exists()

    def chdb_path(self) -> Path:
        """Return the embedded ClickHouse data directory."""
        return self.clickhouse.path or self.local.state_dir / "chdb"


PREFIX, NESTING = "CDP_", "__"


def _environ() -> dict[str, str]:
    """The ``CDP_`` variables, by upper-case name (pydantic-settings ignores the case)."""
    return {k.upper(): v for k, v in os.environ.items() if k.upper().startswith(PREFIX)}


def _unparsable(exc: SettingsError) -> str:
    """Name the variable whose JSON value pydantic-settings could not parse, and why."""
    why = str(exc.__cause__) if exc.__cause__ is not None else str(exc)
    field = str(exc).split('"')[1] if '"' in str(exc) else ""
    own = PREFIX + field.upper()
    candidates = [n for n in _environ() if n == own or n.startswith(own + NESTING)]
    culprits = [n for n in candidates if _parsed_as_json(n) and not _is_json(_environ()[n])]
    named = culprits or candidates or [own]
    return (
        f"{' or '.join(named)} is not valid JSON: {why} "
        "(an env file holds each value on one line: keep the whole JSON there)"
    )


def _is_json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def is_setting(name: str) -> bool:
    """Whether ``CDP_...`` variable ``name`` sets a setting (deployment files are checked
    with it: a misspelt variable would be silently ignored)."""
    if not name.upper().startswith(PREFIX):
        return False
    annotation: Any = Settings
    for part in name[len(PREFIX) :].lower().split(NESTING):
        annotation = _unwrapped(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if part not in annotation.model_fields:
                return False
            annotation = annotation.model_fields[part].annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return False
    return True


def _parsed_as_json(name: str) -> bool:
    """Whether the setting ``name`` is a model, list or mapping (given as JSON)."""
    annotation: Any = Settings
    for part in name[len(PREFIX) :].lower().split(NESTING):
        annotation = _unwrapped(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = annotation.model_fields
            if part not in fields:
                return False
            annotation = fields[part].annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return False
    annotation = _unwrapped(annotation)
    return get_origin(annotation) in (list, dict, set, frozenset, tuple) or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel)
    )


def _unwrapped(annotation: Any) -> Any:
    """``X`` of ``X | None`` and of ``Annotated[X, ...]``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            rest = [a for a in get_args(annotation) if a is not type(None)]
            if len(rest) != 1:
                return annotation
            annotation = rest[0]
        else:
            return annotation


def _invalid(exc: ValidationError) -> str:
    """One line per wrong value: the variable that held it and what is wrong with it."""
    env = _environ()
    problems = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        # The longest prefix of the location that is a variable: the value came from it
        # (CDP_API__TOKENS='[{...}]' -> api.tokens.0.sha256 names CDP_API__TOKENS).
        for cut in range(len(loc), 0, -1):
            name = PREFIX + NESTING.join(loc[:cut]).upper()
            if name in env:
                inner = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[cut:])
                where = f"{name}{' at ' + inner.lstrip('.') if inner else ''}"
                break
        else:
            where = PREFIX + NESTING.join(loc).upper()
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return "; ".join(problems)
