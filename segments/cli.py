"""``cdp segments``: explain offline; count, preview, export and saved segments through the API.

Queries go through the running API because embedded ClickHouse belongs to the process that
writes it (``cdp run``). SEGMENT is a definition file (YAML or JSON) or a saved segment's id.
The token comes from ``--token`` or ``CDP_TOKEN`` (a token with the segments scopes).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx
from pydantic import ValidationError

from contracts.segments import SegmentDefinition, error_path
from segments.service import purposes
from segments.sql import Compiler, SegmentError
from segments.yamlio import load_yaml
from tagging.catalog import load

FORMATS = ("csv", "jsonl", "parquet")


def _read(source: str) -> dict[str, Any]:
    """A definition file's content (YAML is a superset of JSON)."""
    data = load_yaml(Path(source).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise click.ClickException(f"{source}: a segment definition is a mapping")
    return data


def _definition(source: str) -> SegmentDefinition:
    try:
        return SegmentDefinition.model_validate(_read(source))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise click.ClickException(f"{error_path(first['loc'])}: {first['msg']}") from exc


class _Api:
    """The running API, as the CLI calls it."""

    def __init__(self, settings: Any, api: str | None, token: str | None) -> None:
        if not token:
            raise click.ClickException("a token is needed: --token or CDP_TOKEN")
        self.base = api or f"http://{settings.api.host}:{settings.api.port}"
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, source: str | None = None, **kw: Any) -> httpx.Response:
        """``path`` is under /v1/segments; with a file, POST it to the ad-hoc route."""
        if source is not None and Path(source).exists():
            kw["json"] = _read(source)
            url, method = f"{self.base}/v1/segments{path}", "POST"
        elif source is not None:
            url = f"{self.base}/v1/segments/{source}{path}"
        else:
            url = f"{self.base}/v1/segments{path}"
        try:
            response = httpx.request(method, url, headers=self.headers, timeout=600, **kw)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"{self.base}: {exc} (is `cdp run` up?)") from exc
        return _checked(response)

    def stream(self, source: str, params: dict[str, Any]) -> Any:
        """The export of a file's definition or of a saved segment, as a streamed response."""
        kw: dict[str, Any] = {"params": params, "headers": self.headers}
        if Path(source).exists():
            method, url, kw["json"] = "POST", f"{self.base}/v1/segments/export", _read(source)
        else:
            method, url = "GET", f"{self.base}/v1/segments/{source}/export"
        # A large export may take minutes between the first and last byte, not between reads.
        return httpx.stream(method, url, timeout=httpx.Timeout(30.0, read=600.0), **kw)


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            body = response.json()
            detail = f"{body.get('message')} (field: {body.get('field')})"
        except ValueError:
            detail = response.text[:500]
        raise click.ClickException(f"HTTP {response.status_code}: {detail}")
    return response


def _echo(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


api_option = click.option("--api", default=None, help="API base URL (default: from settings).")
token_option = click.option("--token", envvar="CDP_TOKEN", help="Bearer token (or CDP_TOKEN).")
unconsented_option = click.option(
    "--include-unconsented", is_flag=True, help="Skip the purpose's consent filter (admin)."
)


@click.group()
def segments() -> None:
    """Segments: explain, count, preview, export; saved segments."""


@segments.command("explain")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@unconsented_option
@click.pass_obj
def segments_explain(settings: Any, source: str, include_unconsented: bool) -> None:
    """Print the SQL (and bound parameters) a definition file compiles to; no services needed."""
    seg = _definition(source)
    catalog = load(settings.tags.catalog)
    compiler = Compiler(
        settings.clickhouse.database, tags=list(catalog.by_id), purposes=purposes(catalog)
    )
    try:
        q = compiler.count(seg, datetime.now(UTC), enforce_consent=not include_unconsented)
    except SegmentError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(q.sql)
    click.echo("-- parameters:")
    for name, value in q.params.items():
        click.echo(f"--   {name} = {value!r}")


@segments.command("count")
@click.argument("source")
@unconsented_option
@api_option
@token_option
@click.pass_obj
def segments_count(
    settings: Any, source: str, include_unconsented: bool, api: str | None, token: str | None
) -> None:
    """Count the members of SEGMENT (a file or a saved id)."""
    params = {"include_unconsented": "true"} if include_unconsented else {}
    found = _Api(settings, api, token).call("GET", "/count", source, params=params).json()
    click.echo(f"{found['count']}  (from the {found['source']})")


@segments.command("preview")
@click.argument("source")
@click.option("--field", "fields", multiple=True, help="A field to show (repeat).")
@click.option("--limit", default=20, show_default=True)
@unconsented_option
@api_option
@token_option
@click.pass_obj
def segments_preview(
    settings: Any,
    source: str,
    fields: tuple[str, ...],
    limit: int,
    include_unconsented: bool,
    api: str | None,
    token: str | None,
) -> None:
    """Show some members of SEGMENT with FIELDs, as JSON lines."""
    params: dict[str, Any] = {"limit": limit, "fields": list(fields)}
    if include_unconsented:
        params["include_unconsented"] = "true"
    found = _Api(settings, api, token).call("GET", "/preview", source, params=params).json()
    for row in found["profiles"]:
        click.echo(json.dumps(row, ensure_ascii=False))


@segments.command("export")
@click.argument("source")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True)
@click.option("--field", "fields", multiple=True, help="A field to export (repeat).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@unconsented_option
@api_option
@token_option
@click.pass_obj
def segments_export(
    settings: Any,
    source: str,
    fmt: str,
    fields: tuple[str, ...],
    out: Path,
    include_unconsented: bool,
    api: str | None,
    token: str | None,
) -> None:
    """Export every member of SEGMENT to OUT, with a progress bar."""
    params: dict[str, Any] = {"format": fmt, "fields": list(fields)}
    if include_unconsented:
        params["include_unconsented"] = "true"
    client = _Api(settings, api, token)
    with client.stream(source, params) as response:
        if response.status_code >= 400:
            response.read()
            _checked(response)
        total = int(response.headers.get("X-Segment-Count", "0"))
        rows, header = 0, fmt == "csv"
        label = f"{total} members"
        with out.open("wb") as f, click.progressbar(length=total, label=label) as bar:
            for chunk in response.iter_bytes():
                f.write(chunk)
                if fmt != "parquet":
                    lines = chunk.count(b"\n")
                    if header and lines:
                        lines, header = lines - 1, False
                    rows += lines
                    bar.update(lines)
            if fmt == "parquet":
                bar.update(total)
                rows = total
    if fmt != "parquet" and rows != total:
        raise click.ClickException(f"export incomplete: {rows} of {total} rows")
    click.echo(f"wrote {total} members to {out}")


@segments.command("list")
@api_option
@token_option
@click.pass_obj
def segments_list(settings: Any, api: str | None, token: str | None) -> None:
    """List saved segments."""
    found = _Api(settings, api, token).call("GET", "").json()
    for s in found["segments"]:
        kind = "live" if s["live"] else "history"
        click.echo(f"{s['id']:32} v{s['version']:<4} {kind:8} {s['name']}")


@segments.command("get")
@click.argument("segment_id")
@click.option("--version", type=int, default=None)
@api_option
@token_option
@click.pass_obj
def segments_get(
    settings: Any, segment_id: str, version: int | None, api: str | None, token: str | None
) -> None:
    """Print a saved segment (its latest version, or --version)."""
    params = {"version": version} if version else {}
    _echo(_Api(settings, api, token).call("GET", f"/{segment_id}", params=params).json())


@segments.command("save")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.option("--update", is_flag=True, help="Save a new version of an existing segment.")
@api_option
@token_option
@click.pass_obj
def segments_save(
    settings: Any, source: str, update: bool, api: str | None, token: str | None
) -> None:
    """Save a definition file (it must have an id); --update for a new version."""
    seg = _definition(source)
    if seg.id is None:
        raise click.ClickException("id: required to save a segment")
    client = _Api(settings, api, token)
    body = _read(source)
    if update:
        saved = client.call("PUT", f"/{seg.id}", json=body).json()
    else:
        saved = client.call("POST", "", json=body).json()
    click.echo(f"saved {saved['id']} version {saved['version']}")


@segments.command("delete")
@click.argument("segment_id")
@api_option
@token_option
@click.pass_obj
def segments_delete(settings: Any, segment_id: str, api: str | None, token: str | None) -> None:
    """Delete a saved segment and its versions."""
    _Api(settings, api, token).call("DELETE", f"/{segment_id}")
    click.echo(f"deleted {segment_id}")
