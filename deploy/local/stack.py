"""``cdp up|down|status``: the local real services, started and stopped idempotently."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy.local.kafka import KafkaBroker
from deploy.local.redis import RedisServer
from deploy.settings import Settings


@dataclass(frozen=True)
class LocalStack:
    """Kafka and Redis under one state directory; ClickHouse is embedded (chDB)."""

    kafka: KafkaBroker
    redis: RedisServer
    chdb_path: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalStack:
        """Lay the stack out under ``settings.local.state_dir``."""
        local = settings.local
        return cls(
            kafka=KafkaBroker(
                local.state_dir / "kafka",
                local.kafka_port,
                local.kafka_controller_port,
                heap=local.kafka_heap,
            ),
            redis=RedisServer(local.state_dir / "redis", local.redis_port),
            chdb_path=settings.chdb_path(),
        )

    def up(self, timeout_s: float = 90.0) -> dict[str, bool]:
        """Start what is not running; return which services this call started."""
        return {
            "redis": self.redis.start(),
            "kafka": self.kafka.start(timeout_s),
        }

    def down(self) -> dict[str, bool]:
        """Stop only the processes this tool started; return which were running."""
        return {"kafka": self.kafka.stop(), "redis": self.redis.stop()}

    def status(self) -> dict[str, dict[str, object]]:
        """Describe each service: address, health, log."""
        return {
            "kafka": {
                "address": self.kafka.bootstrap,
                "running": self.kafka.running(),
                "ready": self.kafka.ready(),
                "log": str(self.kafka.log_path),
            },
            "redis": {
                "address": self.redis.url,
                "running": self.redis.running(),
                "ready": self.redis.ready(),
                "log": str(self.redis.log_path),
            },
            "clickhouse": {
                "address": f"chdb://{self.chdb_path}",
                "running": True,
                "ready": True,
                "log": "embedded in the cdp process",
            },
        }
