"""``bluezone-gateway``: the command line. Each subcommand is a thin call into the library.

Exit codes scripts can trust: 0 done; 1 done, but some input was bad or the run failed;
2 nothing done (usage, configuration or database error).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson
from tabulate import tabulate
from tqdm import tqdm

from gateway import __version__, capture, config, doctor, provision, rolling, scoring
from gateway.daemon import AdvertSource, Daemon, simulated, wall_time
from gateway.decode import decode_advert
from gateway.model import Advert, EventType, GatewayError, PresenceEvent, iso_utc, parse_iso_utc
from gateway.pipeline import Pipeline
from gateway.presence import PresenceTracker
from gateway.scan import AdapterScanner, GattReader, scan
from gateway.simulate import Radio, Scenario, Simulation
from gateway.store import EVENT_FIELDS, EventStore
from gateway.sync import Publisher
from gateway.systemd import setup_logging

_LOGGER = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_BAD_INPUT: Final = 1
EXIT_USAGE: Final = 2
MAX_PENDING_SHOWN: Final = 10_000_000
TICK_S: Final = 1.0
"""Replay ends silent visits once per second of capture time, as the daemon's ticker does."""


class UsageError(GatewayError):
    """A command line that cannot be carried out as given."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.debug else logging.INFO)
    try:
        return int(args.func(args))
    except GatewayError as e:
        if args.debug:
            raise
        _say(args.command, str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `bluezone-gateway events | head`: the reader left; not an error worth a traceback.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _say(command: str, message: str) -> None:
    """Tell the person at the terminal something, on stderr, naming the command."""
    print(f"bluezone-gateway {command}: {message}", file=sys.stderr)  # noqa: T201


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bluezone-gateway",
        description="Entrance gateway for Bluezone: BLE adverts in, entry and exit events out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  bluezone-gateway run --simulate                 the demo: no radio, no broker needed
  bluezone-gateway simulate --people 200 --minutes 30 --seed 1 --out lobby.jsonl
  bluezone-gateway replay lobby.jsonl --db lobby.db
  bluezone-gateway events --db lobby.db --type entry --format table

run 'bluezone-gateway COMMAND --help' for each command's options and examples.""",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="log debug lines; tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, examples: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=summary,
            description=summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=f"examples:\n{examples}",
        )
        p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
        return p

    p = command(
        "run",
        "Run the gateway daemon until Ctrl-C or SIGTERM.",
        """\
  bluezone-gateway run --simulate                 simulated lobby, data in the default dir
  bluezone-gateway run --config /etc/bluezone/gateway.toml     scan the adapters in [scanner]
  bluezone-gateway run --config gw.toml --capture heard.jsonl  also record every advert""",
    )
    p.add_argument("--config", type=Path, help="TOML configuration file (default: defaults)")
    p.add_argument(
        "--simulate",
        action="store_true",
        help="take adverts from the simulator in real time instead of the radio",
    )
    p.add_argument("--seed", type=int, help="simulator seed (default: random)")
    p.add_argument(
        "--capture",
        type=Path,
        help="also record every advert heard to this capture file (for replay)",
    )
    p.set_defaults(func=_cmd_run)

    p = command(
        "capture",
        "Record live adverts to a capture file (field debugging; replay it later).",
        """  bluezone-gateway capture --seconds 60 --out lobby.jsonl
  bluezone-gateway capture --adapter hci1 --out - | bluezone-gateway decode""",
    )
    p.add_argument("--adapter", help="adapter name or MAC (default: [scanner] adapter(s))")
    p.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    p.add_argument("--out", required=True, help="capture file to write; - for stdout")
    p.add_argument("--config", type=Path, help="TOML configuration ([scanner], [gateway] id)")
    p.set_defaults(func=_cmd_capture)

    p = command(
        "sync",
        "Publish the outbox to the [mqtt] broker (operators, tests; `run` syncs by itself).",
        """\
  bluezone-gateway sync --config /etc/bluezone/gateway.toml --until-empty
  bluezone-gateway sync --config gw.toml --db copy.db --until-empty --timeout-s 300""",
    )
    p.add_argument("--config", type=Path, required=True, help="TOML configuration with [mqtt]")
    p.add_argument("--db", type=Path, help="SQLite file (default: the configured one)")
    p.add_argument(
        "--until-empty",
        action="store_true",
        required=True,
        help="exit 0 once every event is PUBACKed (retrying through outages)",
    )
    p.add_argument("--timeout-s", type=float, help="give up after this long, exit 1")
    p.set_defaults(func=_cmd_sync)

    p = command(
        "status",
        "Show the outbox, the seq range and what the daemon last knew of the broker.",
        """\
  bluezone-gateway status --config /etc/bluezone/gateway.toml
  bluezone-gateway status --db events.db --json""",
    )
    p.add_argument("--config", type=Path, help="TOML configuration (for the SQLite file)")
    p.add_argument("--db", type=Path, help="SQLite file (default: the configured one)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_cmd_status)

    p = command(
        "doctor",
        "Check this gateway: config, data dir, adapter, BlueZ, broker, clock, systemd.",
        """\
  bluezone-gateway doctor --config /etc/bluezone/gateway.toml
  bluezone-gateway doctor --config gw.toml --json | jq '.[] | select(.level != "OK")'""",
    )
    p.add_argument("--config", type=Path, help="TOML configuration (default: defaults)")
    p.add_argument("--json", action="store_true", help="a JSON array of the checks")
    p.set_defaults(func=_cmd_doctor)

    p = command(
        "provision",
        "Mint credentials and a config for gateways: passwords or client certificates.",
        """\
  bluezone-gateway provision --site hanoi-hq --gateway gw-001 --broker mqtts://mqtt.example.vn \\
      --ca site-ca.crt --out fleet/
  bluezone-gateway provision --site hanoi-hq --gateway gw-001 --gateway gw-002 --gateway gw-003 \\
      --broker mqtts://mqtt.example.vn:8883 --out fleet/
then: append fleet/mosquitto-passwd to the broker's password_file and reload mosquitto;
deploy/ansible copies fleet/<id>/ to /etc/bluezone/ on each gateway (deploy/README.md).

with client certificates instead of passwords (port 8884 unless the URL gives one):
  bluezone-gateway provision --site hanoi-hq --gateway gw-004 --broker mqtts://mqtt.example.vn \\
      --ca site-ca.crt --client-ca client-ca.crt --client-ca-key client-ca.key \\
      --client-ca-key-password-file client-ca.pass --days 825 --out fleet/
then: the broker's certificate listener trusts client-ca.crt (deploy/broker/mosquitto.conf).""",
    )
    p.add_argument("--site", required=True, help="the site (office or entrance) id")
    p.add_argument(
        "--gateway", required=True, action="append", help="a gateway id (repeat for several)"
    )
    p.add_argument("--broker", required=True, help="mqtts://host[:port] (or mqtt://)")
    p.add_argument("--ca", type=Path, help="the CA certificate that signed the broker's")
    p.add_argument("--out", type=Path, required=True, help="directory to write into")
    certs = p.add_argument_group(
        "client certificates",
        "instead of a password, each gateway gets a key and a certificate (CN = its id)\n"
        "signed by the site's client CA; needs the [provision] extra (cryptography)",
    )
    certs.add_argument(
        "--client-ca", type=Path, metavar="CERT", help="the site CA certificate (PEM)"
    )
    certs.add_argument("--client-ca-key", type=Path, metavar="KEY", help="its private key (PEM)")
    certs.add_argument(
        "--client-ca-key-password-file",
        type=Path,
        metavar="FILE",
        help="a file whose first line is the key's passphrase (for an encrypted key)",
    )
    certs.add_argument(
        "--days",
        type=int,
        metavar="N",
        help=f"validity of the certificates (default {provision.DEFAULT_CERT_DAYS})",
    )
    p.set_defaults(func=_cmd_provision)

    p = command(
        "decode",
        "Decode capture lines from stdin: one JSON line out per line in.",
        """\
  bluezone-gateway decode < lobby.jsonl | grep bluezone
  echo '{"t":0,"address":"A","rssi":-60,"service_uuids":["00004e56-0000-1000-8000-00805f9b34fb"],\
"manufacturer_data":{"8885":"b9a665d754fe65e665d76a45"}}' | bluezone-gateway decode""",
    )
    p.set_defaults(func=_cmd_decode)

    p = command(
        "replay",
        "Run a capture through decode → presence → store in capture time.",
        """\
  bluezone-gateway replay lobby.jsonl --db lobby.db
  bluezone-gateway replay lobby.jsonl --db lobby.db --truth lobby-truth.jsonl --json""",
    )
    p.add_argument("capture", type=Path, help="capture file (JSON Lines); - for stdin")
    p.add_argument("--db", type=Path, required=True, help="SQLite file to store events in")
    p.add_argument("--config", type=Path, help="TOML configuration ([gateway], [presence])")
    p.add_argument(
        "--truth", type=Path, help="ground truth of `simulate`: also print precision and recall"
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=_cmd_replay)

    p = command(
        "events",
        "List stored events.",
        """\
  bluezone-gateway events --db lobby.db                       a table on a terminal, else JSONL
  bluezone-gateway events --db lobby.db --since 2020-08-08T07:00:00Z --type exit --format csv""",
    )
    p.add_argument("--db", type=Path, required=True, help="SQLite file of the gateway")
    p.add_argument("--since", help="only events at or after this ISO 8601 time (UTC if naive)")
    p.add_argument("--type", choices=[t.value for t in EventType], help="only this type")
    p.add_argument(
        "--format",
        choices=["jsonl", "csv", "table"],
        help="output format (default: table on a terminal, jsonl otherwise)",
    )
    p.add_argument("--limit", type=int, help="at most this many events")
    p.set_defaults(func=_cmd_events)

    p = command(
        "ids",
        "Print the 96 rolling IDs of a day from a Bluezone daily key.",
        """\
  bluezone-gateway ids --daily-key 4C5224B3...E21084 --date 2020-08-08
  bluezone-gateway ids --daily-key 4C5224B3...E21084 --base-date 2020-08-08 --date 2020-08-10""",
    )
    p.add_argument("--daily-key", required=True, help="32-byte daily key (or base ID), hex")
    p.add_argument(
        "--date",
        type=date.fromisoformat,
        help="UTC day to print (default: --base-date, else today)",
    )
    p.add_argument(
        "--base-date",
        type=date.fromisoformat,
        help="the day the key belongs to, when it is not --date (keys chain forward)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_ids)

    p = command(
        "simulate",
        "Write a simulated entrance capture and its ground truth.",
        """\
  bluezone-gateway simulate --people 300 --minutes 60 --seed 7 --out lobby.jsonl \\
      --truth lobby-truth.jsonl
  bluezone-gateway simulate --people 50 --minutes 10 --seed 1 --out - | bluezone-gateway decode""",
    )
    p.add_argument("--people", type=int, required=True, help="people arriving during the run")
    p.add_argument("--minutes", type=float, required=True, help="length of the run")
    p.add_argument("--seed", type=int, required=True, help="random seed (same seed, same run)")
    p.add_argument("--out", required=True, help="capture file to write; - for stdout")
    p.add_argument("--truth", type=Path, help="where to write the ground truth (JSON Lines)")
    defaults = Scenario()
    p.add_argument(
        "--start",
        default=iso_utc(defaults.start),
        help="ISO 8601 start time (default: %(default)s)",
    )
    radio = defaults.radio
    p.add_argument(
        "--zone-m",
        type=float,
        default=defaults.zone_m,
        help="radius of the zone in the truth (default: %(default)s)",
    )
    p.add_argument(
        "--rssi-1m",
        type=float,
        default=radio.rssi_1m,
        help="mean RSSI 1 m away, dBm (default: %(default)s)",
    )
    p.add_argument(
        "--path-loss-exponent",
        type=float,
        default=radio.path_loss_exponent,
        help="log-distance exponent (default: %(default)s)",
    )
    p.add_argument(
        "--noise-db",
        type=float,
        default=radio.noise_db,
        help="per-advert RSSI jitter σ, dB (default: %(default)s)",
    )
    p.add_argument(
        "--loss",
        type=float,
        default=radio.loss,
        help="probability an advert is lost (default: %(default)s)",
    )
    p.set_defaults(func=_cmd_simulate)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    setup_logging(logging.DEBUG if args.debug else logging.INFO, cfg.gateway.id)
    scanners: list[AdapterScanner] = []
    gatt = None
    if args.simulate:
        source = simulated(args.seed)
    else:
        source = scan(cfg.scanner, alias=cfg.gateway.id, scanners=scanners)
        if cfg.scanner.gatt:
            gatt = GattReader(cfg.scanner, scanners, wall_time)
    with contextlib.ExitStack() as stack:
        tee = stack.enter_context(_open_output(str(args.capture))) if args.capture else None
        daemon = Daemon(
            cfg, source, capture_to=tee, gatt=gatt, scanners=None if args.simulate else scanners
        )
        return asyncio.run(daemon.run())


def _cmd_capture(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    settings = cfg.scanner
    if args.adapter:
        settings = dataclasses.replace(settings, adapter=args.adapter, adapters=(), roles=())
    with (
        _open_output(args.out) as out,
        tqdm(
            unit=" adverts", disable=None, file=sys.stderr, desc="capture", leave=False
        ) as progress,
    ):

        def record(advert: Advert) -> None:
            out.write(capture.dumps(advert._replace(t=wall_time(advert.t))))
            progress.update()

        heard = asyncio.run(
            _capture(scan(settings, alias=cfg.gateway.id, scanners=[]), record, args.seconds)
        )
    _say("capture", f"{heard:,} adverts recorded")
    return EXIT_OK


async def _capture(
    source: AdvertSource, record: Callable[[Advert], None], seconds: float | None
) -> int:
    count = 0

    def emit(advert: Advert) -> None:
        nonlocal count
        count += 1
        record(advert)

    task = asyncio.create_task(source(emit))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            {task, waiter}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if task in done:
            task.result()  # the scanner gave up: raise its error
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return count


def _cmd_sync(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    if not cfg.mqtt.enabled:
        msg = f"{args.config} has no [mqtt] host: nothing to sync to"
        raise UsageError(msg)
    db = args.db or cfg.db_path
    if not db.exists():
        msg = f"{db} does not exist"
        raise UsageError(msg)
    with EventStore.open(db, gateway=cfg.gateway.id, site=cfg.gateway.site) as store:
        before = len(store.pending(limit=MAX_PENDING_SHOWN))
        publisher = Publisher(
            cfg.mqtt, store, gateway=cfg.gateway.id, site=cfg.gateway.site, boot_time=time.time()
        )
        drained = asyncio.run(publisher.drain(args.timeout_s))
        left = len(store.pending(limit=MAX_PENDING_SHOWN))
    _say(
        "sync",
        f"{publisher.acked:,} events acknowledged by {cfg.mqtt.host}"
        f" ({before:,} were waiting), {left:,} left in the outbox"
        + ("" if drained else f"; gave up after {args.timeout_s} s"),
    )
    return EXIT_OK if drained else EXIT_BAD_INPUT


def _cmd_status(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    db = args.db or cfg.db_path
    if not db.exists():
        msg = f"{db} does not exist (no events stored yet?)"
        raise UsageError(msg)
    with EventStore.open(db, gateway="", site="", readonly=True) as store:
        stats = store.stats()
        state = {
            key: store.state(key)
            for key in ("broker", "broker_since", "last_puback_ts", "dropped_unsynced")
        }
    oldest = stats["oldest_unsynced_ts"]
    report = {
        "db": str(db),
        "events": stats["events"],
        "seq": [stats["first_seq"], stats["last_seq"]],
        "outbox": stats["outbox"],
        "oldest_unsynced_ts": oldest,
        "oldest_unsynced_age_s": None
        if oldest is None
        else round(time.time() - parse_iso_utc(oldest), 1),
        "last_puback_ts": state["last_puback_ts"],
        "broker": state["broker"] or ("not configured" if not cfg.mqtt.enabled else "unknown"),
        "broker_since": state["broker_since"],
        "dropped_unsynced": int(state["dropped_unsynced"] or 0),
    }
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        rows = [
            [key.replace("_", " "), "-" if value is None else value]
            for key, value in report.items()
        ]
        sys.stdout.write(tabulate(rows, tablefmt="plain") + "\n")
    return EXIT_OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    checks = asyncio.run(doctor.examine(args.config))
    if args.json:
        sys.stdout.write(orjson.dumps([c.as_dict() for c in checks]).decode() + "\n")
    else:
        rows = [[c.name, c.level.value, c.detail, c.hint] for c in checks]
        sys.stdout.write(
            tabulate(
                rows, headers=["check", "", "found", "hint"], maxcolwidths=[None, None, 50, 40]
            )
            + "\n"
        )
    return doctor.exit_code(checks)


def _cmd_provision(args: argparse.Namespace) -> int:
    try:
        client_ca = _client_ca(args)
        broker = provision.Broker.parse(args.broker, client_cert=client_ca is not None)
        if args.ca is not None and not args.ca.is_file():
            msg = f"--ca {args.ca} is not a file"
            raise UsageError(msg)
        lines = []
        for gateway in tqdm(
            args.gateway,
            unit=" gateways",
            disable=None,
            file=sys.stderr,
            desc="provision",
            leave=False,
        ):
            if client_ca is None:
                lines.append(provision.provision(args.site, gateway, broker, args.out, args.ca))
            else:
                provision.provision_certificate(
                    args.site, gateway, broker, args.out, client_ca, args.ca
                )
    except provision.ProvisionError as e:
        raise UsageError(str(e)) from None
    if client_ca is not None:
        _say(
            "provision",
            f"{len(args.gateway)} gateway(s) in {args.out} with client certificates from"
            f" {client_ca.subject}, valid {client_ca.days} days; the broker's certificate"
            f" listener must trust {args.client_ca} (its cafile)",
        )
        return EXIT_OK
    with (args.out / "mosquitto-passwd").open("a") as passwd:
        passwd.write("".join(line + "\n" for line in lines))
    _say(
        "provision",
        f"{len(lines)} gateway(s) in {args.out}; append {args.out}/mosquitto-passwd"
        " to the broker's password_file and reload it (SIGHUP)",
    )
    return EXIT_OK


def _client_ca(args: argparse.Namespace) -> provision.ClientCA | None:
    """The site CA of ``--client-ca``/``--client-ca-key``; None without them (passwords)."""
    if args.client_ca is None and args.client_ca_key is None:
        for option, value in (
            ("--client-ca-key-password-file", args.client_ca_key_password_file),
            ("--days", args.days),
        ):
            if value is not None:
                msg = f"{option} goes with --client-ca and --client-ca-key"
                raise UsageError(msg)
        return None
    if args.client_ca is None or args.client_ca_key is None:
        msg = "--client-ca and --client-ca-key go together (the CA certificate and its key)"
        raise UsageError(msg)
    days = provision.DEFAULT_CERT_DAYS if args.days is None else args.days
    return provision.ClientCA.load(
        args.client_ca, args.client_ca_key, args.client_ca_key_password_file, days=days
    )


def _cmd_decode(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    bad = 0
    for lineno, line in enumerate(sys.stdin.buffer, 1):
        if not line.strip():
            out.write(b'{"app":null,"reason":"blank line"}\n')
            continue
        try:
            advert = capture.parse_line(line, lineno)
        except capture.CaptureError as e:
            bad += 1
            _say("decode", f"{e}")
            record = {"app": None, "reason": f"invalid capture line: {e.reason}"}
        else:
            record = decode_advert(advert).as_dict()
        out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
    out.flush()
    return EXIT_BAD_INPUT if bad else EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    truth = _read_truth(args.truth) if args.truth else None
    started = time.perf_counter()
    cpu_started = time.process_time()
    store = EventStore.open(
        args.db,
        gateway=cfg.gateway.id,
        site=cfg.gateway.site,
        synchronous=cfg.store.synchronous,
        commit_interval_s=cfg.store.commit_interval_s,
        retention_days=cfg.store.retention_days,
    )
    decided: list[PresenceEvent] = []
    with store, _open_input(args.capture) as (lines, size):
        first_seq = store.last_seq + 1
        # Capture time is Unix time and taken as it is: replay trusts the capture's clock.
        pipeline = Pipeline(
            PresenceTracker(cfg.presence),
            store,
            wall=float,
            clock_synced=lambda: True,
            on_events=(lambda events, _stored: decided.extend(events)) if truth else None,
        )
        bad, t_first, t_last = _replay_lines(pipeline, lines, size)
        pipeline.close()
        last_seq = store.last_seq
    wall_s = time.perf_counter() - started
    counters = pipeline.counters
    summary: dict[str, Any] = {
        "capture": str(args.capture),
        "db": str(args.db),
        "invalid_lines": bad,
        **counters.as_dict(),
        "seq": [first_seq, last_seq] if last_seq >= first_seq else None,
        "capture_span_s": round(t_last - t_first, 3) if counters.adverts else 0.0,
        "wall_s": round(wall_s, 3),
        "cpu_s": round(time.process_time() - cpu_started, 3),
        "adverts_per_s": round(counters.adverts / wall_s) if wall_s > 0 else None,
    }
    if truth is not None:
        detected = scoring.visits_from_events(decided)
        summary["score"] = scoring.score(detected, truth).as_dict()
    _print_summary(summary, as_json=args.json)
    return EXIT_BAD_INPUT if bad else EXIT_OK


def _replay_lines(
    pipeline: Pipeline, lines: Iterator[bytes], size: int | None
) -> tuple[int, float, float]:
    """Feed capture lines; return (invalid lines, first t, last t)."""
    bad = 0
    next_tick = -math.inf
    t_first = t_last = 0.0
    feed = pipeline.feed
    parse = capture.parse_line
    with tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        disable=None,
        file=sys.stderr,
        desc="replay",
        leave=False,
    ) as progress:
        for lineno, line in enumerate(lines, 1):
            if lineno % 65536 == 0:
                progress.update(65536 * len(line))
            if not line.strip():
                continue
            try:
                advert = parse(line, lineno)
            except capture.CaptureError as e:
                bad += 1
                if bad <= 20:
                    _say("replay", f"{e}")
                continue
            t = advert.t
            if t >= next_tick:
                if next_tick == -math.inf:
                    t_first = t
                pipeline.tick(t)
                next_tick = t + TICK_S
            t_last = t
            feed(advert)
    if bad > 20:
        _say("replay", f"{bad} invalid lines in all")
    return bad, t_first, t_last


@contextlib.contextmanager
def _open_input(path: Path) -> Iterator[tuple[Iterator[bytes], int | None]]:
    if str(path) == "-":
        yield iter(sys.stdin.buffer), None
        return
    try:
        handle = path.open("rb")
    except OSError as e:
        msg = f"cannot read {path}: {e.strerror}"
        raise UsageError(msg) from None
    with handle:
        yield iter(handle), path.stat().st_size


def _read_truth(path: Path) -> list[scoring.Visit]:
    try:
        with path.open("rb") as handle:
            return [
                scoring.visit_from_truth(orjson.loads(line))
                for line in handle
                if line.strip() and orjson.loads(line).get("type", "visit") == "visit"
            ]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        msg = f"cannot read the truth file {path}: {e}"
        raise UsageError(msg) from None


def _print_summary(summary: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        # The counters are keyed by App and EventType members: orjson takes str subclasses as
        # keys only with OPT_NON_STR_KEYS (and then writes their values).
        option = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
        sys.stdout.buffer.write(orjson.dumps(summary, option=option))
        return
    events = summary["events"]
    lines = [
        f"replayed {summary['adverts']:,} adverts ({summary['capture_span_s']:,.0f} s of "
        f"capture) in {summary['wall_s']:.2f} s: {summary['adverts_per_s'] or 0:,} adverts/s",
        f"sightings: {_counts(summary['sightings'])}",
        f"not tracing phones: {summary['rejected']:,} ({summary['malformed']:,} malformed)",
        f"events: {events.get('entry', 0):,} entries, {events.get('exit', 0):,} exits, "
        f"{summary['checkins']:,} check-ins; seq {summary['seq']} in {summary['db']}",
    ]
    if summary["invalid_lines"]:
        lines.append(f"invalid capture lines skipped: {summary['invalid_lines']:,}")
    if "score" in summary:
        s = summary["score"]
        lines.append(
            f"against the truth: precision {s['precision']:.3f}, recall {s['recall']:.3f} "
            f"({s['matched']} of {s['detected']} detected matched, {s['observable']} observable "
            f"of {s['true']} true visits, {s['splits']} split, {s['merges']} merged)"
        )
    print("\n".join(lines))  # noqa: T201


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "none"


def _cmd_events(args: argparse.Namespace) -> int:
    since = None
    if args.since:
        try:
            since = parse_iso_utc(args.since)
        except ValueError:
            msg = f"--since {args.since!r} is not an ISO 8601 time"
            raise UsageError(msg) from None
    fmt = args.format or ("table" if sys.stdout.isatty() else "jsonl")
    if not args.db.exists():
        msg = f"{args.db} does not exist"
        raise UsageError(msg)
    store = EventStore.open(args.db, gateway="", site="", readonly=True)
    with store:
        events = store.events(
            since=since, type=args.type and EventType(args.type), limit=args.limit
        )
        _write_events(events, fmt, sys.stdout)
    return EXIT_OK


def _write_events(events: Iterator[dict[str, Any]], fmt: str, out: IO[str]) -> None:
    if fmt == "jsonl":
        for event in events:
            out.write(orjson.dumps(event).decode() + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EVENT_FIELDS)
        writer.writeheader()
        writer.writerows(events)
    else:
        columns = (
            "seq",
            "ts",
            "type",
            "app",
            "platform",
            "rolling_id",
            "rssi_max",
            "sightings",
            "dwell_s",
            "checked_in",
        )
        rows = [[e[c] for c in columns] for e in events]
        out.write(tabulate(rows, headers=columns, missingval="-") + "\n")


def _cmd_ids(args: argparse.Namespace) -> int:
    try:
        key = bytes.fromhex(args.daily_key)
    except ValueError:
        msg = "--daily-key must be hex"
        raise UsageError(msg) from None
    day = args.date or args.base_date or datetime.now(UTC).date()
    try:
        ids = rolling.day_ids(rolling.daily_key(key, args.base_date or day, day))
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = sys.stdout
    for slot, rid in enumerate(ids):
        start = rolling.slot_start(day, slot).strftime("%Y-%m-%dT%H:%M:%SZ")
        if args.json:
            out.write(
                orjson.dumps({"slot": slot, "start_utc": start, "id": rid.hex()}).decode() + "\n"
            )
        else:
            out.write(f"{slot} {start} {rid.hex()}\n")
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    try:
        start = parse_iso_utc(args.start)
        radio = Radio(
            rssi_1m=args.rssi_1m,
            path_loss_exponent=args.path_loss_exponent,
            noise_db=args.noise_db,
            loss=args.loss,
        )
        scenario = Scenario(
            people=args.people,
            minutes=args.minutes,
            seed=args.seed,
            start=start,
            zone_m=args.zone_m,
            radio=radio,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    sim = Simulation(scenario)
    written = 0
    with (
        # The truth file is opened first, so that a bad --truth fails before any work is done.
        _open_truth(args.truth) as truth_out,
        _open_output(args.out) as out,
        tqdm(
            total=round(args.minutes * 60),
            unit="s",
            disable=None,
            file=sys.stderr,
            desc="simulate",
            leave=False,
        ) as progress,
    ):
        shown = 0
        for advert in sim.adverts():
            out.write(capture.dumps(advert))
            written += 1
            if written % 4096 == 0:
                elapsed = int(advert.t - start)
                progress.update(elapsed - shown)
                shown = elapsed
        truth = sim.truth()
        if truth_out is not None:
            for visit in truth:
                truth_out.write(orjson.dumps(visit.as_dict(), option=orjson.OPT_APPEND_NEWLINE))
    observable = sum(v.observable for v in truth)
    _say("simulate", f"{written:,} adverts, {len(truth)} true visits ({observable} observable)")
    return EXIT_OK


@contextlib.contextmanager
def _open_truth(path: Path | None) -> Iterator[IO[bytes] | None]:
    if path is None:
        yield None
        return
    try:
        handle = path.open("wb")
    except OSError as e:
        msg = f"cannot write {path}: {e.strerror}"
        raise UsageError(msg) from None
    with handle:
        yield handle


@contextlib.contextmanager
def _open_output(name: str) -> Iterator[IO[bytes]]:
    if name == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        handle = Path(name).open("wb")  # noqa: SIM115 - closed below, after the error check
    except OSError as e:
        msg = f"cannot write {name}: {e.strerror}"
        raise UsageError(msg) from None
    with handle:
        yield handle
