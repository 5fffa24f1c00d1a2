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
import stat
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson
from tabulate import tabulate
from tqdm import tqdm

from gateway import calibrate, capture, config, doctor, provision, rolling, scoring
from gateway.console import dispatch, subcommands
from gateway.daemon import AdvertSource, Daemon, simulated, wall_time
from gateway.decode import decode_advert
from gateway.model import Advert, EventType, GatewayError, PresenceEvent, iso_utc, parse_iso_utc
from gateway.pipeline import TICK_S, Pipeline
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
PROGRESS_S: Final = 0.25
RUNNER_UP_WARN: Final = 0.75
"""Calibration: another phone heard this often, relative to the reference, deserves a word."""
LIVE_SECONDS: Final = 60.0
"""A live calibration sample: slow fading (bodies, doors) takes time to average out. On the
simulator, four 60 s samples from 0.5 to 4 m fit the exponent to ±0.1 (one standard
deviation), four 30 s ones to ±0.17."""


class UsageError(GatewayError):
    """A command line that cannot be carried out as given."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.debug else logging.INFO)
    return dispatch(args, "bluezone-gateway")


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
    command = subcommands(parser)

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
        "trace",
        "An F0's visits in this gateway's store, and the Bluezone IDs inside with them (JSON).",
        """\
  bluezone-gateway trace --db events.db --daily-key 4C5224B3...E21084 --date 2020-08-08
  bluezone-gateway trace --db events.db --daily-key 66B07D33...05FFB5 --base-date 2020-08-01 \\
      --date 2020-08-08 --days 14          the base ID and the day it was created""",
    )
    # The options of gateway.trace.add_arguments, spelled out: importing that module (and
    # SQLAlchemy) would slow every command down. tests/test_trace.py checks they match.
    p.add_argument("--db", type=Path, required=True, help="the gateway's SQLite file (read-only)")
    p.add_argument(
        "--daily-key", required=True, metavar="HEX",
        help="the F0's 32-byte daily key of --date, hex (or its base ID, with --base-date)",
    )  # fmt: skip
    p.add_argument(
        "--date", type=date.fromisoformat, required=True, metavar="YYYY-MM-DD",
        help="first UTC day to trace",
    )  # fmt: skip
    p.add_argument("--days", type=int, default=1, metavar="N", help="days from --date (1..60; 1)")
    p.add_argument(
        "--base-date", type=date.fromisoformat, metavar="YYYY-MM-DD",
        help="the day the key belongs to, when it is not --date: with the base ID, the day the "
        "app created it (keys chain forward)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_trace)

    p = command(
        "simulate",
        "Write a simulated entrance capture and its ground truth.",
        """\
  bluezone-gateway simulate --people 300 --minutes 60 --seed 7 --out lobby.jsonl \\
      --truth lobby-truth.jsonl
  bluezone-gateway simulate --people 50 --minutes 10 --seed 1 --out - | bluezone-gateway decode
your entrance, as `calibrate` measured it (then replay with the config it proposed):
  bluezone-gateway simulate --people 300 --minutes 60 --seed 7 --calibration cal.json \\
      --out mine.jsonl --truth mine-truth.jsonl
a reference phone held 2 m away, to try `calibrate` without a radio:
  bluezone-gateway simulate --people 5 --minutes 1 --seed 1 --reference-m 2 \\
      --start 2020-08-08T07:05:00Z --out ref-2m.jsonl""",
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
        help="radius of the zone in the truth (default: the calibration's, else"
        f" {defaults.zone_m:g})",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE",
        help="the JSON object `calibrate` printed: your entrance's rssi_1m, path_loss_exponent,"
        " sigma_db and zone_m (options given here override it)",
    )
    p.add_argument(
        "--rssi-1m", type=float, help=f"mean RSSI 1 m away, dBm (default: {radio.rssi_1m:g})"
    )
    p.add_argument(
        "--path-loss-exponent",
        type=float,
        help=f"log-distance exponent (default: {radio.path_loss_exponent:g})",
    )
    spread = p.add_mutually_exclusive_group()
    spread.add_argument(
        "--noise-db",
        type=float,
        help=f"per-advert RSSI jitter σ, dB (default: {radio.noise_db:g})",
    )
    spread.add_argument(
        "--sigma-db",
        type=float,
        help="a still phone's whole spread as `calibrate` measures it, dB: the noise becomes"
        f" √(σ² − {radio.fading_db:g}²) beside the {radio.fading_db:g} dB of slow fading",
    )
    p.add_argument(
        "--loss",
        type=float,
        default=radio.loss,
        help="probability an advert is lost (default: %(default)s)",
    )
    p.add_argument(
        "--reference-m",
        type=float,
        metavar="D",
        help="also a Bluezone Android phone, app open, held D m away all along: a recording"
        " for `calibrate` (not in the truth)",
    )
    p.set_defaults(func=_cmd_simulate)

    p = command(
        "calibrate",
        "Measure the entrance with a reference phone; propose [presence] thresholds.",
        """\
  bluezone-gateway calibrate --sample 0.5:live --sample 1:live --sample 2:live --sample 4:live \\
      --zone-m 3 > cal.json
  bluezone-gateway calibrate --sample 1:at-1m.jsonl --sample 3:at-3m.jsonl --sample 5:live \\
      --zone-m 2.5 --write /etc/bluezone/gateway.toml > cal.json
then: sudo systemctl reload bluezone-gateway   (re-reads [presence])
and see what the thresholds do in a simulation of your entrance:
  bluezone-gateway simulate --people 300 --minutes 60 --seed 1 --calibration cal.json \\
      --out mine.jsonl --truth mine-truth.jsonl
  bluezone-gateway replay mine.jsonl --db mine.db --truth mine-truth.jsonl \\
      --config /etc/bluezone/gateway.toml""",
    )
    p.add_argument(
        "--sample",
        action="append",
        required=True,
        metavar="D:SOURCE",
        help="the reference phone D metres from the gateway: 'live' records it now, anything"
        " else is a capture file (`capture --out`); repeat for each distance (2 or more)",
    )
    p.add_argument(
        "--address",
        help="the reference phone's address, or its rolling ID (24 hex digits); default: the"
        " Bluezone Android phone heard most",
    )
    p.add_argument(
        "--zone-m",
        type=float,
        default=Scenario().zone_m,
        metavar="R",
        help="radius of the zone to propose thresholds for, in metres (default: %(default)s)",
    )
    p.add_argument(
        "--write",
        type=Path,
        metavar="CONFIG",
        help="set [presence] in this TOML file, keeping its comments (created when missing);"
        " its [scanner] adapter is the one recorded with",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=LIVE_SECONDS,
        help="how long each live sample records (default: %(default)s)",
    )
    p.add_argument("--adapter", help="adapter for live samples (default: [scanner] or hci0)")
    p.add_argument(
        "--yes", action="store_true", help="do not wait for Enter before each live sample"
    )
    p.set_defaults(func=_cmd_calibrate)
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
            PresenceTracker(cfg.presence, link=cfg.link),
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
        policy = cfg.presence
        summary["presence"] = {
            "enter_rssi": policy.enter_rssi,
            "exit_rssi": policy.exit_rssi,
            "rssi_sigma_db": policy.rssi_sigma_db,
        }
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
        p = summary.get("presence", {})
        thresholds = ", ".join(f"{k} {v:g}" for k, v in p.items())
        lines.append(
            f"against the truth ({thresholds}): precision {s['precision']:.3f},"
            f" recall {s['recall']:.3f} "
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
        listed = list(events)
        # A phone's visit, across its linked rolling IDs: the seq of its first entry when it is
        # listed too, else the start of its visit_id.
        seq_of = {e["id"]: e["seq"] for e in listed}
        rows = [
            [*(e[c] for c in columns), seq_of.get(e["visit_id"]) or e["visit_id"][:8]]
            for e in listed
        ]
        out.write(tabulate(rows, headers=(*columns, "visit"), missingval="-") + "\n")


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


def _cmd_trace(args: argparse.Namespace) -> int:
    """The same query as ``bluezone-central trace``, over this gateway's own file."""
    from gateway import trace as tracing

    try:
        ids = tracing.ids_from_arguments(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    engine = tracing.open_gateway_store(args.db)
    try:
        with engine.connect() as conn:
            result = tracing.trace(conn, tracing.events_table(), ids)
    finally:
        engine.dispose()
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    fitted = _read_calibration(args.calibration) if args.calibration else {}
    defaults = Scenario()
    radio = defaults.radio

    def pick(option: float | None, key: str, default: float) -> float:
        return option if option is not None else float(fitted.get(key, default))

    try:
        start = parse_iso_utc(args.start)
        sigma_db = pick(args.sigma_db, "sigma_db", math.nan)
        if args.noise_db is not None:
            noise_db = args.noise_db
        elif math.isnan(sigma_db):
            noise_db = radio.noise_db
        else:
            noise_db = Radio.noise_for(sigma_db, radio.fading_db)
        radio = Radio(
            rssi_1m=pick(args.rssi_1m, "rssi_1m", radio.rssi_1m),
            path_loss_exponent=pick(
                args.path_loss_exponent, "path_loss_exponent", radio.path_loss_exponent
            ),
            noise_db=noise_db,
            loss=args.loss,
        )
        scenario = Scenario(
            people=args.people,
            minutes=args.minutes,
            seed=args.seed,
            start=start,
            zone_m=pick(args.zone_m, "zone_m", defaults.zone_m),
            radio=radio,
            reference_m=args.reference_m,
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
    _say(
        "simulate",
        f"{written:,} adverts, {len(truth)} true visits ({observable} observable) in a"
        f" {scenario.zone_m:g} m zone; radio: {radio.rssi_1m:g} dBm at 1 m, path-loss exponent"
        f" {radio.path_loss_exponent:g}, noise {radio.noise_db:.2f} dB"
        f" + fading {radio.fading_db:g} dB (spread {radio.sigma_db:.2f} dB)",
    )
    return EXIT_OK


def _read_calibration(path: Path) -> dict[str, float]:
    """Read the JSON object `calibrate` printed: the radio and zone keys simulate uses."""
    try:
        record = orjson.loads(path.read_bytes())
    except OSError as e:
        msg = f"--calibration {path}: {e.strerror}"
        raise UsageError(msg) from None
    except orjson.JSONDecodeError as e:
        msg = f"--calibration {path}: not JSON ({e})"
        raise UsageError(msg) from None
    keys = ("rssi_1m", "path_loss_exponent", "sigma_db", "zone_m")
    if not isinstance(record, dict) or not all(
        isinstance(record.get(k), int | float) and not isinstance(record.get(k), bool)
        for k in keys[:3]
    ):
        msg = (
            f"--calibration {path}: expected the JSON object `calibrate` prints, with numbers"
            f" {', '.join(keys[:3])}"
        )
        raise UsageError(msg)
    return {k: float(record[k]) for k in keys if isinstance(record.get(k), int | float)}


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


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit the path-loss model to the samples; print it and the thresholds; maybe write them."""
    wanted = [_parse_sample(text) for text in args.sample]
    # Everything that can be checked is checked before the operator is sent walking.
    calibrate.require_distances([d for d, _ in wanted])
    if not (math.isfinite(args.zone_m) and args.zone_m > 0):
        msg = f"--zone-m {args.zone_m:g} must be a positive number of metres"
        raise UsageError(msg)
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        msg = f"--seconds {args.seconds:g} must be > 0"
        raise UsageError(msg)
    cfg = config.Config()
    if args.write is not None:
        cfg = _writable_config(args.write)
    samples: list[calibrate.Sample] = []
    summaries: list[dict[str, Any]] = []
    bad = 0
    # Capture files first: a file without the reference phone fails before any recording.
    for distance, source in sorted(wanted, key=lambda w: w[1] is None):
        if source is None:
            adverts = _record_live(cfg, args, distance)
            where = f"live on {_live_adapter(cfg, args)} at {distance:g} m"
        else:
            adverts, invalid = _read_capture(source)
            bad += invalid
            where = str(source)
        sample, summary = _reference_sample(adverts, distance, where, args.address)
        samples.append(sample)
        summaries.append(summary)
    model = calibrate.fit(samples)
    proposal = calibrate.propose(model, args.zone_m)
    for caveat in calibrate.caveats(model, args.zone_m):
        _say("calibrate", f"warning: {caveat}")
    for summary in summaries:
        summary["residual_db"] = round(
            summary["median_rssi"] - model.mean_rssi(summary["distance_m"]), 2
        )
    result = {
        "rssi_1m": round(model.rssi_1m, 2),
        "path_loss_exponent": round(model.path_loss_exponent, 3),
        "sigma_db": round(model.sigma_db, 2),
        **{key: calibrate.whole(value) for key, value in proposal.presence().items()},
        "zone_m": args.zone_m,
        "samples": summaries,
    }
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    snippet = proposal.snippet(model)
    if args.write is None:
        _say("calibrate", "for [presence] (or run again with --write CONFIG):")
        sys.stderr.write(snippet)
    else:
        _write_presence(args.write, proposal, model)
    return EXIT_BAD_INPUT if bad else EXIT_OK


def _parse_sample(text: str) -> tuple[float, Path | None]:
    """Parse ``D:SOURCE``: the distance in metres, and a capture file (None for ``live``)."""
    distance, sep, source = text.partition(":")
    hint = "expected D:SOURCE, e.g. 2:live or 2:lobby-2m.jsonl"
    if not sep or not source:
        msg = f"--sample {text!r}: {hint}"
        raise UsageError(msg)
    try:
        metres = float(distance)
    except ValueError:
        msg = f"--sample {text!r}: the distance {distance!r} is not a number of metres ({hint})"
        raise UsageError(msg) from None
    if not (math.isfinite(metres) and metres > 0):
        msg = f"--sample {text!r}: the distance must be more than 0 m"
        raise UsageError(msg)
    if source == "live":
        return metres, None
    path = Path(source)
    if not path.is_file():
        msg = f"--sample {text!r}: {path} is not a file (a capture, or 'live')"
        raise UsageError(msg)
    return metres, path


def _writable_config(path: Path) -> config.Config:
    """Load the configuration ``--write`` will change; check that it can be written."""
    folder = path.resolve().parent
    if not os.access(folder, os.W_OK):
        msg = f"--write {path}: cannot write in {folder}"
        raise UsageError(msg)
    return config.load(path) if path.exists() else config.Config()


def _read_capture(path: Path) -> tuple[list[Advert], int]:
    """Read a capture file; return its adverts and how many lines were invalid (reported)."""
    adverts: list[Advert] = []
    bad = 0
    with _open_input(path) as (lines, _size):
        for _lineno, item in capture.read(lines):
            if isinstance(item, capture.CaptureError):
                bad += 1
                if bad <= 20:
                    _say("calibrate", f"{path}: {item}")
            else:
                adverts.append(item)
    if bad > 20:
        _say("calibrate", f"{path}: {bad} invalid lines in all")
    return adverts, bad


def _reference_sample(
    adverts: list[Advert], distance: float, where: str, address: str | None
) -> tuple[calibrate.Sample, dict[str, Any]]:
    """Find the reference phone among ``adverts``; say which on stderr."""
    ref = calibrate.pick_reference(adverts, address)
    if ref is None:
        what = f"no advert from {address}" if address else "no Bluezone Android phone"
        msg = f"{what} among the {len(adverts):,} adverts of {where}" + (
            "" if address else ": is Bluezone open on the reference phone?"
        )
        raise calibrate.CalibrationError(msg)
    median = statistics.median(ref.rssi)
    others = ref.candidates - 1
    _say(
        "calibrate",
        f"{distance:g} m, {where}: reference {ref.key}, {len(ref.rssi):,} adverts, median"
        f" {median:g} dBm"
        + (
            f"; {others} other candidate(s), the next heard {ref.runner_up:,} times"
            if others
            else ""
        ),
    )
    if others and ref.runner_up > RUNNER_UP_WARN * len(ref.rssi):
        _say(
            "calibrate",
            f"warning: at {distance:g} m another phone was heard almost as often; if"
            f" {ref.key} is not the reference phone, name it with --address",
        )
    summary = {
        "distance_m": distance,
        "source": where,
        "reference": ref.key,
        "adverts": len(ref.rssi),
        "median_rssi": median,
    }
    return calibrate.Sample(distance, ref.rssi, where), summary


def _live_adapter(cfg: config.Config, args: argparse.Namespace) -> str:
    return str(args.adapter or cfg.scanner.names[0])


def _record_live(cfg: config.Config, args: argparse.Namespace, distance: float) -> list[Advert]:
    """Record ``--seconds`` of adverts for the sample at ``distance``, after a prompt."""
    adapter = _live_adapter(cfg, args)
    if sys.stdin.isatty() and not args.yes:
        sys.stderr.write(f"Stand at {distance:g} m with the reference phone, then press Enter ")
        sys.stderr.flush()
        if not sys.stdin.readline():
            msg = "no answer on stdin: stopped before recording"
            raise UsageError(msg)
    settings = dataclasses.replace(cfg.scanner, adapter=adapter, adapters=(), roles=())
    source = scan(settings, alias=cfg.gateway.id, scanners=[])
    with tqdm(
        total=args.seconds,
        unit="s",
        disable=None,
        file=sys.stderr,
        desc=f"{distance:g} m",
        leave=False,
        bar_format="{desc}: {bar} {n:.0f}/{total:.0f} s, {postfix}",
    ) as progress:
        try:
            return asyncio.run(_record(source, args.seconds, progress))
        except BaseExceptionGroup as group:  # the scanners' TaskGroup
            error = _first_gateway_error(group)
            if error is None:
                raise
            msg = f"live sample at {distance:g} m on {adapter}: {error}"
            raise UsageError(msg) from None


def _first_gateway_error(group: BaseExceptionGroup[BaseException]) -> GatewayError | None:
    """Return the first `GatewayError` inside (nested) exception groups, if any."""
    for error in group.exceptions:
        if isinstance(error, GatewayError):
            return error
        if isinstance(error, BaseExceptionGroup):
            inner = _first_gateway_error(error)
            if inner is not None:
                return inner
    return None


async def _record(source: AdvertSource, seconds: float, progress: tqdm[Any]) -> list[Advert]:
    """Run ``source`` for ``seconds``; return what it heard. A scanner error is raised."""
    heard: list[Advert] = []
    task = asyncio.create_task(source(heard.append))
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        while (elapsed := loop.time() - started) < seconds:
            if task.done():
                task.result()  # the scanner gave up: raise its error
                break
            progress.n = elapsed
            progress.set_postfix_str(f"{len(heard):,} adverts")
            await asyncio.sleep(min(PROGRESS_S, seconds - elapsed))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return heard


def _write_presence(path: Path, proposal: calibrate.Proposal, model: calibrate.PathLoss) -> None:
    """Set the proposal's ``[presence]`` keys in ``path``: validated, atomic, mode kept."""
    target = path.resolve()  # a symlinked config is changed where it lives
    text = target.read_text(encoding="utf-8") if target.exists() else ""
    note = (
        f"calibrated for a {proposal.zone_m:g} m zone: {model.rssi_1m:.1f} dBm at 1 m, exponent"
        f" {model.path_loss_exponent:.2f}, spread {model.sigma_db:.1f} dB"
    )
    new = calibrate.update_config(text, proposal.presence(), str(path), note)
    config.parse(new, path)  # never write a file the daemon would refuse
    _replace_file(target, new)
    _say(
        "calibrate",
        f"wrote enter_rssi {proposal.enter_rssi:g}, exit_rssi {proposal.exit_rssi:g},"
        f" rssi_sigma_db {proposal.rssi_sigma_db:g} to [presence] in {path}; apply it with:"
        " sudo systemctl reload bluezone-gateway",
    )


def _replace_file(target: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``target`` and rename it over ``target``.

    A crash leaves the old file or the new one, never half of one. The old file's mode, owner
    and group are kept (gateway.toml is root:bluezone 0640 on a gateway).
    """
    old = target.stat() if target.exists() else None
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if old is not None:
            Path(tmp).chmod(stat.S_IMODE(old.st_mode))
            if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                os.chown(tmp, old.st_uid, old.st_gid)
        else:
            Path(tmp).chmod(0o666 & ~_umask())
        Path(tmp).replace(target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        msg = f"cannot write {target}: {e.strerror}"
        raise UsageError(msg) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
