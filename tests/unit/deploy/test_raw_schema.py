"""Raw topics decode a message into the event faust's own schema makes of it."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from faust.types import TP, Message

from deploy.fastfaust import App, RawSchema


def message(key: Any, value: Any) -> Message:
    return Message(
        topic="t",
        partition=2,
        offset=41,
        timestamp=1.0,
        timestamp_type=0,
        headers=[("h", b"1")],
        key=key,
        value=value,
        checksum=None,
        tp=TP("t", 2),
    )


@pytest.fixture
def apps() -> tuple[faust.App, faust.App]:
    conf = {"broker": "kafka://127.0.0.1:1", "autodiscover": False}
    return App("raw-fast", **conf), faust.App("raw-faust", **conf)


def decoded(app: faust.App, msg: Message) -> Any:
    topic = app.topic("t", key_serializer="raw", value_serializer="raw")
    return asyncio.run(topic.decode(msg, propagate=True))


@pytest.mark.parametrize(
    ("key", "value"),
    [(b"k", b'{"a": 1}'), (None, b"\x00\xff not json"), (b"", b""), ("text key", b"v")],
)
def test_a_raw_topic_gives_the_event_fausts_schema_gives(
    apps: tuple[faust.App, faust.App], key: Any, value: Any
) -> None:
    fast, plain = apps
    assert isinstance(
        fast.topic("t", key_serializer="raw", value_serializer="raw").schema, RawSchema
    )
    assert not isinstance(
        plain.topic("t", key_serializer="raw", value_serializer="raw").schema, RawSchema
    )
    ours, theirs = decoded(fast, message(key, value)), decoded(plain, message(key, value))
    assert (ours.key, ours.value, ours.headers) == (theirs.key, theirs.value, theirs.headers)
    assert ours.message.offset == theirs.message.offset == 41


def test_a_message_without_a_value_takes_fausts_path(apps: tuple[faust.App, faust.App]) -> None:
    fast, plain = apps
    ours, theirs = decoded(fast, message(b"k", None)), decoded(plain, message(b"k", None))
    assert ours.value is None and theirs.value is None
    assert ours.key == theirs.key == b"k"


def test_a_typed_topic_keeps_fausts_schema(apps: tuple[faust.App, faust.App]) -> None:
    fast, _ = apps
    assert not isinstance(fast.topic("t", value_type=bytes).schema, RawSchema)
    assert not isinstance(fast.topic("t", value_serializer="json").schema, RawSchema)
