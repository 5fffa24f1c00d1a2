"""The fake BlueZ (tests/fakebluez.py, tests/bluez_template.py) against the real bleak and bluezero.

Every test gets its own event loop (pytest-asyncio), hence its own bleak BlueZ manager connected
to the session's private bus; the ``bluez`` fixture resets the mock and sets
``DBUS_SYSTEM_BUS_ADDRESS`` before the test's first bleak call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time

import pytest
from bleak import BleakClient, BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakDBusError,
    BleakError,
)

from gateway.decode import (
    BLUEZONE_ANDROID_UUID,
    BLUEZONE_COMPANY,
    BLUEZONE_IOS_ID_CHAR,
    BLUEZONE_IOS_SERVICE,
    GAEN_UUID,
)
from tests.factories import ROLLING_ID
from tests.fakebluez import BUS_ADDRESS_ENV, FakeBlueZ, MockError, sync_bleak

# The fixtures live in tests/fakebluez.py; a conftest that imports them makes this redundant.
pytest_plugins = ("tests.fakebluez",)

ADAPTER_MAC = "00:1A:7D:DA:71:13"
HCI0 = "/org/bluez/hci0"
ANDROID = "5A:1F:33:0C:9E:71"
IPHONE = "6B:2E:44:1D:AF:82"
ID = bytes.fromhex(ROLLING_ID)
ACTIVE: BlueZScannerArgs = {"adapter": "hci0", "filters": {"DuplicateData": True}}


class Adverts:
    """A bleak detection callback that queues what it is given."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[BLEDevice, AdvertisementData]] = asyncio.Queue()

    def __call__(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self.queue.put_nowait((device, adv))

    async def next(self, wait_s: float = 2.0) -> tuple[BLEDevice, AdvertisementData]:
        return await asyncio.wait_for(self.queue.get(), wait_s)


def test_each_test_starts_with_an_empty_bluez_on_the_private_bus(bluez: FakeBlueZ) -> None:
    assert bluez.adapters() == []
    assert os.environ[BUS_ADDRESS_ENV] == bluez.address
    assert bluez.method_calls("/", "ResetBlueZ") == []


def test_control_api_rejects_mistakes_with_bluez_style_errors(bluez: FakeBlueZ) -> None:
    with pytest.raises(MockError) as no_adapter:
        bluez.add_device("hci0", ANDROID, rssi=-60)
    assert no_adapter.value.name == "org.bluez.Mock.NoSuchAdapter"
    bluez.add_adapter()
    with pytest.raises(MockError, match="already exists"):
        bluez.add_adapter()
    with pytest.raises(MockError, match="not a Bluetooth address"):
        bluez.add_device("hci0", "5A:1F", rssi=-60)
    path = bluez.add_device("hci0", ANDROID.lower(), rssi=-60)
    assert path == f"{HCI0}/dev_5A_1F_33_0C_9E_71"
    with pytest.raises(MockError, match="unknown property 'Rsi'"):
        bluez.set_adapter("hci0", Rsi=-60)


async def test_active_scan_reports_a_new_device_exactly(bluez: FakeBlueZ) -> None:
    bluez.add_adapter()
    adverts = Adverts()
    async with BleakScanner(adverts, bluez=ACTIVE):
        path = bluez.add_device(
            "hci0",
            ANDROID,
            rssi=-58,
            name="Bluezone",
            uuids=[BLUEZONE_ANDROID_UUID.upper()],
            manufacturer_data={BLUEZONE_COMPANY: ID},
            service_data={GAEN_UUID: b"\x01\x02\x03"},
            tx_power=7,
        )
        device, adv = await adverts.next()
    assert (device.address, device.name, device.details["path"]) == (ANDROID, "Bluezone", path)
    assert adv.rssi == -58
    assert adv.local_name == "Bluezone"
    assert adv.tx_power == 7
    assert adv.service_uuids == [BLUEZONE_ANDROID_UUID]  # BlueZ reports UUIDs in lower case
    assert adv.manufacturer_data == {BLUEZONE_COMPANY: ID}
    assert adv.service_data == {GAEN_UUID: b"\x01\x02\x03"}


async def test_an_identical_repeated_advert_is_delivered_again(bluez: FakeBlueZ) -> None:
    bluez.add_adapter()
    adverts = Adverts()
    async with BleakScanner(adverts, bluez=ACTIVE):
        path = bluez.add_device("hci0", ANDROID, rssi=-60)
        await adverts.next()  # the sighting from InterfacesAdded
        bluez.advertise(path, rssi=-61, manufacturer_data={BLUEZONE_COMPANY: ID})
        bluez.advertise(path, rssi=-61, manufacturer_data={BLUEZONE_COMPANY: ID})
        first = await adverts.next()
        second = await adverts.next()
    for device, adv in (first, second):
        assert (device.address, device.name) == (ANDROID, None)  # nameless: Alias is the MAC
        assert (adv.rssi, adv.manufacturer_data) == (-61, {BLUEZONE_COMPANY: ID})


async def test_a_name_heard_later_becomes_the_device_name(bluez: FakeBlueZ) -> None:
    bluez.add_adapter()
    adverts = Adverts()
    async with BleakScanner(adverts, bluez=ACTIVE):
        path = bluez.add_device("hci0", IPHONE, rssi=-60)
        device, _adv = await adverts.next()
        first_name = device.name  # bleak updates the same BLEDevice in place
        bluez.advertise(path, name="Bluezone")  # e.g. from a scan response
        device, adv = await adverts.next()
    assert (first_name, device.name, adv.local_name) == (None, "Bluezone", "Bluezone")
    assert bluez.device_props(path)["Alias"] == "Bluezone"


async def test_scanner_sets_the_discovery_filter_and_discovering_follows(
    bluez: FakeBlueZ,
) -> None:
    bluez.add_adapter()
    async with BleakScanner(Adverts(), bluez=ACTIVE):
        assert bluez.adapter_props()["Discovering"] is True
    assert bluez.adapter_props()["Discovering"] is False
    filters = [args for _t, args in bluez.method_calls(HCI0, "SetDiscoveryFilter")]
    assert filters == [[{"Transport": "le", "DuplicateData": True}], [{}]]
    assert len(bluez.method_calls(HCI0, "StartDiscovery")) == 1
    assert len(bluez.method_calls(HCI0, "StopDiscovery")) == 1


async def test_passive_scan_registers_a_monitor_and_receives_adverts(bluez: FakeBlueZ) -> None:
    bluez.add_adapter()
    adverts = Adverts()
    pattern = OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\xb5\x22")
    args: BlueZScannerArgs = {"adapter": "hci0", "or_patterns": [pattern]}
    async with BleakScanner(adverts, scanning_mode="passive", bluez=args):
        [(_t, [monitor])] = bluez.method_calls(HCI0, "RegisterMonitor")
        path = bluez.add_device("hci0", ANDROID, rssi=-60, manufacturer_data={0x22B5: ID})
        _device, adv = await adverts.next()
        bluez.advertise(path, rssi=-70)
        _device, again = await adverts.next()
    assert monitor.startswith(f"/org/bleak/{os.getpid()}/")
    assert [args for _t, args in bluez.method_calls(HCI0, "UnregisterMonitor")] == [[monitor]]
    assert bluez.method_calls(HCI0, "StartDiscovery") == []  # passive: no discovery session
    assert (adv.manufacturer_data, again.rssi, again.manufacturer_data) == (
        {0x22B5: ID},
        -70,
        {0x22B5: ID},  # cached fields carry over, as with BlueZ
    )


async def test_removed_device_leaves_the_scanner(bluez: FakeBlueZ) -> None:
    bluez.add_adapter()
    scanner = BleakScanner(Adverts(), bluez=ACTIVE)
    async with scanner:
        path = bluez.add_device("hci0", ANDROID, rssi=-60)
        await sync_bleak()
        assert list(scanner.discovered_devices_and_advertisement_data) == [ANDROID]
        bluez.remove_device(path)
        await sync_bleak()
        assert scanner.discovered_devices_and_advertisement_data == {}


async def test_unplugged_adapter_fails_scans_and_the_same_mac_returns_as_hci1(
    bluez: FakeBlueZ,
) -> None:
    bluez.add_adapter("hci0", ADAPTER_MAC)
    scanner = BleakScanner(Adverts(), bluez=ACTIVE)
    await scanner.start()
    bluez.add_device("hci0", ANDROID, rssi=-60)
    bluez.remove_adapter("hci0")
    await sync_bleak()
    # InterfacesRemoved named the device too, so bleak dropped it; the adapter object is gone.
    assert scanner.discovered_devices_and_advertisement_data == {}
    with pytest.raises(BleakDBusError) as stopped:
        await scanner.stop()
    assert stopped.value.dbus_error == "org.freedesktop.DBus.Error.UnknownObject"
    with pytest.raises(BleakError, match="adapter 'hci0' not found"):
        async with BleakScanner(Adverts(), bluez=ACTIVE):
            pass
    with pytest.raises(BleakBluetoothNotAvailableError) as default:
        async with BleakScanner(Adverts()):
            pass
    assert default.value.reason is BleakBluetoothNotAvailableReason.NO_BLUETOOTH

    bluez.add_adapter("hci1", ADAPTER_MAC)
    await sync_bleak()
    adverts = Adverts()
    async with BleakScanner(adverts, bluez={"adapter": "hci1"}):
        path = bluez.add_device("hci1", ANDROID, rssi=-60)
        device, _adv = await adverts.next()
    assert device.details["path"] == path == "/org/bluez/hci1/dev_5A_1F_33_0C_9E_71"
    assert bluez.adapter_props("hci1")["Address"] == ADAPTER_MAC


async def test_powering_off_stops_discovery_and_fails_new_scans(bluez: FakeBlueZ) -> None:
    bluez.add_adapter()
    async with BleakScanner(Adverts(), bluez=ACTIVE):
        bluez.set_adapter("hci0", powered=False)
        props = bluez.adapter_props()
        assert (props["Powered"], props["Discovering"], props["PowerState"]) == (
            False,
            False,
            "off",
        )
        await sync_bleak()
    # bleak ignores NotReady from StopDiscovery, so leaving the block above did not raise.
    assert bluez.method_calls(HCI0, "StopDiscovery") != []
    with pytest.raises(BleakBluetoothNotAvailableError) as default:
        async with BleakScanner(Adverts()):
            pass
    assert default.value.reason is BleakBluetoothNotAvailableReason.POWERED_OFF
    with pytest.raises(BleakDBusError) as named:
        async with BleakScanner(Adverts(), bluez=ACTIVE):
            pass
    assert named.value.dbus_error == "org.bluez.Error.NotReady"


BLUEZERO_SCRIPT = """
import json
from bluezero import adapter

found = adapter.list_adapters()
dongle = adapter.Adapter(found[0])
dongle.start_discovery()  # without SetDiscoveryFilter first
discovering = bool(dongle.discovering)
dongle.show_duplicates()
dongle.powered = False
after_power_off = {"powered": bool(dongle.powered), "discovering": bool(dongle.discovering)}
dongle.powered = True
dongle.alias = "gw-lobby"
dongle.discoverable = True
dongle.pairable = True
try:
    dongle.adapter_props.Set("org.bluez.Adapter1", "Address", "00:00:00:00:00:01")
except Exception as e:
    read_only = e.get_dbus_name()
print(json.dumps({"found": [str(a) for a in found], "discovering": discovering,
                  "after_power_off": after_power_off, "alias": str(dongle.alias),
                  "read_only": read_only}))
"""


def test_bluezero_lists_and_configures_the_adapter(bluez: FakeBlueZ) -> None:
    # bluezero uses the process-wide dbus.SystemBus(), so it runs in its own process.
    bluez.add_adapter("hci0", ADAPTER_MAC)
    result = subprocess.run(
        [sys.executable, "-c", BLUEZERO_SCRIPT],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "found": [ADAPTER_MAC],
        "discovering": True,
        "after_power_off": {"powered": False, "discovering": False},
        "alias": "gw-lobby",
        "read_only": "org.freedesktop.DBus.Error.PropertyReadOnly",
    }
    props = bluez.adapter_props()
    assert (props["Powered"], props["Alias"], props["Discoverable"], props["Pairable"]) == (
        True,
        "gw-lobby",
        True,
        True,
    )
    assert [args for _t, args in bluez.method_calls(HCI0, "SetDiscoveryFilter")] == [
        [{"DuplicateData": True}]
    ]
    assert [args[1:] for _t, args in bluez.method_calls(HCI0, "Set")] == [
        ["Powered", False],
        ["Powered", True],
        ["Alias", "gw-lobby"],
        ["Discoverable", True],
        ["Pairable", True],
        ["Address", "00:00:00:00:00:01"],  # refused, but recorded
    ]


async def scan_for(
    bluez: FakeBlueZ, address: str, uuids: tuple[str, ...] = ()
) -> tuple[str, BLEDevice]:
    """Add the device during a scan; return its path and bleak's BLEDevice for it."""
    adverts = Adverts()
    async with BleakScanner(adverts, bluez=ACTIVE):
        path = bluez.add_device("hci0", address, rssi=-60, uuids=uuids)
        device, _adv = await adverts.next()
    return path, device


async def test_gatt_read_of_the_bluezone_id_from_a_scanned_iphone(bluez: FakeBlueZ) -> None:
    bluez.add_adapter()
    path, device = await scan_for(bluez, IPHONE, (BLUEZONE_IOS_SERVICE,))
    bluez.add_gatt_id(path, ID)
    async with BleakClient(device, timeout=5) as client:
        assert bluez.device_props(path)["ServicesResolved"] is True
        assert [s.uuid for s in client.services] == [BLUEZONE_IOS_SERVICE]
        char = client.services.get_characteristic(BLUEZONE_IOS_ID_CHAR)
        assert char is not None
        assert char.properties == ["read"]
        value = await client.read_gatt_char(BLUEZONE_IOS_ID_CHAR)
    assert value == ID
    props = bluez.device_props(path)
    assert (props["Connected"], props["ServicesResolved"]) == (False, False)
    assert [p for p in bluez.managed_objects() if p.startswith(path + "/")] == []
    assert len(bluez.method_calls(path, "Connect")) == 1
    assert len(bluez.method_calls(path, "Disconnect")) == 1


async def test_gatt_read_by_address_twice_while_the_iphone_advertises(bluez: FakeBlueZ) -> None:
    bluez.add_adapter()
    path = bluez.add_device("hci0", IPHONE, rssi=-60, uuids=[BLUEZONE_IOS_SERVICE])
    bluez.add_gatt_id(path, ID)

    async def keep_advertising() -> None:  # connect() by address first scans for the device
        while True:
            bluez.advertise(path, rssi=-60)
            await asyncio.sleep(0.02)

    advertiser = asyncio.create_task(keep_advertising())
    try:
        values = []
        for _ in range(2):  # the GATT objects are exported again on the second connection
            async with BleakClient(IPHONE, timeout=5) as client:
                values.append(await client.read_gatt_char(BLUEZONE_IOS_ID_CHAR))
    finally:
        advertiser.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await advertiser
    assert values == [ID, ID]
    assert len(bluez.method_calls(path, "Connect")) == 2


async def test_connect_to_a_device_without_gatt_id_fails_like_an_unreachable_one(
    bluez: FakeBlueZ,
) -> None:
    bluez.add_adapter()
    path, device = await scan_for(bluez, IPHONE)
    with pytest.raises(BleakDBusError) as failed:
        async with BleakClient(device, timeout=5):
            pass
    assert (failed.value.dbus_error, failed.value.dbus_error_details) == (
        "org.bluez.Error.Failed",
        "le-connection-timeout",
    )
    assert bluez.device_props(path)["Connected"] is False
    assert len(bluez.method_calls(path, "Connect")) == 1


async def test_rssi_as_a_string_reaches_the_callback_unchecked(bluez: FakeBlueZ) -> None:
    bluez.add_adapter()
    adverts = Adverts()
    async with BleakScanner(adverts, bluez=ACTIVE):
        path = bluez.add_device("hci0", ANDROID, rssi=-60, manufacturer_data={BLUEZONE_COMPANY: ID})
        await adverts.next()
        bluez.advertise_raw(path, {"RSSI": "strong"})
        _device, malformed = await adverts.next()
        bluez.advertise(path, rssi=-61)
        _device, recovered = await adverts.next()
    assert malformed.rssi == "strong"  # type: ignore[comparison-overlap]  # bleak checks nothing
    assert (recovered.rssi, recovered.manufacturer_data) == (-61, {BLUEZONE_COMPANY: ID})
    assert bluez.device_props(path)["RSSI"] == -61  # AdvertiseRaw did not store "strong"


async def test_malformed_manufacturer_data_silences_that_device_until_replaced(
    bluez: FakeBlueZ, caplog: pytest.LogCaptureFixture
) -> None:
    bluez.add_adapter()
    adverts = Adverts()
    async with BleakScanner(adverts, bluez=ACTIVE):
        path = bluez.add_device("hci0", ANDROID, rssi=-60)
        other = bluez.add_device("hci0", IPHONE, rssi=-70)
        await adverts.next()
        await adverts.next()
        with caplog.at_level(logging.ERROR, logger="dbus_fast"):
            bluez.advertise_raw(path, {"ManufacturerData": [1, 2, 3]})  # an "ai", not an a{qv}
            bluez.advertise(path, rssi=-61)  # bleak's cached props still hold the list
            bluez.advertise(other, rssi=-71)
            _device, adv = await adverts.next()
            assert (_device.address, adv.rssi) == (IPHONE, -71)
            assert adverts.queue.empty()
        # dbus-fast logs each exception bleak's handler raised, and carries on.
        assert [r.getMessage() for r in caplog.records].count(
            "A message handler raised an exception: 'list' object has no attribute 'items'"
        ) == 2
        bluez.advertise(path, rssi=-62, manufacturer_data={BLUEZONE_COMPANY: ID})
        _device, fixed = await adverts.next()
    assert (fixed.rssi, fixed.manufacturer_data) == (-62, {BLUEZONE_COMPANY: ID})


async def test_burst_delivers_every_advert(bluez: FakeBlueZ) -> None:
    bluez.add_adapter()
    count = 2000
    received: list[AdvertisementData] = []
    done = asyncio.Event()

    def collect(_device: BLEDevice, adv: AdvertisementData) -> None:
        received.append(adv)
        if len(received) == count + 1:
            done.set()

    async with BleakScanner(collect, bluez=ACTIVE):
        path = bluez.add_device("hci0", ANDROID, rssi=-60)
        started = time.monotonic()
        bluez.burst(path, count, BLUEZONE_COMPANY, ID, -55)
        await asyncio.wait_for(done.wait(), 10)
        elapsed = time.monotonic() - started
    assert all((a.rssi, a.manufacturer_data) == (-55, {BLUEZONE_COMPANY: ID}) for a in received[1:])
    assert elapsed < 10
    assert bluez.device_props(path)["ManufacturerData"] == {BLUEZONE_COMPANY: ID}
