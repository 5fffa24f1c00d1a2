"""Live BLE scanning with bleak on BlueZ: the only module that imports bleak.

One `AdapterScanner` per adapter turns bleak's callbacks into `Advert` records and hands them
to ``emit`` (which only enqueues). Around the scan it keeps a recovery ladder, after
habluetooth and bluetooth-auto-recovery:

1. restart discovery;
2. power-cycle the adapter (bluezero);
3. find the adapter again by its MAC address (re-plugged adapters come back as another
   ``hciN``) and set it up again;
4. give up: `ScannerError`, the daemon exits non-zero and systemd restarts it.

Errors climb the ladder; a scanner that then runs cleanly for `HEALTHY_S` starts again at the
bottom. Silence is different: a lobby can be empty at night, so a stall (no advert at all for
``stall_after_s``) restarts discovery, then power-cycles, then keeps restarting every
``stall_after_s`` without ever exiting (room-assistant#651 shows what reset storms do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, Final

from bleak import BleakClient, BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakDBusError, BleakError

from gateway.adapter import AdapterCare, AdapterError, AdapterInfo
from gateway.config import ScannerSection
from gateway.decode import BLUEZONE_IOS_ID_CHAR
from gateway.model import Advert, GatewayError, Sighting
from gateway.rolling import AddressIds

_LOGGER = logging.getLogger(__name__)

Emit = Callable[[Advert], None]

WATCH_EVERY_S: Final = 1.0
"""How often the adapter's state and the advert flow are checked: adapter loss is noticed
within about a second, well inside the 30 s recovery budget."""
HEALTHY_S: Final = 120.0
"""Scanning this long without trouble resets the ladder to its first rung."""
REFIND_S: Final = 20.0
"""How long rung 3 waits for the adapter to come back (USB re-enumeration takes seconds)."""
STOP_TIMEOUT_S: Final = 5.0
MALFORMED_LOG_EVERY: Final = 1000
DEVICES_KEPT: Final = 4096
"""Recent addresses whose BLEDevice is kept for GATT reads (Android rotates every 30 s)."""
ID_LEN: Final = 12
GATT_QUEUE_MAX: Final = 64
GATT_BACKOFF_MAX: Final = 16
"""A failing iPhone is retried after gatt_retry_s, then twice that, ... up to 16 times it."""

# Passive scanning hands BlueZ these patterns (AD type, offset 0, bytes as on the air, so
# 16-bit values are little-endian); only matching adverts are reported.
OR_PATTERNS: Final[list[OrPattern | tuple[int, AdvertisementDataType, bytes]]] = [
    OrPattern(0, AdvertisementDataType.COMPLETE_LIST_SERVICE_UUID16, b"\x56\x4e"),  # Bluezone
    OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\xb5\x22"),  # its ID
    OrPattern(0, AdvertisementDataType.COMPLETE_LIST_SERVICE_UUID128,
              bytes.fromhex("00004e5673f54bc4a12f17d1ad07a667")[::-1]),  # Bluezone iPhone
    OrPattern(0, AdvertisementDataType.COMPLETE_LOCAL_NAME, b"Bluezone"),
    OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x4c\x00\x01"),  # overflow
    OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\x6f\xfd"),  # GAEN
    OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\xff\x03"),  # BlueTrace
]  # fmt: skip


class ScannerError(GatewayError):
    """The scanner cannot go on; the daemon should exit non-zero so that systemd restarts it."""


class AdapterScanner:
    """Scan on one adapter, forever, climbing the recovery ladder when needed."""

    def __init__(
        self,
        ident: str,
        settings: ScannerSection,
        *,
        alias: str,
        emit: Emit,
        care: AdapterCare | None = None,
    ) -> None:
        self.ident = ident
        """The adapter as configured: a name or a MAC; adverts are labelled with it."""
        self.settings = settings
        self.alias = alias
        self._emit = emit
        self._care = care or AdapterCare()
        self.state = "starting"
        self.info: AdapterInfo | None = None
        self.adverts = 0
        self.malformed = 0
        self.recoveries: Counter[str] = Counter()
        """Ladder steps taken, by name, for health and metrics."""
        self.scanning = asyncio.Event()
        """Set while bleak is scanning: the daemon's READY signal waits for it."""
        self.last_advert = time.monotonic()
        self.devices: OrderedDict[str, BLEDevice] = OrderedDict()
        """The latest BLEDevice of each recent address: what a GATT read connects to."""

    async def run(self) -> None:
        """Scan until cancelled.

        Raises:
            ScannerError: the adapter is missing at start, or the ladder ran out.
        """
        try:
            info = await self._care.find(self.ident)
            await self._care.prepare(info.address, self.alias)
        except AdapterError as e:
            raise ScannerError(str(e)) from None
        self.info = info
        errors = stalls = 0
        while True:
            started = time.monotonic()
            reason, stalled = await self._scan_once(info)
            if time.monotonic() - started >= HEALTHY_S:
                errors = stalls = 0
            if stalled:
                stalls += 1
                await self._after_stall(stalls, reason, info)
            else:
                errors += 1
                info = self.info = await self._after_error(errors, reason, info)

    async def _after_stall(self, stalls: int, reason: str, info: AdapterInfo) -> None:
        step = "power-cycle" if stalls == 2 else "restart discovery"
        self.recoveries["stall"] += 1
        self.recoveries[step] += 1
        _LOGGER.warning("Scanner on %s: %s; %s", self.ident, reason, step)
        if step == "power-cycle":
            with contextlib.suppress(AdapterError):
                await self._care.power_cycle(info.address)

    async def _after_error(self, errors: int, reason: str, info: AdapterInfo) -> AdapterInfo:
        """Take the ladder's next step; return the adapter to scan on next."""
        if errors == 1:
            self.recoveries["restart discovery"] += 1
            _LOGGER.warning("Scanner on %s: %s; restarting discovery", self.ident, reason)
            await asyncio.sleep(WATCH_EVERY_S)
            return info
        if errors == 2:  # the ladder's rungs
            self.recoveries["power-cycle"] += 1
            _LOGGER.warning("Scanner on %s: %s; power-cycling the adapter", self.ident, reason)
            try:
                await self._care.power_cycle(info.address)
            except AdapterError as e:
                _LOGGER.warning("Power-cycle failed: %s", e)
            return info
        if errors == 3:
            self.recoveries["re-open"] += 1
            _LOGGER.warning(
                "Scanner on %s: %s; looking for adapter %s again", self.ident, reason, info.address
            )
            return await self._refind(info.address)
        self.recoveries["exit"] += 1
        msg = f"scanner on {self.ident} gave up after {errors - 1} recovery steps: {reason}"
        raise ScannerError(msg)

    async def _refind(self, address: str) -> AdapterInfo:
        deadline = time.monotonic() + REFIND_S
        while True:
            try:
                info = await self._care.find(address)
                await self._care.prepare(address, self.alias)
            except AdapterError as e:
                if time.monotonic() >= deadline:
                    msg = f"adapter {address} did not come back within {REFIND_S:.0f} s: {e}"
                    raise ScannerError(msg) from None
                await asyncio.sleep(WATCH_EVERY_S)
            else:
                _LOGGER.info("Adapter %s is back as %s", address, info.name)
                return info

    async def _scan_once(self, info: AdapterInfo) -> tuple[str, bool]:
        """Scan until something goes wrong; return (why, whether it was a stall)."""
        try:
            scanner = BleakScanner(self._on_advert, **self._scanner_kwargs(info))
            await scanner.start()
        except (BleakError, BleakDBusError, ValueError) as e:
            self.state = "recovering"
            return f"cannot start scanning on {info.name}: {e}", False
        self.state = "scanning"
        self.scanning.set()
        self.last_advert = time.monotonic()
        _LOGGER.info("Scanning on %s (%s, %s mode)", info.name, info.address, self._mode(info))
        try:
            return await self._watch(info)
        finally:
            self.scanning.clear()
            self.state = "recovering"
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await scanner.stop()
            except (BleakError, BleakDBusError, TimeoutError) as e:
                _LOGGER.debug("Stopping the scanner on %s: %s", info.name, e)

    async def _watch(self, info: AdapterInfo) -> tuple[str, bool]:
        stall_after_s = self.settings.stall_after_s
        active = self._mode(info) == "active"
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            now = await self._care.state(info)
            if now is None:
                return f"adapter {info.name} ({info.address}) is gone", False
            if not now.powered:
                return f"adapter {info.name} was powered off", False
            if active and not now.discovering:
                return f"adapter {info.name} stopped discovering", False
            silent_s = time.monotonic() - self.last_advert
            if silent_s > stall_after_s:
                return f"no adverts for {silent_s:.0f} s", True

    def _mode(self, info: AdapterInfo) -> str:
        mode = self.settings.mode
        if mode == "auto":
            return "passive" if info.passive_capable else "active"
        return mode

    def _scanner_kwargs(self, info: AdapterInfo) -> dict[str, Any]:
        if self._mode(info) == "passive":
            bluez = BlueZScannerArgs(adapter=info.name, or_patterns=OR_PATTERNS)
            return {"scanning_mode": "passive", "bluez": bluez}
        # DuplicateData=True: report every advert, not only changed ones. Without it BlueZ
        # stays quiet about a phone whose payload does not change, and presence sees false
        # exits (bluez#1113, bleak#1065).
        bluez = BlueZScannerArgs(adapter=info.name, filters={"DuplicateData": True})
        return {"scanning_mode": "active", "bluez": bluez}

    def _on_advert(self, device: BLEDevice, data: AdvertisementData) -> None:
        """Bleak's callback: build the record and enqueue it; nothing else."""
        rssi = data.rssi
        if type(rssi) is not int or not all(
            type(v) is bytes for v in data.manufacturer_data.values()
        ):
            self.malformed += 1
            if self.malformed % MALFORMED_LOG_EVERY == 1:
                _LOGGER.warning(
                    "Malformed advert from %s (%d so far): rssi=%r, %r",
                    device.address,
                    self.malformed,
                    rssi,
                    data,
                )
            return
        now = time.monotonic()
        self.last_advert = now
        self.adverts += 1
        devices = self.devices
        devices[device.address] = device
        if len(devices) > DEVICES_KEPT:
            devices.popitem(last=False)
        self._emit(
            Advert(
                now,
                device.address,
                rssi,
                data.tx_power,
                data.local_name,
                tuple(data.service_uuids),
                data.service_data,
                data.manufacturer_data,
                self.ident,
            )
        )

    def health(self) -> dict[str, Any]:
        """Return the scanner's state and counters."""
        return {
            "adapter": self.ident,
            "name": self.info.name if self.info else None,
            "state": self.state,
            "adverts": self.adverts,
            "malformed": self.malformed,
            "recoveries": dict(self.recoveries),
            "last_advert_age_s": round(time.monotonic() - self.last_advert, 1),
        }


def scan(
    settings: ScannerSection, *, alias: str, scanners: list[AdapterScanner]
) -> Callable[[Emit], Coroutine[Any, Any, None]]:
    """Return the daemon's advert source: every configured adapter, scanned at once.

    The scanners are appended to ``scanners`` so that the caller can watch their health.
    """

    async def source(emit: Emit) -> None:
        care = AdapterCare()
        try:
            async with asyncio.TaskGroup() as group:
                for ident in settings.names:
                    scanner = AdapterScanner(ident, settings, alias=alias, emit=emit, care=care)
                    scanners.append(scanner)
                    group.create_task(scanner.run(), name=f"scan {ident}")
        finally:
            care.close()

    return source


class GattReader:
    """Reads Bluezone iPhones' rolling IDs over GATT (protocol.md §2.4, §5), one at a time.

    An iPhone does not put its ID in its adverts: like Bluezone's own Android code, connect,
    read characteristic ``…a689`` (12 bytes), disconnect, and remember address → ID until the
    quarter hour changes. At most one connection at a time (BlueZ handles one connection
    attempt per adapter), each bounded by ``gatt_timeout_s``; an iPhone that fails waits
    ``gatt_retry_s``, doubling, before the next try.
    """

    def __init__(
        self,
        settings: ScannerSection,
        scanners: list[AdapterScanner],
        wall: Callable[[float], float],
    ) -> None:
        self.settings = settings
        self.ids = AddressIds()
        self._scanners = scanners
        self._wall = wall
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=GATT_QUEUE_MAX)
        self._queued: set[str] = set()
        self._retry: dict[str, tuple[float, int]] = {}
        """Address → (not before, failures so far)."""
        self.reads = 0
        self.failures = 0
        self.reading: str | None = None
        """The address being read now (the desk shows "reading ID…")."""
        self.on_read: Callable[[str, str | None], None] | None = None
        """Called with the address and its ID (None: not read) when an asked-for read ends."""

    def want(self, sighting: Sighting) -> None:
        """Ask for the ID of this iPhone (called for every sighting of one without an ID)."""
        address = sighting.address
        if address in self._queued:
            return
        retry = self._retry.get(address)
        if retry is not None and sighting.t < retry[0]:
            return
        try:
            self._queue.put_nowait(address)
        except asyncio.QueueFull:
            return  # a crowd of iPhones: the next sighting asks again
        self._queued.add(address)

    async def run(self) -> None:
        """Read IDs as they are asked for, until cancelled."""
        while True:
            address = await self._queue.get()
            self._queued.discard(address)
            if self.ids.get(address, self._wall(time.monotonic())) is None:
                self.reading = address
                try:
                    await self._read(address)
                finally:
                    self.reading = None
            if self.on_read is not None:
                self.on_read(address, self.ids.get(address, self._wall(time.monotonic())))

    async def _read(self, address: str) -> None:
        device = next((s.devices[address] for s in self._scanners if address in s.devices), None)
        if device is None:
            return  # not heard lately: it left; a new sighting will ask again
        timeout_s = self.settings.gatt_timeout_s
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                async with BleakClient(device, timeout=timeout_s) as client:
                    value = bytes(await client.read_gatt_char(BLUEZONE_IOS_ID_CHAR))
        except (BleakError, BleakDBusError, TimeoutError, EOFError, OSError) as e:
            self._failed(address, f"{type(e).__name__}: {e}")
            return
        if len(value) != ID_LEN:
            self._failed(address, f"the ID characteristic holds {len(value)} bytes, not {ID_LEN}")
            return
        self.ids.learn(address, value.hex(), self._wall(time.monotonic()))
        self._retry.pop(address, None)
        self.reads += 1
        _LOGGER.info(
            "Read the rolling ID of iPhone %s over GATT in %.1f s",
            address,
            time.monotonic() - started,
        )

    def _failed(self, address: str, reason: str) -> None:
        self.failures += 1
        failures = self._retry.get(address, (0.0, 0))[1] + 1
        backoff_s = self.settings.gatt_retry_s * min(2 ** (failures - 1), GATT_BACKOFF_MAX)
        self._retry[address] = (time.monotonic() + backoff_s, failures)
        if len(self._retry) > DEVICES_KEPT:
            del self._retry[next(iter(self._retry))]
        _LOGGER.info("No GATT read from %s (%s); next try in %.0f s", address, reason, backoff_s)

    def health(self) -> dict[str, Any]:
        """Return the reader's counters."""
        return {
            "reads": self.reads,
            "failures": self.failures,
            "known": len(self.ids),
            "reading": self.reading,
        }
