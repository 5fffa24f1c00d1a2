"""``bluezone-central``: collect gateway events, trace an F0's visits, report per site and day.

Exit codes as ``bluezone-gateway``'s: 0 done; 1 done, but something failed on the way;
2 nothing done (usage, configuration or database error: one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import IO, Any, Final

import orjson
import sqlalchemy as sa
from tabulate import tabulate

from central import report
from central.collector import Collector, Settings
from central.schema import events
from central.store import CentralStore, check_schema, create_engine, migrate
from gateway import trace as tracing
from gateway.console import dispatch, subcommands
from gateway.model import GatewayError, iso_utc

_LOGGER = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UsageError(GatewayError):
    """A command line that cannot be carried out as given."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if args.debug else logging.INFO)
    # Alembic says what it does at INFO on every start; only its warnings matter then.
    logging.getLogger("alembic").setLevel(logging.DEBUG if args.debug else logging.WARNING)
    try:
        return dispatch(args, "bluezone-central")
    finally:
        root.removeHandler(handler)


def _say(command: str, message: str) -> None:
    print(f"bluezone-central {command}: {message}", file=sys.stderr)  # noqa: T201


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bluezone-central",
        description="Central side of Bluezone gateways: events into a database, F0 tracing.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  bluezone-central collect --broker mqtts://mqtt.example:8883 --db postgresql://bz@db/bluezone \\
      --group ingest --username ingest@central --password-file /etc/bluezone-central/mqtt-password
  bluezone-central trace --db postgresql://bz@db/bluezone --daily-key 4C52…1084 --date 2020-08-08
  bluezone-central report --db central.db --date 2020-08-08 --format csv

--db takes a SQLAlchemy URL (postgresql://user@host/db uses psycopg 3) or a path to a SQLite
file. Run 'bluezone-central COMMAND --help' for each command.""",
    )
    subcommand = subcommands(parser)

    def command(name: str, summary: str, examples: str) -> argparse.ArgumentParser:
        p = subcommand(name, summary, examples)
        p.add_argument("--db", required=True, metavar="URL", help="database URL or SQLite path")
        return p

    _collect_parser(command)
    p = command(
        "migrate",
        "Create or upgrade the central schema (collect does it by itself at start).",
        "  bluezone-central migrate --db postgresql://bz@db.example/bluezone",
    )
    p.set_defaults(func=_cmd_migrate)
    p = command(
        "trace",
        "Every visit of an F0's rolling IDs, and the Bluezone IDs inside at the same time (JSON).",
        """\
  bluezone-central trace --db central.db --daily-key 4C5224B3…E21084 --date 2020-08-08 --days 3
  bluezone-central trace --db central.db --daily-key 66B07D33…05FFB5 --base-date 2020-08-01 \\
      --date 2020-08-08 --days 14          the base ID and the day it was created""",
    )
    tracing.add_arguments(p)
    p.set_defaults(func=_cmd_trace)
    p = command(
        "report",
        "Per site and UTC day: distinct Bluezone IDs, entries, peak presence.",
        """\
  bluezone-central report --db central.db --date 2020-08-08
  bluezone-central report --db postgresql://bz@db/bluezone --date 2020-08-08 --format csv""",
    )
    p.add_argument("--date", type=date.fromisoformat, required=True, metavar="YYYY-MM-DD")
    p.add_argument(
        "--format",
        choices=("csv", "table", "json"),
        help="default: table on a terminal, csv when piped",
    )
    p.set_defaults(func=_cmd_report)
    p = command(
        "gateways",
        "Every gateway the collectors heard of: online/offline, seqs, outbox, open gaps.",
        "  bluezone-central gateways --db central.db",
    )
    p.add_argument(
        "--format",
        choices=("csv", "table", "json"),
        help="default: table on a terminal, csv when piped",
    )
    p.set_defaults(func=_cmd_gateways)
    return parser


def _collect_parser(command: Any) -> None:
    p = command(
        "collect",
        "Run a collector until SIGTERM: gateway messages into the database, gaps healed.",
        """\
  bluezone-central collect --broker mqtts://mqtt.example --db postgresql://bz@db/bluezone \\
      --group ingest --client-id ingest-1 --username ingest@central \\
      --password-file /etc/bluezone-central/mqtt-password --ca-file /etc/bluezone-central/ca.crt
  bluezone-central collect --broker mqtt://nats.example:1883 --protocol 3.1.1 \\
      --intake jetstream --nats nats://nats.example:4222 --db … --group ingest""",
    )
    d = Settings(broker="mqtt://defaults")
    p.add_argument(
        "--broker",
        required=True,
        metavar="URL",
        help="mqtt://host[:port] or mqtts://host[:port] (TLS)",
    )
    p.add_argument(
        "--group",
        default=d.group,
        help=f"shared-subscription group (JetStream: durable consumer) ({d.group})",
    )
    p.add_argument(
        "--client-id", help="MQTT client id, one per collector (bluezone-central-<host>-<group>)"
    )
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path, help="a file holding the password (never logged)")
    p.add_argument(
        "--ca-file", type=Path, help="the CA of the broker's certificate (default: the system's)"
    )
    p.add_argument("--cert-file", type=Path, help="a client certificate (with --key-file)")
    p.add_argument("--key-file", type=Path)
    p.add_argument(
        "--protocol", choices=("5", "3.1.1"), default=d.protocol, help="MQTT version (5)"
    )
    p.add_argument(
        "--topic-prefix",
        default=d.topic_prefix,
        help=f"the gateways' [mqtt] topic_prefix ({d.topic_prefix})",
    )
    p.add_argument(
        "--session-expiry-s",
        type=int,
        default=d.session_expiry_s,
        help="how long the broker keeps this collector's queue while it is away "
        f"({d.session_expiry_s})",
    )
    p.add_argument(
        "--intake",
        choices=("mqtt", "jetstream"),
        default=d.intake,
        help="events from a shared subscription, or NATS JetStream (mqtt)",
    )
    p.add_argument(
        "--nats", metavar="URL", help="nats://host:4222 (or tls://) for --intake jetstream"
    )
    p.add_argument(
        "--nats-stream",
        default=d.nats_stream,
        help=f"JetStream stream, created if missing ({d.nats_stream})",
    )
    p.add_argument(
        "--nats-replicas",
        type=int,
        default=d.nats_replicas,
        help="replicas of a created stream (1; 3 on a cluster)",
    )
    p.add_argument(
        "--ack-wait-s",
        type=float,
        default=d.ack_wait_s,
        help="JetStream: redeliver what a collector took but did not acknowledge after this "
        f"({d.ack_wait_s:g})",
    )
    p.add_argument(
        "--gap-check-s",
        type=float,
        default=d.gap_check_s,
        help=f"seconds between gap checks ({d.gap_check_s:g})",
    )
    p.add_argument(
        "--gap-grace-s",
        type=float,
        default=d.gap_grace_s,
        help="a hole in a gateway's seqs must stay open this long before cmd/replay "
        f"({d.gap_grace_s:g})",
    )
    p.add_argument(
        "--gap-retry-s",
        type=float,
        default=d.gap_retry_s,
        help=f"ask again after this long ({d.gap_retry_s:g})",
    )
    p.add_argument(
        "--gap-max-attempts",
        type=int,
        default=d.gap_max_attempts,
        help=f"then give the gap up as lost ({d.gap_max_attempts})",
    )
    p.add_argument(
        "--stats-interval-s",
        type=float,
        default=d.stats_interval_s,
        help=f"log the counters this often ({d.stats_interval_s:g})",
    )
    p.add_argument(
        "--no-migrate", action="store_true", help="do not create or upgrade the schema at start"
    )
    p.set_defaults(func=_cmd_collect)


def _cmd_collect(args: argparse.Namespace) -> int:
    settings = Settings(
        broker=args.broker,
        group=args.group,
        client_id=args.client_id,
        username=args.username,
        password_file=args.password_file,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        protocol=args.protocol,
        topic_prefix=args.topic_prefix,
        session_expiry_s=args.session_expiry_s,
        intake=args.intake,
        nats=args.nats,
        nats_stream=args.nats_stream,
        nats_replicas=args.nats_replicas,
        ack_wait_s=args.ack_wait_s,
        gap_check_s=args.gap_check_s,
        gap_grace_s=args.gap_grace_s,
        gap_retry_s=args.gap_retry_s,
        gap_max_attempts=args.gap_max_attempts,
        stats_interval_s=args.stats_interval_s,
    )
    engine = create_engine(args.db)
    if args.no_migrate:
        check_schema(engine)
    else:
        _LOGGER.info("Database schema at revision %s", migrate(engine))
    collector = Collector(CentralStore(engine), settings)
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        # Only record the request; run() notices within BATCH_WAIT_S and shuts down cleanly.
        _LOGGER.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    collector.run(stop)
    engine.dispose()
    return EXIT_OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    engine = create_engine(args.db)
    try:
        revision = migrate(engine)
    finally:
        engine.dispose()
    print(f"schema at revision {revision}")  # noqa: T201
    return EXIT_OK


@contextlib.contextmanager
def _reading(url: str) -> Iterator[sa.Engine]:
    """A read-only engine on a migrated database, disposed of afterwards."""
    engine = create_engine(url, readonly=True)
    try:
        check_schema(engine)
        yield engine
    finally:
        engine.dispose()


def _cmd_trace(args: argparse.Namespace) -> int:
    try:
        ids = tracing.ids_from_arguments(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    with _reading(args.db) as engine, engine.connect() as conn:
        result = tracing.trace(conn, events, ids)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    with _reading(args.db) as engine, engine.connect() as conn:
        rows = report.daily(conn, events, args.date)
    _write_rows(rows, report.COLUMNS, args.format, sys.stdout)
    return EXIT_OK


GATEWAY_COLUMNS: Final = (
    "gateway", "site", "state", "state_since", "last_event", "health_age_s", "max_seq",
    "contiguous_seq", "outbox_depth", "open_gaps",
)  # fmt: skip


def _cmd_gateways(args: argparse.Namespace) -> int:
    now = time.time()
    rows = []
    with _reading(args.db) as engine:
        gateway_rows = CentralStore(engine).gateway_rows()
    for g in gateway_rows:
        rows.append({
            "gateway": g["gateway"], "site": g["site"], "state": g["state"],
            "state_since": _iso(g["state_at"]), "last_event": _iso(g["last_event_at"]),
            "health_age_s": None if g["last_health_at"] is None
            else round(now - g["last_health_at"], 1),
            "max_seq": g["max_seq"], "contiguous_seq": g["contiguous_seq"],
            "outbox_depth": g["outbox_depth"], "open_gaps": g["open_gaps"],
        })  # fmt: skip
    _write_rows(rows, GATEWAY_COLUMNS, args.format, sys.stdout)
    return EXIT_OK


def _iso(unix_s: float | None) -> str | None:
    return None if unix_s is None else iso_utc(unix_s)


def _write_rows(
    rows: list[dict[str, Any]], columns: Sequence[str], fmt: str | None, out: IO[str]
) -> None:
    fmt = fmt or ("table" if out.isatty() else "csv")
    if fmt == "json":
        for row in rows:
            out.write(orjson.dumps(row).decode() + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        table = [[row[c] for c in columns] for row in rows]
        out.write(tabulate(table, headers=list(columns), missingval="-") + "\n")
