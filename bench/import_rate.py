"""Measure ``cdp import`` of a POS sales export into Kafka, and reconcile the counts.

Writes a CSV export of ``--rows`` sales in the shape of ``ingest/mapping_examples/
pos-export.yaml`` (member number, local time, order number, amount in fen, store, category,
the customer's phone with spaces as a cashier types it), then runs ``cdp import`` as its own
process on it ``--repeats`` times (a new file each time: new order numbers, new events), on a
fresh topic prefix. Each run goes through the whole ingest path: the mapping (rows to
messages, renames, fen to yuan, the phone trait to an identifier), validation, publishing
with acknowledgement, progress saved per chunk. Reports rows/s per run (the import's own
time, from its report, and the process's wall time including start-up and the file digest),
the median, CPU per row, and checks that the raw topic holds exactly the rows imported.

    .venv/bin/cdp up
    .venv/bin/python bench/import_rate.py --rows 200000 --repeats 3
    .venv/bin/python bench/import_rate.py --own-services ...   # its own Kafka and Redis
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from namespace import drop_topics  # bench/namespace.py

from deploy import topics
from deploy.settings import Settings
from ingest.sources import Source, hash_key

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Source(
    name="bench-pos",
    channel="pos",
    user_id_type="member_id",
    timezone="Asia/Shanghai",
    key_sha256=hash_key("wk_bench_pos"),
)
#: One API process's accepted rate with the ingest bench's load (docs/benchmarks.md).
HTTP_ONE_PROCESS = 16_956


def write_export(path: Path, rows: int, run: int) -> None:
    """A sales export of ``rows`` rows; order numbers unique to ``run``."""
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["huiyuanhao", "riqi", "danhao", "jine_fen", "mendian", "pinlei", "shouji"])
        for i in range(rows):
            customer = i % 50_000
            out.writerow(
                [
                    f"M-{customer:06d}",
                    f"2026-03-{1 + i % 28:02d} {8 + i % 12:02d}:{i % 60:02d}:05",
                    f"S-{run}-{i}",
                    str(990 + i % 90_000),
                    f"SH-{i % 40:02d}",
                    ("shoes", "bags", "coats")[i % 3],
                    f"138 {customer // 10000:04d} {customer % 10000:04d}",
                ]
            )


def mapping_dir(into: Path) -> Path:
    """The shipped POS mapping, for the bench's source, with the phone column as a trait."""
    text = (ROOT / "ingest" / "mapping_examples" / "pos-export.yaml").read_text()
    text = text.replace("sources: [pos-local]", f"sources: [{SOURCE.name}]")
    text = text.replace("  message_id: [danhao]", "  message_id: [danhao]\n  traits: [shouji]")
    folder = into / "mappings"
    folder.mkdir()
    (folder / "pos-export.yaml").write_text(text)
    return folder


def end_offsets(bootstrap: str, topic: str) -> int:
    """The number of records in ``topic`` now."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(parts).values())
    finally:
        consumer.close()


@contextlib.contextmanager
def services(own: bool, home: Path) -> Iterator[tuple[str, str]]:
    """(Kafka bootstrap, Redis URL): started here, or those of ``cdp up``."""
    if not own:
        base = Settings()
        yield base.kafka.bootstrap_servers, base.redis.url.get_secret_value()
        return
    sys.path.insert(0, str(ROOT))
    from tests.support.services import real_services

    with real_services(home) as found:
        yield found.kafka_bootstrap, found.redis_url


def run_import(env: dict[str, str], path: Path) -> tuple[dict[str, object], float, float]:
    """(report, wall seconds, CPU seconds) of one ``cdp import``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "deploy", "import", str(path), "--source", SOURCE.name],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(out.stdout), wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--own-services", action="store_true")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        services(args.own_services, Path(tmp)) as (
            bootstrap,
            redis_url,
        ),
    ):
        home = Path(tmp)
        prefix = f"bench{uuid.uuid4().hex[:8]}."
        base = Settings()
        kafka = base.kafka.model_copy(
            update={"bootstrap_servers": bootstrap, "topic_prefix": prefix}
        )
        topics.create_all(kafka)
        sources = home / "sources.json"
        sources.write_text(json.dumps([SOURCE.model_dump(mode="json")]))
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CDP_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "CDP_KAFKA__TOPIC_PREFIX": prefix,
            "CDP_REDIS__URL": redis_url,
            "CDP_WORKER__NAMESPACE": prefix.rstrip("."),
            "CDP_INGEST__SOURCES_FILE": str(sources),
            "CDP_INGEST__MAPPINGS": str(mapping_dir(home)),
            "CDP_PRIVACY__ENABLED": "false",
            "CDP_LOG_LEVEL": "warning",
        }
        rates, walls, cpus, imported = [], [], [], 0
        try:
            for run in range(args.repeats):
                path = home / f"sales-{run}.csv"
                write_export(path, args.rows, run)
                report, wall, cpu = run_import(env, path)
                assert report["accepted"] == args.rows, report
                imported += args.rows
                rates.append(args.rows / float(report["seconds"]))  # type: ignore[arg-type]
                walls.append(args.rows / wall)
                cpus.append(cpu / args.rows * 1e6)
                mb = path.stat().st_size / 1e6
                print(
                    f"run {run + 1}: {rates[-1]:,.0f} rows/s (import), {walls[-1]:,.0f} rows/s "
                    f"(process wall), {cpus[-1]:.1f} us CPU/row, {mb:.0f} MB"
                )
                path.unlink()
            in_kafka = end_offsets(bootstrap, kafka.topic("cdp.events.raw"))
        finally:
            drop_topics(bootstrap, prefix)
    print(
        f"median {statistics.median(rates):,.0f} rows/s (import), "
        f"{statistics.median(walls):,.0f} rows/s (wall), "
        f"{statistics.median(cpus):.1f} us CPU/row; HTTP ingest, one API process: "
        f"{HTTP_ONE_PROCESS:,} events/s"
    )
    print(f"reconciliation: {imported:,} rows imported, {in_kafka:,} records in cdp.events.raw")
    if in_kafka != imported:
        sys.exit("counts differ")


if __name__ == "__main__":
    main()
