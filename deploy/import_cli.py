"""``cdp import FILE --source NAME``: import a file export through ingest, with a progress bar."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from deploy import privacy
from deploy.app import fewer_collections, freeze_startup_heap, ingest_config, kafka_publisher
from deploy.settings import ConfigError, Settings
from ingest.api import IngestEndpoints
from ingest.imports import Importer, Report
from ingest.mapping import MappingError, load_mapping
from ingest.rowfile import FORMATS, RowFile, file_format
from runtime.exceptions import KafkaUnavailable


async def _import(
    settings: Settings, path: Path, fmt: str, source_name: str, mapping_file: Path | None
) -> Report:
    publisher = kafka_publisher(settings)
    client = aioredis.from_url(settings.redis.url.get_secret_value())
    try:
        sealing = privacy.build(settings, client, publisher)
        ingest = IngestEndpoints(
            ingest_config(settings, publisher, sealing.sealer if sealing else None, processes=1)
        )
        sources = {s.name: s for s in settings.ingest.all_sources()}
        if source_name not in sources:
            raise ConfigError(f"no source named {source_name!r} (known: {sorted(sources)})")
        mapping = load_mapping(mapping_file) if mapping_file else None
        importer = Importer(
            ingest, client, settings.worker.namespace, sources[source_name], mapping
        )
        total = RowFile(path, fmt).total
        stderr = click.get_text_stream("stderr")
        with click.progressbar(length=total, label=path.name, file=stderr) as bar:

            def progress(rows: RowFile) -> None:
                bar.update(rows.done - (bar.pos or 0))

            freeze_startup_heap()  # modules, phone metadata, clients: not walked per full pass
            with fewer_collections():
                report = await importer.run(path, fmt, progress)
            bar.update(total - (bar.pos or 0))
        return report
    finally:
        await publisher.stop()
        await client.aclose()


def register(cli: click.Group) -> None:
    """Add ``cdp import`` to ``cli``."""

    @cli.command("import")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--source", "source_name", required=True, help="The source the rows come from.")
    @click.option(
        "--mapping",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A mapping file (default: the source's configured mapping).",
    )
    @click.option("--format", "fmt", type=click.Choice(FORMATS), help="Default: by suffix.")
    @click.pass_obj
    def import_file(
        settings: Settings, file: Path, source_name: str, mapping: Path | None, fmt: str | None
    ) -> None:
        """Import a CSV, JSON lines or Parquet export (streamed, idempotent, resumable);
        print the report as JSON. Exit 1 if Kafka or Redis stopped it (run it again to
        resume)."""
        try:
            chosen = file_format(file, fmt)
            report = asyncio.run(_import(settings, file, chosen, source_name, mapping))
        except (ValueError, MappingError) as exc:
            raise click.UsageError(str(exc)) from None
        except (KafkaUnavailable, RedisError) as exc:
            raise click.ClickException(f"import stopped: {exc}; run it again to resume") from None
        out: dict[str, Any] = report.as_dict()
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
