"""``cdp sources``: check source mappings and see what they make of a sample event."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from contracts.events import Channel
from ingest import intake as take
from ingest.exceptions import Rejected
from ingest.mapping import MappingError, load_mapping
from ingest.mappings import load_all
from ingest.sources import Source


def _sample(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.ClickException(f"{path}: not JSON: {exc}") from None


def _intake(sample: Any, stamp: take.Stamp) -> take.Intake:
    """Take the sample as the endpoint its shape belongs to: a Segment batch, native
    events (with ``identifiers``), or one Segment message."""
    if isinstance(sample, dict) and "batch" in sample:
        return take.segment_batch(sample, stamp)
    if isinstance(sample, list) or (
        isinstance(sample, dict) and ("events" in sample or "identifiers" in sample)
    ):
        return take.native(sample, stamp)
    return take.segment_batch({"batch": [sample]}, stamp)


@click.group()
def sources() -> None:
    """Source mappings: check them, try them on a sample."""


@sources.command("check")
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@click.pass_obj
def sources_check(settings: Any, path: Path | None) -> None:
    """Validate a mapping file or directory (default: the configured one); exit 1 if bad."""
    where = path or settings.ingest.mappings
    if where is None:
        raise click.UsageError("no mapping given and CDP_INGEST__MAPPINGS is not set")
    try:
        loaded = load_all(where)
    except MappingError as exc:
        raise click.ClickException(str(exc)) from None
    for source, mapping in sorted(loaded.items()):
        click.echo(f"{source:24} {mapping.name} ({mapping.version})")
    click.echo(f"mappings ok: {len({m.name for m in loaded.values()})} for {len(loaded)} sources")


@sources.command("test")
@click.argument("mapping", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("sample", type=click.Path(allow_dash=True))
@click.option("--source", "source_name", help="Source name (default: the mapping's first).")
@click.option("--channel", type=click.Choice([c.value for c in Channel]), default="other")
@click.option("--user-id-type", default="customer_id", show_default=True)
@click.pass_obj
def sources_test(
    settings: Any,
    mapping: Path,
    sample: str,
    source_name: str | None,
    channel: str,
    user_id_type: str,
) -> None:
    """Print, as JSON lines, the events MAPPING makes of SAMPLE (a Segment message or batch,
    or native events; ``-`` reads stdin); rejections go to stderr and exit 1."""
    try:
        compiled = load_mapping(mapping)
    except MappingError as exc:
        raise click.ClickException(str(exc)) from None
    source = Source(
        name=source_name or (compiled.sources[0] if compiled.sources else "sample"),
        channel=Channel(channel),
        user_id_type=user_id_type,
        key_sha256="0" * 64,
    )
    stamp = take.Stamp(
        source,
        datetime.now(UTC),
        settings.ingest.limits,
        settings.ingest.default_region,
        compiled,
    )
    try:
        result = _intake(_sample(sample), stamp)
    except Rejected as rejected:
        raise click.ClickException(f"{rejected.field}: {rejected.message}") from None
    for event in result.events:
        click.echo(event.model_dump_json(exclude_none=True))
    for refused, _ in result.rejections:
        click.echo(f"rejected {refused.field}: {refused.message}", err=True)
    if result.rejections:
        sys.exit(1)
