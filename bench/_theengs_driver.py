"""Drive Theengs Gateway's own advert handler with a capture; run by bench/theengs.py.

Runs with the Python of a venv that has ``theengsgateway`` (not this project's: it imports
nothing from ``gateway``). It follows the method of ../shared/theengs-anchor.md: set up as
Theengs' ``main()`` does with ``-H HOST -P PORT`` (plus the broker's credentials), defaults
otherwise (discovery on: ``DiscoveryGateway``); start the idle asyncio loop thread as ``run()``
does, ``connect_mqtt()``, paho's ``loop_forever`` on a thread; never a ``BleakScanner``. Each
capture record becomes ``BLEDevice(address, None, details)`` and ``AdvertisementData(...)``
(manufacturer data as {int: bytes}) handed to ``detection_callback``. A counter wraps
``client.publish``. After ``--warmup`` records, the rest are timed with ``process_time()`` (all
threads) and ``perf_counter()`` until paho's outgoing queue is empty; then the driver's own
overhead (building the objects, no gateway call) is timed and reported apart.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from TheengsGateway import ble_gateway  # type: ignore[import-not-found]
from TheengsGateway.config import DEFAULT_CONFIG  # type: ignore[import-not-found]
from TheengsGateway.discovery import DiscoveryGateway  # type: ignore[import-not-found]

CONNECT_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 60.0


def _configuration(host: str, port: int, user: str, password: str) -> dict[str, Any]:
    """Return the configuration ``main()`` builds from its defaults and ``-H -P -u -pw``."""
    configuration: dict[str, Any] = json.loads(json.dumps(DEFAULT_CONFIG))  # a deep copy
    configuration.update(host=host, port=port, user=user)
    configuration["pass"] = password
    if configuration["discovery_topic"].endswith("/sensor"):
        configuration["discovery_topic"] = configuration["discovery_topic"][:-7]
    mac = uuid.UUID(int=uuid.getnode()).hex[-12:]
    configuration["gateway_id"] = ":".join(mac[i : i + 2] for i in range(0, 12, 2)).upper()
    for obsolete in ("GAEN", "MS-CDP", "APPLE_CONT", "APPLE_CONTAT", "APPLEDEVICE", "APPLEWATCH"):
        if obsolete in configuration["discovery_filter"]:
            configuration["discovery_filter"].remove(obsolete)
    return configuration


def _records(path: Path) -> list[tuple[Any, ...]]:
    """Read the capture: (address, name, rssi, tx_power, uuids, service data, mfr data)."""
    out = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            r = json.loads(line)
            mfr = r.get("manufacturer_data") or {}
            out.append(
                (
                    r["address"],
                    r.get("name"),
                    r["rssi"],
                    r.get("tx_power"),
                    list(r.get("service_uuids") or []),
                    {k: bytes.fromhex(v) for k, v in (r.get("service_data") or {}).items()},
                    {int(k): bytes.fromhex(v) for k, v in mfr.items()},
                )
            )
    return out


def _objects(record: tuple[Any, ...]) -> tuple[BLEDevice, AdvertisementData]:
    address, name, rssi, tx_power, uuids, service_data, manufacturer_data = record
    device = BLEDevice(address, None, {"path": f"/org/bluez/hci0/dev_{address}"})
    advert = AdvertisementData(
        local_name=name,
        manufacturer_data=manufacturer_data,
        service_data=service_data,
        service_uuids=uuids,
        tx_power=tx_power,
        rssi=rssi,
        platform_data=(),
    )
    return device, advert


def main() -> int:
    """Replay the capture through Theengs Gateway; print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--capture", type=Path, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument("--warmup", type=int, default=1000)
    args = parser.parse_args()
    password = args.password_file.read_text(encoding="utf-8").strip()
    gw = DiscoveryGateway(_configuration(args.host, args.port, args.user, password))
    logging.basicConfig()
    ble_gateway.logger.setLevel(logging.INFO)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    gw.connect_mqtt()
    client = gw.client
    threading.Thread(target=client.loop_forever, daemon=True).start()
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while not client.is_connected():
        if time.monotonic() > deadline:
            sys.stderr.write("theengs driver: no connection to the broker\n")
            return 1
        time.sleep(0.01)
    published = 0
    publish = client.publish

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal published
        published += 1
        return publish(*args, **kwargs)

    client.publish = counted
    records = _records(args.capture)
    warmup, timed = records[: args.warmup], records[args.warmup :]
    for record in warmup:
        gw.detection_callback(*_objects(record))
    before = published
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for record in timed:
        gw.detection_callback(*_objects(record))
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while client._out_packet and time.monotonic() < deadline:  # paho's outgoing queue
        time.sleep(0.001)
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    messages = published - before
    cpu1 = time.process_time()
    for record in timed:
        _objects(record)
    overhead_s = time.process_time() - cpu1
    gw.disconnect_mqtt()  # its "offline" status goes through the counter too
    result = {
        "adverts": len(timed),
        "warmup": len(warmup),
        "cpu_s": round(cpu_s, 3),
        "wall_s": round(wall_s, 3),
        "overhead_cpu_s": round(overhead_s, 3),
        "messages": messages,
        "messages_all": published + 1,  # and the "online" status, sent before the counter
        "published_messages": gw.published_messages,
        "queue_empty": not client._out_packet,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
